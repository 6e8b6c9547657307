"""VOC 2012 + SBD for `wsss fetch voc`: the archives torchvision names, and the
SegmentationClassAug tree and train_aug list built from them."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from pipeline.data.fetch.download import Fetcher, FetchError, Remote
from pipeline.data.fetch.unpack import MARKER, build_beside, fresh_target, untar

log = logging.getLogger("wsss")

VOC_TRAIN_AUG = 10582  # SBD train 8,498 + val 2,857 + VOC train 1,464, minus VOC val 1,449, without duplicates


def voc_remotes() -> list[Remote]:
    """VOC 2012 trainval and SBD with the URLs and md5s torchvision uses (read at runtime)."""
    from torchvision.datasets.sbd import SBDataset
    from torchvision.datasets.voc import DATASET_YEAR_DICT
    voc = DATASET_YEAR_DICT["2012"]
    return [Remote(voc["filename"], voc["url"], f"md5:{voc['md5']}"),
            Remote(SBDataset.filename, SBDataset.url, f"md5:{SBDataset.md5}")]



def _ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def sbd_mask(mat_path: Path):
    """SBD cls/<id>.mat -> (H, W) uint8 class ids (GTcls.Segmentation, as torchvision's SBDataset reads it)."""
    import numpy as np
    from scipy.io import loadmat
    try:
        return np.asarray(loadmat(str(mat_path))["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    except (KeyError, IndexError, ValueError, OSError) as e:
        raise FetchError(f"{mat_path}: not an SBD GTcls file ({e})") from None


def build_voc_aug(voc: Path, sbd: Path) -> dict[str, int]:
    """SegmentationClassAug (VOC's own PNGs where they exist, else SBD's GTcls converted) and the
    standard train_aug list: SBD train + val + VOC train, minus VOC val (10,582 ids on the real data)."""
    from pipeline.data.datasets import write_mask
    seg, aug = voc / "SegmentationClass", voc / "SegmentationClassAug"
    aug.mkdir(exist_ok=True)
    lists = voc / "ImageSets/Segmentation"
    voc_train, voc_val = _ids(lists / "train.txt"), set(_ids(lists / "val.txt"))
    sbd_ids = _ids(sbd / "train.txt") + _ids(sbd / "val.txt")
    train_aug = sorted(set(sbd_ids + voc_train) - voc_val)
    n_sbd = 0
    for i, id_ in enumerate(train_aug):
        own = seg / f"{id_}.png"
        if own.exists():
            shutil.copyfile(own, aug / own.name)
        else:
            write_mask(aug / f"{id_}.png", sbd_mask(sbd / "cls" / f"{id_}.mat"))
            n_sbd += 1
        if i % 2000 == 0:
            log.info("SegmentationClassAug %d/%d", i, len(train_aug))
    for own in seg.glob("*.png"):  # val masks too, as the usual SegmentationClassAug has them
        if not (aug / own.name).exists():
            shutil.copyfile(own, aug / own.name)
    (lists / "train_aug.txt").write_text("".join(f"{i}\n" for i in train_aug))
    return {"train_aug": len(train_aug), "from_sbd": n_sbd, "val": len(voc_val), "train": len(voc_train)}


def fetch_voc(root: Path, mirror: Optional[Path] = None, base_url: Optional[str] = None,
              progress: bool = True) -> dict:
    """VOC 2012 + SBD -> `root` (the VOC2012 folder data.root names), with SegmentationClassAug
    and ImageSets/Segmentation/train_aug.txt. Archives are kept in <root's parent>/wsss-downloads."""
    root = Path(root)
    if fresh_target(root):
        return json.loads((root / MARKER).read_text())
    fetcher = Fetcher(root.parent / "wsss-downloads", mirror, base_url, progress)
    voc_r, sbd_r = voc_remotes()
    files = fetcher.fetch([voc_r, sbd_r])
    info: dict = {"dataset": "voc", "files": {n: fetcher.expected_hash(r) or "" for n, r in
                                              ((voc_r.name, voc_r), (sbd_r.name, sbd_r))}}

    def build(tmp: Path) -> Path:
        log.info("unpacking %s", files[voc_r.name])
        untar(files[voc_r.name], tmp / "voc")
        voc = tmp / "voc/VOCdevkit/VOC2012"
        if not (voc / "ImageSets/Segmentation/val.txt").exists():
            raise FetchError(f"{files[voc_r.name]}: no VOCdevkit/VOC2012/ImageSets/Segmentation in the archive")
        log.info("unpacking %s (cls/ and the split lists)", files[sbd_r.name])
        wanted = ("benchmark_RELEASE/dataset/cls/", "benchmark_RELEASE/dataset/train.txt",
                  "benchmark_RELEASE/dataset/val.txt")
        untar(files[sbd_r.name], tmp / "sbd", lambda n: n.lstrip("./").startswith(wanted))
        sbd = tmp / "sbd/benchmark_RELEASE/dataset"
        if not (sbd / "train.txt").exists():
            raise FetchError(f"{files[sbd_r.name]}: no benchmark_RELEASE/dataset/train.txt in the archive")
        info["counts"] = build_voc_aug(voc, sbd)
        published = not (fetcher.overrides.keys() & {voc_r.name, sbd_r.name})  # the real archives
        if published and info["counts"]["train_aug"] != VOC_TRAIN_AUG:
            log.warning("train_aug has %d ids, not the usual %d", info["counts"]["train_aug"], VOC_TRAIN_AUG)
        return voc

    build_beside(root, build, info)
    log.info("VOC ready in %s: %s", root, info["counts"])
    return info
