"""How far mixed precision moves a short match (phase 1) run from float32.

The same initial weights, images and labels are trained for --steps steps with
the official recipe (frozen backbone, head + fusion learn, AdamW at 6.4e-5) in
float32, bfloat16 autocast and (CUDA only) float16 autocast with a gradient
scaler; the loss curves are printed side by side with the largest relative
difference to float32. Models: DeiT-S + CLIP ViT-B/32 (random init) on CUDA,
the tiny smoke models on CPU (--real forces the real sizes).
Usage: python bench/amp_exactness.py [--steps 30] [--batch 16] [--real]
"""
from __future__ import annotations

import argparse
import logging
import warnings

import torch

from pipeline.config import ClipCfg, MaskGeneratorCfg
from pipeline.data.classes import prompt_names
from pipeline.semples.losses import StepContext, match_step
from pipeline.models.mask_generator import MEAN, STD, build_mask_generator
from pipeline.models.vl import build_vl, class_text_features
from pipeline.precision import Precision
from pipeline.semples.training import optimizer_step


def run(dtype, device, real: bool, steps: int, batch: int) -> list[float]:
    torch.manual_seed(0)
    size = 224 if real else 96
    mcfg = MaskGeneratorCfg(pretrained=False, fusion="features", drop_path_rate=0.0, img_size=size,
                            backbone="deit_small_patch16_224" if real else "deit_tiny_patch16_224")
    s = build_mask_generator(mcfg, 20).to(device).train().set_recipe(detach_tokens=True, detach_coarse=False)
    for p in s.backbone_parameters():
        p.requires_grad_(False)
    ccfg = ClipCfg(pretrained=None, allow_random_init=True, image_size=size) if real else \
        ClipCfg(factory="pipeline.models.vl:tiny_random_clip", pretrained=None, allow_random_init=True, image_size=size)
    vl = build_vl(ccfg, device)
    ctx = StepContext(vl, class_text_features(vl, prompt_names("voc", official=True), "a photo of {}.").to(device),
                      MEAN, STD)
    opt = torch.optim.AdamW([p for p in s.parameters() if p.requires_grad], lr=6.4e-5, weight_decay=0.03)
    precision = Precision(device.type, dtype is not None, dtype or torch.float32)
    scaler = precision.scaler()
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(batch, 3, size, size, generator=g).to(device)
        y = torch.zeros(batch, 20)
        for i in range(batch):
            y[i, torch.randperm(20, generator=g)[: 1 + i % 2]] = 1
        with precision.autocast():
            loss = match_step(s, ctx, x, y.to(device), 2.4, 0.1)[0]
        optimizer_step(loss, opt, scaler)
        losses.append(loss.item())
    return losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--real", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real = args.real or device.type == "cuda"
    print(f"device: {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}; "
          f"models: {'DeiT-S + CLIP ViT-B/32' if real else 'tiny smoke models'}; "
          f"{args.steps} match steps at batch {args.batch}")
    runs = {"fp32": run(None, device, real, args.steps, args.batch),
            "bf16": run(torch.bfloat16, device, real, args.steps, args.batch)}
    if device.type == "cuda":
        runs["fp16"] = run(torch.float16, device, real, args.steps, args.batch)
    print("step " + " ".join(f"{k:>9s}" for k in runs))
    for i in range(args.steps):
        print(f"{i + 1:4d} " + " ".join(f"{v[i]:9.5f}" for v in runs.values()))
    for k, v in runs.items():
        if k != "fp32":
            rel = max(abs(a - b) / abs(b) for a, b in zip(v, runs["fp32"]))
            print(f"{k}: largest relative loss difference to fp32 over {args.steps} steps: {100 * rel:.2f}%")


if __name__ == "__main__":
    main()
