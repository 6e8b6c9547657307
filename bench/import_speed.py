"""Time to import a VOC-size folder of CAM files (import_cams) and of pseudo masks (import_masks),
extrapolated from the vendored tiny VOC train split (real image sizes and labels) to train_aug's
10,582 images. Also the key's folder fingerprint (stat and full) on that many files.

    python bench/import_speed.py [--repeat 2] [--threads 4]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VOC_TRAIN_AUG = 10582
VOC_PIXELS = 500 * 375  # a typical VOC image; the cost per image grows with its pixels (read, check, compress)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2, help="times the tiny split is imported (best kept)")
    ap.add_argument("--threads", type=int, default=4, help="read-ahead / writer threads")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="wsss-import-bench-"))  # ~300 MB; removed at the end
    try:
        _bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args, tmp: Path) -> None:
    from pipeline.artifacts import CamArtifact
    from pipeline.cams.store import CamStore
    from pipeline.cams.formats import FORMATS, ClassIndex, folder_fingerprint, write_cam_file
    from pipeline.cams.importer import ImportOptions, import_folder
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable, read_mask, write_mask
    from pipeline.pseudo_masks.imported import import_masks
    from stages.runner import run_stage

    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={"run": {"work_dir": str(tmp / "runs")}})
    table = LabelTable.from_artifact(run_stage(cfg, "prepare_data"), "train")
    recs = table.records
    rng = np.random.default_rng(0)
    print(f"{len(recs)} images of voc-tiny train, mean {np.mean([len(r.labels) for r in recs]):.2f} classes, "
          f"mean size {np.mean([r.height for r in recs]):.0f}x{np.mean([r.width for r in recs]):.0f}; "
          f"{args.threads} threads; extrapolated to {VOC_TRAIN_AUG} images")
    scale = VOC_PIXELS / np.mean([r.height * r.width for r in recs])
    print(f"VOC train_aug column: ms/image x {scale:.2f} (VOC's 500x375 pixels over the tiny images') "
          f"x {VOC_TRAIN_AUG}")
    print(f"{'what':<28}{'MB/image':>9}{'ms/image':>10}{'VOC train_aug':>15}")
    for fmt in FORMATS:
        src = tmp / fmt
        src.mkdir()
        for r in recs:
            cams = rng.random((len(r.labels), r.height, r.width)).astype(np.float16)
            write_cam_file(src, r.id, fmt, cams, r.labels, ClassIndex())
        mb = sum(p.stat().st_size for p in src.glob(f"*{FORMATS[fmt].suffix}")) / len(recs) / 1e6
        best = float("inf")
        for i in range(args.repeat):
            store = CamStore(CamArtifact(tmp / f"out-{fmt}-{i}").store("train"), mode="a")
            t = time.perf_counter()
            import_folder(recs, src, ImportOptions(fmt), store, table.num_classes, threads=args.threads)
            best = min(best, (time.perf_counter() - t) / len(recs))
        print(f"{'import_cams ' + fmt:<28}{mb:>9.2f}{1e3 * best:>10.1f}{best * scale * VOC_TRAIN_AUG / 60:>11.1f} min")

    src = tmp / "masks"
    src.mkdir()
    for r in recs:
        write_mask(src / f"{r.id}.png", read_mask(r.mask))
    best = float("inf")
    for i in range(args.repeat):
        t = time.perf_counter()
        import_masks(recs, src, tmp / f"masks-out-{i}", table.palette, table.num_classes)
        best = min(best, (time.perf_counter() - t) / len(recs))
    mb = sum(p.stat().st_size for p in src.glob("*.png")) / len(recs) / 1e6
    print(f"{'import_masks (PNG)':<28}{mb:>9.3f}{1e3 * best:>10.1f}{best * scale * VOC_TRAIN_AUG / 60:>11.1f} min")

    many = tmp / "many"
    many.mkdir()
    one = (tmp / "weaktr_npy" / f"{recs[0].id}.npy").read_bytes()
    for i in range(VOC_TRAIN_AUG):
        (many / f"{i:06d}.npy").write_bytes(one if i < 200 else b"x")
    t = time.perf_counter()
    folder_fingerprint(many, [".npy"], "stat")
    stat_s = time.perf_counter() - t
    t = time.perf_counter()
    folder_fingerprint(tmp / "weaktr_npy", [".npy"], "full")
    full_s = (time.perf_counter() - t) / len(recs) * VOC_TRAIN_AUG * scale
    print(f"key fingerprint, {VOC_TRAIN_AUG} files: stat {stat_s * 1e3:.0f} ms; full (sha256, extrapolated from "
          f"{len(recs)} weaktr_npy files) {full_s:.1f} s, paid whenever the keys are computed")


if __name__ == "__main__":
    main()
