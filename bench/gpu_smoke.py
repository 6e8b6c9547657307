"""Run a config (default configs/voc-gpu-smoke.yaml: real model sizes on the
vendored tiny VOC data) up to pseudo_masks, then print each stage's measured
throughput and the wall time a voc-full run of that stage would take on this
machine (VOC train_aug 10,582 images x the full config's epochs; export and
pseudo masks over train_aug once). Training throughput is the median images/s
of the epochs after the first (warm-up); the smoke batch is smaller than the
official one, so bench/train_step.py at the official batches is the better
per-step figure. Last line: GPU_SMOKE_RESULT hours=<the sum> gpu=<CUDA> (bench/gpu_table.py).
--work-dir / --max-images / --epochs shrink the run (bench/gpu_check.sh on CPU: the plumbing).
Usage: python bench/gpu_smoke.py [--config PATH] [--work-dir DIR] [--max-images N] [--epochs N]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from pipeline.config import load_config
from stages.runner import run_all

TRAIN_AUG = 10_582
PHASES = ("train_cam", "match", "learn_prompts", "refine")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/voc-gpu-smoke.yaml")
    ap.add_argument("--work-dir", help="run store (default: the config's run.work_dir)")
    ap.add_argument("--max-images", type=int, help="data.max_images")
    ap.add_argument("--epochs", type=int, help="epochs of every phase")
    args = ap.parse_args()
    over = {"run": {"work_dir": args.work_dir}} if args.work_dir else {}
    if args.max_images:
        over["data"] = {"max_images": args.max_images}
    over.update({p: {"epochs": args.epochs} for p in PHASES} if args.epochs else {})
    cfg = load_config(args.config, overrides=over)
    full = load_config("configs/voc-full.yaml", overrides={"data": {"root": str(cfg.data.root)}})
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no GPU: not a GPU figure)"
    dirs = run_all(cfg, until="pseudo_masks")
    print(f"device: {dev}\n{'stage':14s} {'images/s':>9s} {'voc-full work':>22s} {'extrapolated':>13s}")
    total = 0.0
    for stage in PHASES + ("export_cams", "pseudo_masks"):
        d = Path(dirs[stage])
        if stage in PHASES:
            h = json.loads((d / f"{stage}_history.json").read_text())
            ips = statistics.median(r["images_per_s"] for r in (h[1:] or h))
            work = TRAIN_AUG * getattr(full, stage).epochs
            what = f"{TRAIN_AUG} x {getattr(full, stage).epochs} epochs"
        else:
            man = json.loads((d / "manifest.json").read_text())
            n = sum(1 for f in man["files"] if f.startswith("masks/")) if stage == "pseudo_masks" else \
                man["metrics"]["images"]
            ips = n / man["timings"]["seconds"] if n else float("nan")
            work, what = TRAIN_AUG, f"{TRAIN_AUG} images"
        hours = work / ips / 3600
        total += hours
        print(f"{stage:14s} {ips:9.1f} {what:>22s} {hours:11.2f} h")
    print(f"{'up to pseudo masks':14s} {'':9s} {'':>22s} {total:11.2f} h")
    print(f"GPU_SMOKE_RESULT hours={total:.3f} gpu={torch.cuda.is_available()}")


if __name__ == "__main__":
    main()
