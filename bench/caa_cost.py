"""Cost of CAA (export_cams.caa, pipeline/cams/caa.py) per image: CAM inference of one
500x375 image with 2 present classes at the VOC scales {1.0, 1.2} with flips (4 forwards),
raw vs CAA, and the CAA step alone split into attention merge, boxes (cv2 contours),
Sinkhorn + symmetrisation and the A^2 products. Random-init mask generators: the tiny one
of the smoke configs (deit_tiny, 96 px training size) and DeiT-S (the real size).
    python bench/caa_cost.py [--images 3] [--device cpu|cuda] [--models tiny,deit_s]
Prints one JSON line per model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cams.inference import _resized, infer_cams  # noqa: E402
from pipeline.cams import caa as caa_mod  # noqa: E402
from pipeline.config import CaaCfg, MaskGeneratorCfg  # noqa: E402
from pipeline.models.mask_generator import build_mask_generator, merged_attention, normalize_numpy  # noqa: E402

MODELS = {"tiny": {"backbone": "deit_tiny_patch16_224", "img_size": 96},
          "deit_s": {"backbone": "deit_small_patch16_224"}}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, n):
    """The fastest of n runs after a warm-up (robust to other load on a shared machine)."""
    fn()
    best = float("inf")
    for _ in range(n):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3, help="repetitions per measurement (the fastest is kept)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="tiny,deit_s")
    args = ap.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    image = (rng.random((375, 500, 3)) * 255).astype(np.uint8)
    labels, scales, cfg = [3, 15], (1.0, 1.2), CaaCfg(enabled=True)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_mask_generator(MaskGeneratorCfg(pretrained=False, **MODELS[name]), 20,
                                     load_weights=False).eval().to(device)
        raw = timed(lambda: infer_cams(model, image, labels, scales, True, "fine", device), device, args.images)
        with_caa = timed(lambda: infer_cams(model, image, labels, scales, True, "fine", device, caa=cfg), device,
                         args.images)
        # the CAA step of one forward at scale 1.2 (the larger grid), piece by piece
        x = normalize_numpy(_resized(image, 1.2))[None].to(device)
        with torch.no_grad():
            out = model(x, caa_layers=cfg.last_n_layers)
        grid, attn = out["fine"][:, [2, 14]].float(), out["caa_attn"]
        T = 20 + attn.shape[-1]
        maps = torch.rand(1, model.num_heads * len(model.vit.blocks), T, T, device=device)  # the kept softmax maps
        n = attn.shape[-1]
        s = caa_mod.score(grid)
        parts = {
            "attention_merge": timed(lambda: merged_attention(maps, model.num_heads, 20, cfg.last_n_layers),
                                     device, args.images),
            "boxes": timed(lambda: [caa_mod.box_mask(m, cfg.box_thresh) for m in s[0].cpu().numpy()], device,
                           args.images),
            "sinkhorn_sym": timed(lambda: caa_mod.affinity(attn, cfg.sinkhorn_iters), device, args.images),
            "refine_total": timed(lambda: caa_mod.refine(grid, attn, cfg), device, args.images),
        }
        a = caa_mod.affinity(attn, cfg.sinkhorn_iters)
        v = grid.flatten(2).transpose(1, 2)
        parts["products"] = timed(lambda: a @ (a @ v), device, args.images)
        print(json.dumps({"model": name, "device": str(device), "torch_threads": torch.get_num_threads(),
                          "image": "500x375, 2 classes, scales 1.0 + 1.2 with flips (4 forwards)",
                          "grid_at_1.2": list(out["grid"]), "patches": n,
                          "s_per_image_raw": round(raw, 4), "s_per_image_caa": round(with_caa, 4),
                          "caa_added_s_per_image": round(with_caa - raw, 4),
                          "caa_added_pct": round(100 * (with_caa - raw) / raw, 1),
                          "one_forward_ms": {k: round(1000 * v, 3) for k, v in parts.items()}}))


if __name__ == "__main__":
    main()
