"""CAM store size and read cost, grid layout (what export_cams writes) against the image-size
float16 layout it replaced and the official float32 .npy dict, on every voc-tiny image.

- Size: bytes per image and per stored value of (1) the CAMs of a random-init DeiT-Tiny
  mask generator (noise: the worst case for compression), (2) CAM-like grids made from the
  ground truth (one-hot masks averaged over each 16 px patch and blurred: what a trained
  model's grids look like), with VOC's export scales (1.0, 1.2) and flips; float32 grids
  (CPU) and float16 grids (what the model emits under AMP on a GPU). Extrapolated to VOC
  train_aug and COCO train from the grid sizes of their typical images.
- Read: rebuilding an image's maps from its grids vs the dense CRF of that image.
- Exactness: seeds (t = 0.43) and CRF masks from the store vs from the float32 maps of
  infer_cams (the one-image reference), and the same for the old float16 store.
Goals (issue #27): COCO train store <= 2 GB; a read <= 10% of the CRF's time per image.
    python bench/bench_cam_store.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cams.grids import Geometry  # noqa: E402
from pipeline.cams.inference import export_batched, infer_cams  # noqa: E402
from pipeline.cams.store import CamStore  # noqa: E402
from pipeline.config import CrfCfg, MaskGeneratorCfg  # noqa: E402
from pipeline.data.datasets import Record, read_image, read_mask  # noqa: E402
from pipeline.pseudo_masks.threshold import crf_index, seed_index  # noqa: E402

TINY = ROOT / "data/voc-tiny"
SCALES, PATCH, T = (1.0, 1.2), 16, 0.43
# (images, typical H x W, mean foreground classes per image, export scales)
DATASETS = {"VOC train_aug": (10_582, (375, 500), 1.5, (1.0, 1.2)),
            "COCO train": (82_081, (480, 640), 2.9, (1.0, 0.8, 1.2))}


def grid_values(size, classes, scales, flip=True) -> int:
    """Stored values of one image: classes x views x the patch grid of each scaled input (crop)."""
    H, W = size
    return int(classes * (2 if flip else 1) * sum((round(H * s) // PATCH) * (round(W * s) // PATCH)
                                                  for s in scales))


def stored(store: CamStore, ids) -> tuple[int, int]:
    """(bytes of the arrays' metadata (zarr.json: shape, codecs, attributes), bytes of their chunks)."""
    meta = sum((store.path / i / "zarr.json").stat().st_size for i in ids)
    return meta, sum(store.nbytes_stored(i) for i in ids) - meta


def gt_grids(gt: np.ndarray, classes) -> list[np.ndarray]:
    """Per scale (2, C, h, w): the mask of each class averaged over the patches of the scaled
    image and blurred over the neighbours, for the image and its mirror."""
    onehot = torch.stack([torch.from_numpy((gt == c).astype(np.float32)) for c in classes])[None]

    def grid(x, hs, ws):
        g = F.avg_pool2d(x[..., :hs // PATCH * PATCH, :ws // PATCH * PATCH], PATCH)
        return F.avg_pool2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), 3, 1)

    out = []
    for s in SCALES:
        hs, ws = round(gt.shape[0] * s), round(gt.shape[1] * s)
        x = F.interpolate(onehot, size=(hs, ws), mode="nearest")
        out.append(torch.cat([grid(x, hs, ws), grid(x.flip(-1), hs, ws)]).numpy())
    return out


def main():
    from pipeline.models.mask_generator import build_mask_generator
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared); torch {torch.__version__}")
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() // 2))
    model = build_mask_generator(MaskGeneratorCfg(backbone="deit_tiny_patch16_224", pretrained=False), 20,
                                 load_weights=False).eval()
    ids = sorted(p.stem for p in (TINY / "SegmentationClass").glob("*.png"))
    records, gts = [], {}
    for i in ids:
        gt = read_mask(TINY / f"SegmentationClass/{i}.png")
        labels = [int(c) for c in np.unique(gt) if 0 < c < 255]
        if labels:
            gts[i] = gt
            records.append(Record(i, str(TINY / f"JPEGImages/{i}.jpg"), None, gt.shape[0], gt.shape[1], labels))
    n = len(records)
    mean_hw = np.mean([(r.height, r.width) for r in records], 0)
    mean_c = np.mean([len(r.labels) for r in records])
    print(f"{n} voc-tiny images, mean {mean_hw[1]:.0f}x{mean_hw[0]:.0f}, {mean_c:.2f} classes; scales {SCALES} "
          "with flips")

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t = time.perf_counter()
        grid = CamStore(d / "grid.zarr", mode="a")
        export_batched(model, records, grid, SCALES, True, "fine", "cpu", batch_size=8, writer_threads=2)
        print(f"export (random DeiT-Tiny, CPU): {n / (time.perf_counter() - t):.2f} images/s")
        half, image16, gtgrid, gthalf = (CamStore(d / f"{k}.zarr", mode="a")
                                         for k in ("half", "image16", "gtgrid", "gthalf"))
        ref, npy_bytes, reads = {}, 0, []
        for r in records:
            grids, attrs = grid.read_grids(r.id)
            half.write_grids(r.id, [g.astype(np.float16) for g in grids], r.labels, (r.height, r.width),
                             attrs["inputs"], True, Geometry(attrs["patch"], attrs["pad_input"]))
            t = time.perf_counter()
            maps, _ = grid.read(r.id)
            reads.append(time.perf_counter() - t)
            image16.write(r.id, maps.astype(np.float16), r.labels, (r.height, r.width))  # the old layout
            ref[r.id] = infer_cams(model, read_image(r.image), r.labels, SCALES, True)
            np.save(d / f"{r.id}.npy", {c - 1: m for c, m in zip(r.labels, ref[r.id])})
            npy_bytes += (d / f"{r.id}.npy").stat().st_size
            gg = gt_grids(gts[r.id], r.labels)
            inputs = [(round(r.height * s), round(r.width * s)) for s in SCALES]
            gtgrid.write_grids(r.id, gg, r.labels, (r.height, r.width), inputs, True, Geometry(PATCH))
            gthalf.write_grids(r.id, [g.astype(np.float16) for g in gg], r.labels, (r.height, r.width), inputs, True,
                               Geometry(PATCH))

        ids = [r.id for r in records]
        values = sum(grid_values((r.height, r.width), len(r.labels), SCALES) for r in records)
        pixels = sum(len(r.labels) * r.height * r.width for r in records)
        sizes = {"grid float32 (random model)": (stored(grid, ids), values),
                 "grid float16 (AMP; random model)": (stored(half, ids), values),
                 "grid float32 (CAM-like, from GT)": (stored(gtgrid, ids), values),
                 "grid float16 (AMP; CAM-like)": (stored(gthalf, ids), values),
                 "old: image-size float16": (stored(image16, ids), pixels),
                 "official float32 .npy dict": ((0, npy_bytes), pixels)}
        print("\nbytes per image (metadata + chunks) / chunk bytes per stored value:")
        for k, ((meta, b), v) in sizes.items():
            print(f"  {k:<34} {(meta + b) / n / 1e3:8.1f} kB/image ({meta / n:5.0f} B metadata)  "
                  f"{b / v:6.3f} B/value")
        print("\nextrapolated store sizes (typical image, mean classes; metadata per image + chunk bytes per value):")
        for name, (count, hw, c, scales) in DATASETS.items():
            gv = grid_values(hw, c, scales)
            row = [f"{k}: {count * (meta / n + (gv if 'grid' in k else c * hw[0] * hw[1]) * b / v) / 1e9:.2f} GB"
                   for k, ((meta, b), v) in sizes.items()]
            print(f"  {name} ({count} images, {hw[1]}x{hw[0]}, {c} classes, scales {scales}):\n    "
                  + "\n    ".join(row))

        crf, same = [], {"grid store": [0, 0], "old float16 store": [0, 0]}
        cfg = CrfCfg()
        for r in records:
            image = read_image(r.image)
            want_seed = seed_index(ref[r.id], T)
            t = time.perf_counter()
            want_crf = crf_index(image, want_seed, len(r.labels) + 1, cfg)
            crf.append(time.perf_counter() - t)
            for k, store in (("grid store", grid), ("old float16 store", image16)):
                cams, _ = store.read(r.id)
                seed = seed_index(cams, T)
                same[k][0] += np.array_equal(seed, want_seed)
                same[k][1] += np.array_equal(crf_index(image, seed, len(r.labels) + 1, cfg), want_crf)
        diff = max(float(np.abs(grid.read(r.id)[0] - ref[r.id]).max()) for r in records)
    print(f"\nread (decode + rebuild) median {1e3 * np.median(reads):.1f} ms/image, CRF median "
          f"{1e3 * np.median(crf):.0f} ms/image: read = {100 * np.median(reads) / np.median(crf):.1f}% of the CRF "
          "(goal <= 10%)")
    print(f"store maps vs infer_cams float32: max difference {diff:.2e}")
    for k, (seeds, crfs) in same.items():
        print(f"  {k}: seeds at t={T} identical for {seeds}/{n} images, CRF masks for {crfs}/{n}")


if __name__ == "__main__":
    main()
