"""CAM export images/s: multi-scale + flip inference of the mask generator
(DeiT-S, random init: timing only) on VOC-sized 500x375 images with 2
present classes, CAMs written to a zarr CAM store as export_cams does.
VOC setting (scales 1.0, 1.2 + flip) and COCO setting (1.0, 0.8, 1.2 + flip).
On CUDA with AMP (as the stage runs); on CPU it says so and still runs.

    python bench/export_speed.py [--images 40] [--backbone deit_small_patch16_224]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.cam_inference import infer_cams
from pipeline.cam_store import CamStore
from pipeline.config import MaskGeneratorCfg
from pipeline.models.mask_generator import build_mask_generator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=0, help="default: 40 on CUDA, 4 on CPU")
    ap.add_argument("--backbone", default="deit_small_patch16_224")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = args.images or (40 if device.type == "cuda" else 4)
    print(f"device: {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU (no GPU available)'}, "
          f"torch {torch.__version__}, {args.backbone}, {n} images of 500x375")
    model = build_mask_generator(MaskGeneratorCfg(backbone=args.backbone, pretrained=False), 20).to(device).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (375, 500, 3), dtype=np.uint8) for _ in range(4)]
    for name, scales in (("VOC {1.0,1.2}+flip", (1.0, 1.2)), ("COCO {1.0,0.8,1.2}+flip", (1.0, 0.8, 1.2))):
        with tempfile.TemporaryDirectory() as tmp, \
                torch.autocast(device.type, enabled=device.type == "cuda"):
            store = CamStore(Path(tmp) / "cams.zarr", mode="a")
            infer_cams(model, images[0], [3, 15], scales, True, "fine", device)  # warm-up
            t = time.perf_counter()
            for i in range(n):
                cams = infer_cams(model, images[i % 4], [3, 15], scales, True, "fine", device)
                store.write(f"img{i}", cams, [3, 15], (375, 500))
            dt = time.perf_counter() - t
        print(f"{name:<26} {n / dt:8.1f} images/s  ({dt / n * 1000:.1f} ms/image, incl. zarr write)")


if __name__ == "__main__":
    main()
