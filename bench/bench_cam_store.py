"""(b) CAM store bytes per image vs the official per-image float32 .npy dict
({class index: (H, W) float32}, np.save of a dict, as WeakTr's
generate_attention_maps_ms writes), and the time to read one image's CAMs.

CAMs: 40 voc-tiny images at VOC size (500x375) with their real
classes; each CAM is a blurred one-hot ground-truth map sampled on the 16 px
patch grid, bilinearly upsampled and min-max normalised (what export_cams
produces from a trained model). Also, as a worst case, the CAMs of a
random-init mask generator on 8 of the images.
Targets: <= 25% of the .npy dict; <= 20 ms per read.
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
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cams.store import CamStore  # noqa: E402
from pipeline.data.datasets import read_mask  # noqa: E402

TINY = ROOT / "data/voc-tiny"
W, H = 500, 375


def smooth_cams(gt: np.ndarray, classes: list[int]) -> np.ndarray:
    onehot = torch.stack([torch.from_numpy((gt == c).astype(np.float32)) for c in classes])[None]
    grid = F.avg_pool2d(onehot, 16, ceil_mode=True)  # patch grid
    grid = F.avg_pool2d(F.pad(grid, (1, 1, 1, 1), mode="replicate"), 3, 1)  # CAMs bleed over neighbours
    cam = F.interpolate(grid, size=gt.shape, mode="bilinear", align_corners=False)[0]
    lo, hi = cam.flatten(1).min(1).values[:, None, None], cam.flatten(1).max(1).values[:, None, None]
    return ((cam - lo) / (hi - lo + 1e-8)).numpy()


def model_cams(image: np.ndarray, classes: list[int]) -> np.ndarray:
    from pipeline.cams.inference import infer_cams
    from pipeline.config import MaskGeneratorCfg
    from pipeline.models.mask_generator import build_mask_generator
    global _MODEL
    if "_MODEL" not in globals():
        torch.manual_seed(0)
        _MODEL = build_mask_generator(MaskGeneratorCfg(backbone="deit_tiny_patch16_224", pretrained=False),
                                      20, load_weights=False).eval()
    return infer_cams(_MODEL, image, classes, scales=(1.0, 1.2), flip=True)


def measure(name: str, samples: list[tuple[str, np.ndarray, list[int]]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        store = CamStore(d / "cams.zarr", mode="a")
        npy_bytes = 0
        for image_id, cams, classes in samples:
            store.write(image_id, cams, classes, cams.shape[1:])
            np.save(d / f"{image_id}.npy", {c - 1: cams[k].astype(np.float32) for k, c in enumerate(classes)})
            npy_bytes += (d / f"{image_id}.npy").stat().st_size
        zarr_bytes = sum(p.stat().st_size for p in (d / "cams.zarr").rglob("*") if p.is_file())
        n = len(samples)
        reader = CamStore(d / "cams.zarr")
        times = []
        for image_id, cams, _ in samples:
            t = time.perf_counter()
            back, _ = reader.read(image_id)
            times.append(time.perf_counter() - t)
            assert np.array_equal(back, cams.astype(np.float16))
        t = time.perf_counter()
        CamStore(d / "cams.zarr").read(samples[0][0])
        cold = time.perf_counter() - t
        print(f"[{name}] {n} images {W}x{H}: zarr {zarr_bytes / n / 1e3:.1f} kB/image vs official float32 "
              f".npy dict {npy_bytes / n / 1e3:.1f} kB/image = {100 * zarr_bytes / npy_bytes:.1f}%  (target <= 25%)")
        print(f"[{name}] read one image's CAMs: median {1e3 * np.median(times):.1f} ms, p90 "
              f"{1e3 * np.percentile(times, 90):.1f} ms; with opening the store {1e3 * cold:.1f} ms  (target <= 20 ms)")


def main():
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared)")
    ids = sorted(p.stem for p in (TINY / "SegmentationClass").glob("*.png"))[:40]
    smooth, model = [], []
    for k, i in enumerate(ids):
        gt = np.asarray(Image.fromarray(read_mask(TINY / f"SegmentationClass/{i}.png")).resize((W, H), Image.NEAREST))
        classes = [int(c) for c in np.unique(gt) if 0 < c < 255]
        smooth.append((i, smooth_cams(gt, classes), classes))
        if k < 8:
            img = np.array(Image.open(TINY / f"JPEGImages/{i}.jpg").convert("RGB").resize((W, H), Image.BICUBIC))
            model.append((i, model_cams(img, classes), classes))
    measure("CAM-like maps from GT", smooth)
    measure("random-init deit_tiny CAMs (noisy worst case)", model)


if __name__ == "__main__":
    main()
