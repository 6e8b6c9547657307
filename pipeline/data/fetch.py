"""`wsss fetch`: data sets and weights, verified, resumable, offline-friendly.

pooch does the retrieval and the checksum check; the only HTTP code here is a
small pooch downloader that resumes an interrupted transfer with a Range
request (pooch's own downloaders restart from zero) and copies from a local
mirror (file://). Archives are verified before they are unpacked, and a data
set is unpacked into a temporary folder beside its target, completed there
(SegmentationClassAug, train_aug list), marked, and renamed into place: a
half-unpacked tree never sits where `wsss data check` looks.

Overrides (tests, private mirrors):
  WSSS_FETCH_BASE_URL  every file is fetched from <base>/<file name> instead of its publisher's URL
  WSSS_FETCH_HASHES    a JSON file {file name: "md5:..." | "sha256:..."} replacing the published checksums
Files whose publisher gives no checksum are recorded (sha256) in `wsss-fetch-registry.json`
beside the downloads on first download and checked against it after.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from pipeline.store import sha256_file, write_json_atomic

log = logging.getLogger("wsss")

ENV_BASE_URL = "WSSS_FETCH_BASE_URL"
ENV_HASHES = "WSSS_FETCH_HASHES"
MARKER = ".wsss-fetch-complete"  # written last into a fetched data set, before it is renamed into place
REGISTRY = "wsss-fetch-registry.json"
VOC_TRAIN_AUG = 10582  # SBD train 8,498 + val 2,857 + VOC train 1,464, minus VOC val 1,449, without duplicates


class FetchError(RuntimeError):
    """A download/verification/unpacking problem, naming URL, checksum and path."""


@dataclass(frozen=True)
class Remote:
    name: str                          # file name on disk and in a mirror
    url: str
    known_hash: Optional[str] = None   # "md5:..."/"sha256:..." as the publisher gives it; None: recorded
    sha256_prefix: Optional[str] = None  # a prefix published in the file name (torchvision/mmengine style)
    key: Optional[str] = None          # config key that points at the file (weights)
    note: str = ""


def _gdrive(file_id: str) -> str:
    # the direct-download form of a Google Drive share link (confirm=t skips the virus-scan page)
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


# ------------------------------------------------------------------ catalogue
def voc_remotes() -> list[Remote]:
    """VOC 2012 trainval and SBD with the URLs and md5s torchvision uses (read at runtime)."""
    from torchvision.datasets.sbd import SBDataset
    from torchvision.datasets.voc import DATASET_YEAR_DICT
    voc = DATASET_YEAR_DICT["2012"]
    return [Remote(voc["filename"], voc["url"], f"md5:{voc['md5']}"),
            Remote(SBDataset.filename, SBDataset.url, f"md5:{SBDataset.md5}")]


# md5s as published by COCO's S3 bucket (single-part ETag) and used by LAVIS, PaddleSeg & co.
def coco_remotes() -> list[Remote]:
    return [Remote("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip",
                   "md5:0da8c0bd3d6becc4dcb32757491aca88"),
            Remote("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip",
                   "md5:a3d79f5ed8d289b7a7554ce06a5782b3"),
            Remote("annotations_trainval2014.zip",
                   "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                   "md5:0a379cfc70b0e71301e0f377548639bd")]


SWIN_L_URL = ("https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/"
              "swin_large_patch4_window12_384_22k_20220412-6580f57d.pth")


def weight_remotes() -> dict[str, list[Remote]]:
    """Weight files by what needs them. WeakTr: hustvl/WeakTr README (Google Drive, DeiT-S CAM
    checkpoints); SAM: segment-anything README (the file-name suffix is the md5 prefix; the full
    md5s are the ones in wide use); Swin-L 22k: the mmseg URL configs/*-full.yaml name (mmengine's
    sha256 prefix in the name); ResNet-101 for DeepLab-v2: torchvision's IMAGENET1K_V1 file."""
    from torchvision.models import ResNet101_Weights

    from pipeline.weights import SAM_URLS as SAM
    rn_url = ResNet101_Weights.IMAGENET1K_V1.url
    return {
        "weaktr_voc": [Remote("weaktr_voc_deit_small_checkpoint_best_mIoU.pth",
                              _gdrive("1uUHGLIDFm49Gh41Ddc8_T93-bRWnJzeF"),
                              key="train_cam.init_checkpoint", note="voc configs")],
        "weaktr_coco": [Remote("weaktr_coco_deit_small_checkpoint_best_mIoU.pth",
                               _gdrive("1Q5UdcGCHFitSJXljZmTA4USKPpyZIVDw"),
                               key="train_cam.init_checkpoint", note="coco configs")],
        **{f"sam_{v}": [Remote(SAM[v].rsplit("/", 1)[1], SAM[v], md5, key="sam.checkpoint", note=note)]
           for v, md5, note in (("vit_h", "md5:4b8939a88964f0f4ff5f5b2642c598a6", "SAM ViT-H, the one FMA-WSSS uses"),
                                ("vit_l", "md5:0b3195507c641ddb6910d2bb5adee89c", "SAM ViT-L"),
                                ("vit_b", "md5:01ec64d29a2fca3f0661936605ae66f8", "SAM ViT-B"))},
        "swin_l": [Remote(SWIN_L_URL.rsplit("/", 1)[1], SWIN_L_URL, sha256_prefix="6580f57d",
                          key="train_segmentation.pretrained", note="mask2former swin_l (voc-full, coco-full)")],
        "resnet101": [Remote("resnet101_imagenet.pth", rn_url, sha256_prefix=rn_url.rsplit("-", 1)[1].split(".")[0],
                             key="train_segmentation.pretrained",
                             note="deeplabv2 configs (pretrained_format: pytorch)")],
    }


def weight_groups_for(cfg) -> list[str]:
    """The weight groups a config needs (all of them without a config)."""
    if cfg is None:
        return list(weight_remotes())
    groups = ["weaktr_coco" if cfg.data.dataset == "coco" else "weaktr_voc", f"sam_{cfg.sam.model_type}"]
    ts = cfg.train_segmentation
    if ts.model == "mask2former" and ts.backbone == "swin_l":
        groups.append("swin_l")
    elif ts.model == "deeplabv2":
        groups.append("resnet101")
    return groups


# ------------------------------------------------------------------ download
class ResumableDownloader:
    """pooch downloader: HTTP(S) into a persistent `<name>.part` that a later attempt (or a later
    run) continues with a Range request; file:// copies from a mirror. It retries while
    attempts make progress, so a dropped connection resumes and a dead host fails at once."""

    def __init__(self, part: Path, progress: bool = True, timeout: float = 60, max_attempts: int = 50):
        self.part, self.progress, self.timeout, self.max_attempts = part, progress, timeout, max_attempts

    def __call__(self, url: str, output_file, pooch=None, check_only: bool = False):
        if url.startswith("file://"):
            shutil.copyfile(url[len("file://"):], output_file)
            return
        import requests
        from tqdm import tqdm
        for attempt in range(self.max_attempts):
            have = self.part.stat().st_size if self.part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            got = 0
            try:
                with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as r:
                    if r.status_code == 416 and have:  # the .part is already whole
                        break
                    r.raise_for_status()
                    if r.headers.get("Content-Type", "").startswith("text/html"):
                        raise FetchError(f"{url}: the server answered with an HTML page, not the file "
                                         "(a login/quota page?); download it by hand and use --mirror")
                    if have and r.status_code != 206:  # the server ignored Range: start again
                        have = 0
                    size = r.headers.get("Content-Length")
                    total = have + int(size) if size is not None else None
                    with open(self.part, "ab" if have else "wb") as f, \
                            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=self.part.name[:-5],
                                 disable=not self.progress, leave=False) as bar:
                        for chunk in r.iter_content(1 << 16):  # small: a broken read loses at most this
                            f.write(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
                    if total is not None and self.part.stat().st_size < total:
                        raise requests.ConnectionError(
                            f"connection closed at {self.part.stat().st_size} of {total} bytes")
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                if got == 0 or attempt == self.max_attempts - 1:
                    raise
                log.warning("%s: interrupted after %d bytes (%s); resuming", url, have + got, e)
                time.sleep(min(attempt + 1, 10) * 0.1)
        os.replace(self.part, output_file)


def _override_hashes() -> dict[str, str]:
    path = os.environ.get(ENV_HASHES)
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FetchError(f"{ENV_HASHES}={path}: not a readable JSON file of checksums ({e})") from None


class Fetcher:
    """Retrieves Remotes into `folder` (from the publisher, WSSS_FETCH_BASE_URL or a mirror
    folder), verified; collects what could not be fetched into one error."""

    def __init__(self, folder: Path, mirror: Optional[Path] = None, base_url: Optional[str] = None,
                 progress: bool = True):
        self.folder = Path(folder)
        self.mirror = Path(mirror) if mirror else None
        self.base_url = (base_url or os.environ.get(ENV_BASE_URL) or "").rstrip("/") or None
        self.progress = progress
        self.overrides = _override_hashes()
        self.registry_path = self.folder / REGISTRY

    def _registry(self) -> dict:
        return json.loads(self.registry_path.read_text()) if self.registry_path.exists() else {}

    def _record(self, name: str, digest: str, url: str) -> None:
        reg = self._registry()
        reg[name] = {"sha256": digest, "url": url, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json_atomic(self.registry_path, reg)

    def expected_hash(self, r: Remote) -> Optional[str]:
        if r.name in self.overrides:
            return self.overrides[r.name]
        if r.known_hash:
            return r.known_hash
        rec = self._registry().get(r.name)
        return f"sha256:{rec['sha256']}" if rec else None

    def source(self, r: Remote) -> str:
        if self.mirror:
            return f"file://{(self.mirror / r.name).resolve()}"
        return f"{self.base_url}/{r.name}" if self.base_url else r.url

    def describe(self, r: Remote) -> str:
        h = self.expected_hash(r) or (f"sha256 starting {r.sha256_prefix}" if r.sha256_prefix
                                      else "none published (recorded on first download)")
        part = self.folder / f"{r.name}.part"
        kept = f"\n    partial  {part} ({part.stat().st_size} bytes; run again to resume)" if part.exists() else ""
        return f"{self.source(r)}\n    checksum {h}\n    target   {self.folder / r.name}{kept}"

    def fetch(self, remotes: Iterable[Remote]) -> dict[str, Path]:
        """Retrieve every remote; one FetchError lists all that failed."""
        import pooch
        import requests
        self.folder.mkdir(parents=True, exist_ok=True)
        out, missing, bad = {}, [], []
        for r in remotes:
            src, expected = self.source(r), self.expected_hash(r)
            if self.mirror and not (self.mirror / r.name).is_file() and not (self.folder / r.name).is_file():
                missing.append((r, "not in the mirror"))
                continue
            dl = ResumableDownloader(self.folder / f"{r.name}.part", progress=self.progress)
            try:
                path = Path(pooch.retrieve(src, expected, fname=r.name, path=self.folder, downloader=dl,
                                           progressbar=False))
            except ValueError as e:  # pooch: hash mismatch (the file is deleted, never unpacked)
                bad.append(f"{src}: {e}")
                continue
            except (requests.RequestException, OSError) as e:
                missing.append((r, e))
                continue
            except FetchError as e:
                bad.append(str(e))
                continue
            if r.name not in self.overrides and not r.known_hash:
                digest = sha256_file(path)
                if r.sha256_prefix and not digest.startswith(r.sha256_prefix):
                    path.unlink()
                    bad.append(f"{src}: sha256 {digest} does not start with {r.sha256_prefix} "
                               f"as its published name says; deleted")
                    continue
                if expected is None:
                    self._record(r.name, digest, src)
                    log.info("%s: no published checksum; recorded sha256 %s in %s", r.name, digest, self.registry_path)
            out[r.name] = path
        problems = []
        if bad:
            problems.append("verification failed:\n  " + "\n  ".join(bad))
        if missing:
            where = f"in the mirror {self.mirror}" if self.mirror else "(no network?)"
            problems.append(f"could not fetch {len(missing)} file(s) {where}:\n  " +
                            "\n  ".join(f"{self.describe(r)}\n    ({why})" for r, why in missing))
        if problems:
            raise FetchError("\n".join(problems))
        return out


# ------------------------------------------------------------------ unpacking
def fetched_or_absent(target: Path) -> bool:
    """True when `wsss fetch` made target, or target is missing or empty."""
    target = Path(target)
    return (target / MARKER).exists() or not target.exists() or not any(target.iterdir())


def _fresh_target(target: Path) -> bool:
    """True when target is already a completed fetch; raise if something else is there."""
    if (target / MARKER).exists():
        log.info("%s: already fetched (%s present)", target, MARKER)
        return True
    if target.exists() and any(target.iterdir()):
        raise FetchError(f"{target} exists but was not completed by `wsss fetch` (no {MARKER}); "
                         "move it away or pass --dest")
    return False


def _build_beside(target: Path, build: Callable[[Path], Path], info: dict) -> None:
    """Build the tree in a temp folder beside target; the marker goes in last, then one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):  # left by a killed run (we hold the lock)
        log.info("removing %s, left by an interrupted unpack", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        tree = build(tmp)
        (tree / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked by _fresh_target)
        os.rename(tree, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _untar(archive: Path, dest: Path, members: Optional[Callable[[str], bool]] = None) -> None:
    try:
        with tarfile.open(archive) as tf:
            sel = [m for m in tf.getmembers() if members is None or members(m.name)]
            # "data" filter: no absolute paths, links out of dest or device files (3.11.4+)
            tf.extractall(dest, members=sel, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FetchError(f"{archive}: cannot unpack ({e})") from None


def _unzip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{archive}: cannot unpack ({e})") from None


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
    if _fresh_target(root):
        return json.loads((root / MARKER).read_text())
    fetcher = Fetcher(root.parent / "wsss-downloads", mirror, base_url, progress)
    voc_r, sbd_r = voc_remotes()
    files = fetcher.fetch([voc_r, sbd_r])
    info: dict = {"dataset": "voc", "files": {n: fetcher.expected_hash(r) or "" for n, r in
                                              ((voc_r.name, voc_r), (sbd_r.name, sbd_r))}}

    def build(tmp: Path) -> Path:
        log.info("unpacking %s", files[voc_r.name])
        _untar(files[voc_r.name], tmp / "voc")
        voc = tmp / "voc/VOCdevkit/VOC2012"
        if not (voc / "ImageSets/Segmentation/val.txt").exists():
            raise FetchError(f"{files[voc_r.name]}: no VOCdevkit/VOC2012/ImageSets/Segmentation in the archive")
        log.info("unpacking %s (cls/ and the split lists)", files[sbd_r.name])
        wanted = ("benchmark_RELEASE/dataset/cls/", "benchmark_RELEASE/dataset/train.txt",
                  "benchmark_RELEASE/dataset/val.txt")
        _untar(files[sbd_r.name], tmp / "sbd", lambda n: n.lstrip("./").startswith(wanted))
        sbd = tmp / "sbd/benchmark_RELEASE/dataset"
        if not (sbd / "train.txt").exists():
            raise FetchError(f"{files[sbd_r.name]}: no benchmark_RELEASE/dataset/train.txt in the archive")
        info["counts"] = build_voc_aug(voc, sbd)
        published = not (fetcher.overrides.keys() & {voc_r.name, sbd_r.name})  # the real archives
        if published and info["counts"]["train_aug"] != VOC_TRAIN_AUG:
            log.warning("train_aug has %d ids, not the usual %d", info["counts"]["train_aug"], VOC_TRAIN_AUG)
        return voc

    _build_beside(root, build, info)
    log.info("VOC ready in %s: %s", root, info["counts"])
    return info


def fetch_coco(root: Path, mirror: Optional[Path] = None, base_url: Optional[str] = None,
               progress: bool = True) -> dict:
    """COCO 2014 train/val images and instances annotations -> `root` (train2014/, val2014/,
    annotations/). Archives are kept in <root's parent>/wsss-downloads."""
    root = Path(root)
    if _fresh_target(root):
        return json.loads((root / MARKER).read_text())
    fetcher = Fetcher(root.parent / "wsss-downloads", mirror, base_url, progress)
    remotes = coco_remotes()
    files = fetcher.fetch(remotes)
    info = {"dataset": "coco", "files": {r.name: fetcher.expected_hash(r) or "" for r in remotes}}

    def build(tmp: Path) -> Path:
        tree = tmp / "coco"
        for r in remotes:
            log.info("unpacking %s", files[r.name])
            _unzip(files[r.name], tree)
        for need in ("train2014", "val2014", "annotations/instances_train2014.json",
                     "annotations/instances_val2014.json"):
            if not (tree / need).exists():
                raise FetchError(f"the COCO archives lack {need}")
        return tree

    _build_beside(root, build, info)
    log.info("COCO ready in %s", root)
    return info


def fetch_hub_weights(weights: Optional[list] = None) -> list[str]:
    """CLIP and DeiT through open_clip's and timm's own download functions, into the caches the
    stages read: the given hub weights (pipeline/weights.py HubWeight, as the preflight resolves
    them for a config's stages), or the official CLIP and DeiT-S. A config that names local
    files (or no pretrained weights) needs nothing from the hubs."""
    from pipeline.weights import clip_weight, timm_weight
    if weights is None:
        weights = [clip_weight("ViT-B-32-quickgelu", "openai"), timm_weight("deit_small_patch16_224")]
    done = []
    for w in weights:
        w.fetch()
        done.append(f"{w.what} ({w.key}): in {w.cache}")
    return done


def fetch_weights(dest: Path, cfg=None, mirror: Optional[Path] = None, base_url: Optional[str] = None,
                  progress: bool = True, hub: bool = True,
                  hub_weights: Optional[list] = None) -> list[tuple[str, Path, str]]:
    """Download the weight files a config needs (all without one) into dest; return
    (config key, path, note) for each. hub: also CLIP/DeiT into open_clip's/timm's caches
    (``hub_weights``: the config's, as the preflight lists them; None: the official ones)."""
    groups = weight_remotes()
    remotes = [r for g in weight_groups_for(cfg) for r in groups[g]]
    errors, files = [], {}
    try:
        files = Fetcher(Path(dest), mirror, base_url, progress).fetch(remotes)
    except FetchError as e:
        errors.append(str(e))
    if hub and mirror:
        log.info("CLIP/DeiT come from the hubs, not from a mirror: offline, set clip.pretrained and "
                 "mask_generator.pretrained to local files (or copy the open_clip/timm caches)")
    elif hub:
        try:
            for line in fetch_hub_weights(hub_weights):
                log.info(line)
        except Exception as e:  # noqa: BLE001 - any hub/network failure: say what to set instead
            errors.append(f"CLIP/DeiT through open_clip/timm failed ({e}); offline, set clip.pretrained and "
                          "mask_generator.pretrained to local files, or pass --no-hub")
    if errors:
        raise FetchError("\n".join(errors))
    return [(r.key, files[r.name], r.note) for r in remotes]


def fetch_dataset(data_cfg, dest: Optional[Path] = None, mirror: Optional[Path] = None,
                  base_url: Optional[str] = None, progress: bool = True) -> dict:
    """Fetch the data set a DataCfg names into dest (default data.root)."""
    from filelock import FileLock
    root = Path(dest) if dest else Path(data_cfg.root)
    fetch = {"voc": fetch_voc, "coco": fetch_coco}.get(data_cfg.dataset)
    if fetch is None:
        raise FetchError(f"data.dataset '{data_cfg.dataset}': nothing to fetch "
                         "(only voc and coco are published data sets)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.fetch.lock")):  # one fetch per target at a time
        return fetch(root, mirror, base_url, progress)

