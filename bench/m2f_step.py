"""Mask2Former Swin-L training s/iter (the voc-full final model: mmseg's
Mask2Former Swin-L recipe, batch 4, crop 512) on this machine, with random
weights (timing only, no download): train_segmentation of
configs/voc-gpu-smoke.yaml for --iters iterations, no validation, then the
median mmengine "time" (s/iter) of the logged iterations after the first
log interval, and the hours voc-full's 80k (COCO: 100k) iterations would take.
Runs the upstream stages of voc-gpu-smoke first (cached after bench/gpu_smoke.py).
Needs CUDA: on CPU it says so and exits 0.

    python bench/m2f_step.py [--iters 60] [--config configs/voc-gpu-smoke.yaml]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from pipeline.config import load_config
from stages.runner import run_all


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/voc-gpu-smoke.yaml")
    ap.add_argument("--iters", type=int, default=60)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("m2f_step: skipped - no CUDA (Mask2Former Swin-L at batch 4, crop 512 is a GPU measurement)")
        print("M2F_RESULT s_per_iter=nan")
        return
    log_every = 10
    cfg = load_config(args.config, overrides={"train_segmentation": {
        "model": "mask2former", "backbone": "swin_l", "tiny": False, "pretrained": None, "crop_size": 512,
        "batch_size": 4, "iters": args.iters, "optimizer": "adamw", "lr": 1.0e-4, "weight_decay": 0.05,
        "val_interval": args.iters + 1, "checkpoint_interval": args.iters, "log_interval": log_every,
        "gallery_size": 0, "predict_split": None}})
    out = Path(run_all(cfg, until="train_segmentation")["train_segmentation"])
    rows = [json.loads(line) for f in sorted(out.glob("work_dir/**/scalars.json"))
            for line in f.read_text().splitlines()
            if line.strip()]
    times = [r["time"] for r in rows if "time" in r and r.get("step", 0) > log_every]
    s = statistics.median(times) if times else float("nan")
    print(f"device: {torch.cuda.get_device_name(0)}; Mask2Former Swin-L, batch {cfg.train_segmentation.batch_size}, "
          f"crop 512, random weights: {s:.3f} s/iter over {len(times)} log intervals -> voc-full 80k iters "
          f"{80_000 * s / 3600:.1f} h, coco-full 100k iters {100_000 * s / 3600:.1f} h (one process)")
    print(f"M2F_RESULT s_per_iter={s:.4f}")


if __name__ == "__main__":
    main()
