"""Training-step throughput of the SemPLeS phases at the official batch sizes,
DeiT-S mask generator + CLIP ViT-B/32 (random init: timing only).

For match and refine it compares, in one run:
  before: the whole mask generator in autograd (trainable: all), float16 AMP,
          plain AdamW - the path every phase took before the fidelity work;
  after:  the official recipe (trainable: head): backbone under no-grad, autograd
          only through head, fusion, masks and CLIP's image tower w.r.t. its
          input; fused AdamW; float16 (official) and bfloat16 autocast;
          optionally torch.compile of CLIP's image tower (--compile).
learn_prompts is timed once (prompts only learn).

Printed per case: ms/step, images/s, achieved TFLOP/s and the share of the GPU's
dense bf16 peak. FLOPs assumed per image (2 FLOPs per multiply-add): DeiT-S
forward at 224 px with 20 class tokens 9.2 x 216/197 = 10.1 GFLOP; CLIP ViT-B/32
image forward 8.8 GFLOP, backward to its input 2x that; pairs per image = the
labels' mean (1.5 here, as VOC); match/refine encode fg and bg of every pair
(refine reuses fg features for the prompt term). Backbone backward (before
path) 2x its forward. On CPU it runs a tiny batch once and says so; --tiny: DeiT-Ti
and a 2-layer CLIP at 64 px (bench/gpu_check.sh --quick: the plumbing, not a figure).
Last line: TRAIN_STEP_RESULT match=<images/s> refine=<images/s> (the official path:
head only, float16, fused AdamW) for bench/gpu_table.py.
Usage: python bench/train_step.py [--dataset voc|coco] [--steps N] [--compile] [--tiny]
"""
from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch

from pipeline.config import ClipCfg, MaskGeneratorCfg
from pipeline.data.classes import prompt_names
from pipeline.semples.losses import StepContext, learn_prompts_step, match_step, refine_step
from pipeline.models.mask_generator import MEAN, STD, build_mask_generator
from pipeline.models.vl import PromptLearner, build_vl, class_text_features
from pipeline.precision import AUTOCAST, Precision
from pipeline.semples.training import optimizer_step

BATCH = {"voc": {"match": 64, "learn_prompts": 128, "refine": 64},
         "coco": {"match": 32, "learn_prompts": 128, "refine": 24}}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
S_FWD, CLIP_FWD = 9.2e9 * 216 / 197, 8.8e9
PAIRS = 1.5


def flops_per_image(phase: str, frozen: bool) -> float:
    clip = CLIP_FWD * 3  # forward + backward to the input
    if phase == "learn_prompts":
        return S_FWD + PAIRS * CLIP_FWD  # S and CLIP forward only (prompts take the gradient)
    return S_FWD * (1 if frozen else 3) + 2 * PAIRS * clip


def peak(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def timed(step, device, steps: int) -> float:
    """Fastest of ``steps`` calls of step() (after one warm-up), in seconds."""
    step()
    best = float("inf")
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def make_step(loss_fn, params, device, dtype, fused: bool):
    """One training step as fit() takes it: the forward under the run's autocast, then optimizer_step."""
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.03, fused=fused)
    precision = Precision(device.type, dtype in AUTOCAST.get(device.type, ()), dtype)
    scaler = precision.scaler()

    def step():
        with precision.autocast():
            loss = loss_fn()
        optimizer_step(loss, opt, scaler)
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=["voc", "coco"], default="voc")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: 1 on CPU, 10 on CUDA)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of CLIP's image tower")
    ap.add_argument("--tiny", action="store_true", help="DeiT-Ti + 2-layer CLIP at 64 px (plumbing check only)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    steps = args.steps or (10 if cuda else 1)
    batches = BATCH[args.dataset] if cuda else {k: 2 for k in BATCH[args.dataset]}
    print(f"device: {torch.cuda.get_device_name(0) if cuda else f'CPU ({torch.get_num_threads()} threads)'}"
          + ("" if cuda else " - no GPU: batch 2, one step; figures say nothing about a GPU"))
    torch.manual_seed(0)
    k = 20 if args.dataset == "voc" else 80
    names = prompt_names(args.dataset, official=True)
    size = 64 if args.tiny else 224
    clip = {"factory": "pipeline.models.vl:tiny_random_clip", "image_size": size} if args.tiny else {}
    mg = {"backbone": "deit_tiny_patch16_224", "img_size": size} if args.tiny else {}
    vl = build_vl(ClipCfg(model="ViT-B-32-quickgelu", pretrained=None, allow_random_init=True, **clip), device)
    ctx = StepContext(vl, class_text_features(vl, names, "a photo of {}.").to(device), MEAN, STD)
    pk = PromptLearner(k, 30, vl.token_width).to(device)
    with torch.no_grad():
        pf = vl.encode_prompted(pk.prompts).float()
    pk_peak = peak(device)

    def s_model(fusion="features", frozen=True):
        torch.manual_seed(0)
        m = build_mask_generator(MaskGeneratorCfg(pretrained=False, fusion=fusion, **mg), k).to(device).train()
        m.set_recipe(detach_tokens=frozen, detach_coarse=False)
        if frozen:
            for p in m.backbone_parameters():
                p.requires_grad_(False)
        return m

    def data(b):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, 3, size, size, generator=g).to(device)
        y = torch.zeros(b, k)
        for i in range(b):  # 1-2 classes per image (VOC: about 1.5)
            y[i, torch.randperm(k, generator=g)[: 1 + i % 2]] = 1
        return x, y.to(device)

    print(f"{'phase':14s} {'path':34s} {'batch':>5s} {'ms/step':>9s} {'images/s':>9s} {'TFLOP/s':>8s} {'% peak':>7s}")

    def report(phase, path, b, sec, frozen):
        ips = b / sec
        tf = ips * flops_per_image(phase, frozen) / 1e12
        share = f"{100 * tf / pk_peak:6.1f}%" if pk_peak else "    n/a"
        print(f"{phase:14s} {path:34s} {b:5d} {1000 * sec:9.1f} {ips:9.1f} {tf:8.2f} {share}")
        return ips

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    official = {}
    for phase in ("match", "refine"):
        b = batches[phase]
        x, y = data(b)
        if phase == "match":
            loss_of = lambda m: (lambda: match_step(m, ctx, x, y, 2.4, 0.1)[0])  # noqa: E731
        else:
            loss_of = lambda m: (lambda: refine_step(m, ctx, pf, x, y, 2.4, 0.05, 0.1)[0])  # noqa: E731
        m = s_model(frozen=False)
        before = report(phase, "before: all trainable, fp16, AdamW", b,
                        timed(make_step(loss_of(m), [p for p in m.parameters()], device, torch.float16, False),
                              device, steps), frozen=False)
        m = s_model(frozen=True)
        params = [p for p in m.parameters() if p.requires_grad]
        for tag, dt in dtypes.items():
            after = report(phase, f"after: head, {tag}, fused AdamW", b,
                           timed(make_step(loss_of(m), params, device, dt, cuda), device, steps), frozen=True)
            print(f"{'':14s} {'-> after / before':34s} {after / before:5.2f}x")
            official.setdefault(phase, after)  # fp16 first: train_cam.amp_dtype's default
        if args.compile and cuda:
            visual = vl.model.visual
            vl.model.visual = torch.compile(visual)
            report(phase, "after: head, bf16, compiled CLIP", b,
                   timed(make_step(loss_of(m), params, device, torch.bfloat16, True), device, steps), frozen=True)
            vl.model.visual = visual
    b = batches["learn_prompts"]
    x, y = data(b)
    m = s_model().eval().requires_grad_(False)
    for tag, dt in dtypes.items():
        report("learn_prompts", f"prompts only, {tag}", b,
               timed(make_step(lambda: learn_prompts_step(m, ctx, pk(vl), x, y, 0.02, 1e-4)[0],
                               list(pk.parameters()), device, dt, cuda), device, steps), frozen=True)
    print(f"TRAIN_STEP_RESULT match={official['match']:.2f} refine={official['refine']:.2f} "
          f"batch={batches['match']} gpu={cuda and not args.tiny}")


if __name__ == "__main__":
    main()
