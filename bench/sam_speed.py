"""images/s of the sam_masks stage (pipeline/sam/generator.py FmaMaskGenerator) with
the official FMA-WSSS settings (pipeline.config.SamCfg defaults: ViT-H, 32 points
per side, one crop layer, ...), and Meta's reference SamAutomaticMaskGenerator
with the same settings in the same run. Time is split into image encoding
(SamPredictor.set_image), mask decoding (predict_torch) and post-processing
(everything else: thresholds, RLE, NMS, small-region clean-up, the
rock-sand-water filter, record writing). Prints peak GPU memory and the hours
VOC train_aug (10,582 images) and COCO train (82,081) would take on this
machine at the measured rate.

Images: the vendored data/voc-tiny JPEGs resized to VOC's 500x375 (SAM encodes
every image at 1024 px, so encoding cost does not depend on the size; decoding
and post-processing grow with it; COCO's 640x480 images are a little slower).
Weights: --checkpoint (a local sam_vit_h_4b8939.pth) or, without it, the real
architecture randomly initialised: encoding and decoding time do not depend on
the weights, but a random SAM's masks pass the official thresholds rarely, so
post-processing is then underestimated (the output says so).
On CPU it runs the tiny random SAM (tests' model) and says so: no GPU figure.

    python bench/sam_speed.py [--images N] [--checkpoint PATH] [--model-type vit_h]
                              [--points-per-batch 64] [--amp] [--skip-reference] [--points-per-side 32]
"""
from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import SamCfg
from pipeline.sam.generator import FmaMaskGenerator, StepTimer, empty_crop_fix, make_generator, meta_kwargs

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"VOC train_aug": 10_582, "COCO train": 82_081}


def images(n: int) -> list[np.ndarray]:
    files = sorted(glob.glob(str(ROOT / "data/voc-tiny/JPEGImages/*.jpg")))
    return [np.asarray(Image.open(files[i % len(files)]).convert("RGB").resize((500, 375), Image.BICUBIC))
            for i in range(n)]


def measure(name: str, gen, timer: StepTimer, imgs: list[np.ndarray], cuda: bool) -> dict:
    gen.generate(imgs[0])  # warm-up (cuDNN autotune, allocator)
    for k in timer.totals:
        timer.totals[k] = 0.0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    n_masks, start = 0, time.perf_counter()
    for im in imgs:
        n_masks += len(gen.generate(im))
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    split = timer.split(wall)
    return {"name": name, "ips": len(imgs) / wall, "wall": wall, "n": len(imgs), "masks": n_masks / len(imgs),
            **{k: split[k] / len(imgs) for k in ("encode", "decode", "post")},
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=0, help="timed images (default: 16 on CUDA, 2 on CPU)")
    ap.add_argument("--model-type", default="vit_h", choices=["vit_h", "vit_l", "vit_b"])
    ap.add_argument("--checkpoint", default=None, help="local SAM weights (default: random init, timing only)")
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (sam.amp)")
    ap.add_argument("--skip-reference", action="store_true", help="do not time Meta's generator")
    ap.add_argument("--points-per-side", type=int, default=32, help="official 32; fewer for a quick check only")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    n = args.images or (16 if cuda else 2)
    tiny = not cuda
    cfg = SamCfg(model_type=args.model_type, tiny=tiny, points_per_batch=args.points_per_batch, amp=args.amp,
                 points_per_side=args.points_per_side)
    if tiny:
        print(f"device: CPU ({torch.get_num_threads()} threads) - no GPU: the TINY random SAM with the official "
              "generator settings; the figures say nothing about a GPU or about ViT-H")
    else:
        print(f"device: {torch.cuda.get_device_name(0)}; SAM {args.model_type}, "
              + (f"weights {args.checkpoint}" if args.checkpoint else
                 "RANDOM weights (timing only: few masks pass the thresholds, post-processing is underestimated)"))
    print(f"settings: {n} images 500x375, points_per_side {cfg.points_per_side}, crop_n_layers {cfg.crop_n_layers}, "
          f"points_per_batch {cfg.points_per_batch}, amp {cfg.amp}")
    imgs = images(n + 1)[1:] if n > 0 else []
    imgs = [imgs[0]] + imgs  # the first image warms up
    rows = []

    if args.checkpoint or tiny:
        gen = make_generator(cfg.model_copy(update={"checkpoint": args.checkpoint}), device)
    else:  # random init of the real architecture: no download
        from segment_anything import sam_model_registry
        model = sam_model_registry[args.model_type](checkpoint=None).eval().to(device)
        gen = FmaMaskGenerator(model, iou_thresh_offsets=cfg.iou_thresh_offsets, nms_offsets=cfg.nms_offsets,
                               rsw_thresh=cfg.rsw_thresh, amp=cfg.amp, **meta_kwargs(cfg))
    rows.append(measure("sam_masks (FMA generator)", gen, gen.timer, imgs[1:], cuda))

    if not args.skip_reference:
        from segment_anything import SamAutomaticMaskGenerator

        class Reference(SamAutomaticMaskGenerator):  # Meta's, with only its empty-crop crash mended
            def _process_crop(self, *a):
                return empty_crop_fix(super()._process_crop(*a))
        ref = Reference(gen.predictor.model, output_mode="coco_rle", **meta_kwargs(cfg))
        timer = StepTimer(device)
        timer.attach(ref.predictor)
        rows.append(measure("Meta reference generator", ref, timer, imgs[1:], cuda))

    print(f"\n{'generator':28s} {'img/s':>7s} {'encode s':>9s} {'decode s':>9s} {'post s':>8s} {'masks':>6s} "
          f"{'peak GB':>8s} " + " ".join(f"{k + ' h':>16s}" for k in SPLITS))
    for r in rows:
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "n/a"
        hours = " ".join(f"{v / r['ips'] / 3600:16.2f}" for v in SPLITS.values())
        print(f"{r['name']:28s} {r['ips']:7.3f} {r['encode']:9.3f} {r['decode']:9.3f} {r['post']:8.3f} "
              f"{r['masks']:6.1f} {peak:>8s} {hours}")
    if len(rows) == 2:
        print(f"\nFMA generator / Meta reference speed: {rows[0]['ips'] / rows[1]['ips']:.2f}x "
              "(the FMA generator also runs the rock-sand-water filter)")
    print("goal on one H100/H200: >= 2 img/s with ViT-H and the official settings (VOC train_aug <= 1.5 GPU-h)")
    print(f"SAM_SPEED_RESULT ips={rows[0]['ips']:.4f} tiny={tiny} gpu={cuda and args.model_type == 'vit_h'}")


if __name__ == "__main__":
    main()
