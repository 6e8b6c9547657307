"""ms per training step of match (phase 1) and refine (phase 3) at batch 8,
CLIP ViT-B/32 + DeiT-S (random init: timing only), for

  ours:      class-text (and prompt) features computed once per stage, all
             (fg, bg) pairs of a batch built at once and encoded in one CLIP call;
  reference: as the official code: texts (and prompts) re-encoded every step,
             pairs built one by one in a Python loop, fg and bg encoded separately.

Each step = S forward + CLIP + backward + AdamW update. On CUDA also images/s
of our step with AMP. Usage: python bench/train_step.py [--steps N] [--batch 8]
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
import torch.nn.functional as F

from pipeline.config import ClipCfg, MaskGeneratorCfg
from pipeline.data.classes import prompt_names
from pipeline.losses import (StepContext, cosine, match_loss, match_step, normalised_masks,
                             refine_loss, refine_step)
from pipeline.models.mask_generator import MEAN, STD, build_mask_generator
from pipeline.models.vl import PromptLearner, build_vl, class_text_features

TEMPLATE = "a photo of {}."


def reference_pairs(s, ctx, images, labels, eps):
    cams = s(images)["fine"]
    masks = normalised_masks(cams, ctx.vl.image_size, eps)
    x = ctx.vl_images(images)
    fg, bg, ks = [], [], []
    for b in range(labels.shape[0]):
        for k in range(labels.shape[1]):
            if labels[b, k] > 0:
                fg.append(masks[b, k:k + 1] * x[b])
                bg.append((1 - masks[b, k:k + 1]) * x[b])
                ks.append(k)
    return torch.stack(fg), torch.stack(bg), ks


def reference_match(s, ctx, names, images, labels, lambda_b=2.4, eps=0.1):
    fg, bg, ks = reference_pairs(s, ctx, images, labels, eps)
    t = ctx.vl.encode_text([TEMPLATE.format(names[k]) for k in ks])
    return match_loss(cosine(ctx.encode(fg), t), cosine(ctx.encode(bg), t), lambda_b)


def reference_refine(s, ctx, names, prompts, images, labels, lambda_b=2.4, lam=0.05, eps=0.1):
    fg, bg, ks = reference_pairs(s, ctx, images, labels, eps)
    t = ctx.vl.encode_text([TEMPLATE.format(names[k]) for k in ks])
    with torch.no_grad():
        pf = ctx.vl.encode_prompted(prompts)[ks]
    f_fg = ctx.encode(fg)
    return match_loss(cosine(f_fg, t), cosine(ctx.encode(bg), t), lambda_b) + lam * refine_loss(cosine(f_fg, pf))


def one_step(fn, opt, scaler, device, amp=False) -> float:
    """Seconds of one full training step (forward, backward, optimiser update)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        loss = fn()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: 1 on CPU, 20 on CUDA)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (20 if device.type == "cuda" else 1)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(0)}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads) - no GPU available; AMP images/s skipped")
    torch.manual_seed(0)
    names = prompt_names("voc")
    s = build_mask_generator(MaskGeneratorCfg(backbone="deit_small_patch16_224", pretrained=False), 20).to(device)
    vl = build_vl(ClipCfg(model="ViT-B-32", pretrained=None, allow_random_init=True), device)
    ctx = StepContext(vl, class_text_features(vl, names, TEMPLATE).to(device), MEAN, STD)
    prompts = PromptLearner(20, 30, vl.token_width).to(device).prompts.detach()
    with torch.no_grad():
        pf = vl.encode_prompted(prompts).float()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224, generator=g).to(device)
    labels = torch.zeros(args.batch, 20)
    for b in range(args.batch):  # 1-2 classes per image, as on VOC (about 1.5 on average)
        labels[b, torch.randperm(20, generator=g)[: 1 + b % 2]] = 1
    labels = labels.to(device)
    print(f"batch {args.batch}, {int(labels.sum())} (fg, bg) pairs per step, {steps} timed steps each after 1 warm-up; fastest step shown")

    cases = {
        "match": (lambda: match_step(s, ctx, images, labels, 2.4, 0.1)[0],
                  lambda: reference_match(s, ctx, names, images, labels)),
        "refine": (lambda: refine_step(s, ctx, pf, images, labels, 2.4, 0.05, 0.1)[0],
                   lambda: reference_refine(s, ctx, names, prompts, images, labels)),
    }
    # ours and the reference alternate step by step, and the fastest step of each
    # is reported, so that load from other processes on a shared CPU cancels out
    opt = torch.optim.AdamW(s.parameters(), lr=1e-6, weight_decay=0.03)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    print(f"{'phase':8s} {'ours ms/step':>13s} {'reference ms/step':>18s} {'ref/ours':>9s}")
    for name, (ours, ref) in cases.items():
        one_step(ours, opt, scaler, device)  # warm-up
        t_ours, t_ref = [], []
        for _ in range(steps):
            t_ours.append(one_step(ours, opt, scaler, device))
            t_ref.append(one_step(ref, opt, scaler, device))
        a, b = 1000 * min(t_ours), 1000 * min(t_ref)
        print(f"{name:8s} {a:13.1f} {b:18.1f} {b / a:9.2f}x")
    if device.type == "cuda":
        for name, (ours, _) in cases.items():
            one_step(ours, opt, scaler, device, amp=True)
            ms = 1000 * min(one_step(ours, opt, scaler, device, amp=True) for _ in range(steps))
            print(f"{name:8s} AMP: {ms:.1f} ms/step, {1000 * args.batch / ms:.1f} images/s")


if __name__ == "__main__":
    main()
