"""CAM export images/s, old vs new path in one run: the mask generator
(DeiT-S, random init: timing only) on VOC-sized 500x375 JPEGs (1-3 present
classes), VOC setting (scales 1.0, 1.2 + flip), CAMs written to a zarr CAM
store (compression and write included, as export_cams does).

  old: one image at a time - decode, PIL resize, one image (+ its flip) per
       forward, float32 CAMs to numpy, zarr write, all on one thread;
  new: export_batched - DataLoader workers decode/resize, same-size batches
       per forward, flips/upsampling/min-max on the device, a writer thread
       pool compresses and writes.

Prints images/s, the achieved TFLOP/s and the share of the GPU's dense
fp16/bf16 peak (FLOPs per image counted from the ViT's shapes, see
vit_flops), the largest CAM difference old vs new, and the CPU-side work per
image on one core (JPEG decode, PIL bicubic resize, blosc-zstd compression
and the zarr write), with the cores that 200 images/s would need. On CUDA with
AMP (as the stage runs); on CPU it says so and still runs.

    python bench/export_speed.py [--images N] [--old-images N] [--batch-size B]
                                 [--workers W] [--writer-threads T] [--scales 1.0 1.2]
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.cams.inference import _resized, export_batched, infer_cams
from pipeline.cams.store import CamStore, CamWriter
from pipeline.config import MaskGeneratorCfg
from pipeline.data.datasets import Record, read_image
from pipeline.models.mask_generator import build_mask_generator
from pipeline.precision import Precision

H, W = 375, 500
# dense fp16/bf16 tensor-core peak, TFLOP/s (vendor data sheets, no sparsity)
GPU_PEAK_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L40S": 362, "A10": 125}


def vit_flops(model, height: int, width: int, class_tokens: int | None = None) -> float:
    """FLOPs (2 per multiply-add) of one ViT forward on a height x width input
    padded to the patch size: per block and token qkv + proj (4 D^2) and MLP
    (2 D D_mlp) multiply-adds, attention 2 T D; plus the patch embedding.
    Class tokens (one per class) count as tokens. The CAM head, attention
    fusion and fine-CAM product are left out (<2%). Check: DeiT-S at 224 with
    one class token gives 4.6 GMACs = 9.2 GFLOPs, the figure usually quoted
    as "4.6 GFLOPs"."""
    p = model.patch_size
    n = -(-height // p) * -(-width // p)
    T = n + (model.num_classes if class_tokens is None else class_tokens)
    D = model.vit.embed_dim
    blocks = model.vit.blocks
    d_mlp = blocks[0].mlp.fc1.out_features
    macs = len(blocks) * T * (4 * D * D + 2 * D * d_mlp + 2 * T * D) + n * 3 * p * p * D
    return 2.0 * macs


def gpu_peak(name: str) -> float | None:
    for key, tflops in GPU_PEAK_TFLOPS.items():  # H100 PCIe before H100
        if key in name:
            return tflops
    return None


def write_jpegs(folder: Path, n: int) -> list[Record]:
    """n smooth-noise 500x375 JPEGs (photo-like decode cost), 1-3 labels each."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize((W, H), Image.BICUBIC))
        noisy = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        labels = sorted(rng.choice(np.arange(1, 21), size=1 + i % 3, replace=False).tolist())
        records.append(Record(f"img_{i:05d}", str(path), None, H, W, labels))
    return records


def per_core(fn, items, min_s: float = 1.0) -> float:
    """Items/s of fn over items on the calling thread (repeated for at least min_s)."""
    done, t = 0, time.perf_counter()
    while True:
        for it in items:
            fn(it)
        done += len(items)
        if time.perf_counter() - t >= min_s:
            return done / (time.perf_counter() - t)


def cpu_side(records: list[Record], scales, tmp: Path, writer_threads: int) -> None:
    """CPU work per image on one core (PIL and blosc run single-threaded here),
    then the writer pool's images/s on all cores."""
    from numcodecs import Blosc, blosc
    blosc.use_threads = False
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images = [read_image(r.image) for r in records[:8]]
    # CAM-like content: a smooth map upsampled from the patch grid, 2 classes
    cams = [F.interpolate(torch.rand(1, 2, 24, 32, generator=torch.Generator().manual_seed(i)), size=(H, W),
                          mode="bilinear", align_corners=False)[0].numpy().astype(np.float16) for i in range(8)]
    rates = {"JPEG decode (PIL)": per_core(lambda r: read_image(r.image), records[:8])}
    for s in scales:
        if s != 1.0:
            rates[f"bicubic resize x{s} (PIL)"] = per_core(lambda im: _resized(im, s), images)
    codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)  # the store's codec (pipeline/cams/store.py)
    rates["blosc-zstd-5 compress (2 classes)"] = per_core(lambda c: codec.encode(c), cams)
    store = CamStore(tmp / "cpu_side.zarr", mode="a")
    counter = itertools.count()
    rates["zarr write incl. compression"] = per_core(
        lambda c: store.write(f"c{next(counter)}", c, [1, 2], (H, W)), cams)
    torch.set_num_threads(torch_threads)
    print(f"\nCPU-side work per core (one thread, 500x375, {len(cams[0])} classes; {os.cpu_count()} CPUs here):")
    for name, rate in rates.items():
        print(f"  {name:<36} {rate:8.1f} images/s/core  ({1000 / rate:6.2f} ms)")
    ms = sum(1000 / r for r in rates.values() if r) - 1000 / rates["blosc-zstd-5 compress (2 classes)"]
    print(f"  all of it per image (decode + resizes + zarr write): {ms:.1f} ms "
          f"-> {200 * ms / 1000:.1f} cores for 200 images/s")
    n, t = 96, time.perf_counter()
    with CamWriter(store, writer_threads) as writer:
        for i in range(n):
            writer.submit(f"w{i}", cams[i % len(cams)], [1, 2], (H, W))
    print(f"  CamWriter with {writer_threads} threads on {os.cpu_count()} CPUs: "
          f"{n / (time.perf_counter() - t):.1f} images/s written")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=0, help="new path; default 320 on CUDA, 4 on CPU")
    ap.add_argument("--old-images", type=int, default=0, help="old path; default 40 on CUDA, 4 on CPU")
    ap.add_argument("--batch-size", type=int, default=0, help="default 16 on CUDA, 2 on CPU")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    ap.add_argument("--writer-threads", type=int, default=8)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.2])
    ap.add_argument("--backbone", default="deit_small_patch16_224")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    n_new = args.images or (320 if cuda else 4)
    n_old = args.old_images or (40 if cuda else 4)
    batch = args.batch_size or (16 if cuda else 2)
    name = torch.cuda.get_device_name(0) if cuda else "CPU (no GPU available: figures say nothing about a GPU)"
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs, {args.backbone}, scales {args.scales} + flip, 500x375 JPEGs")
    model = build_mask_generator(MaskGeneratorCfg(backbone=args.backbone, pretrained=False), 20).to(device).eval()
    flops = 2 * sum(vit_flops(model, round(H * s), round(W * s)) for s in args.scales)  # x2: flip
    print(f"assumed FLOPs per image: {flops / 1e9:.1f} GFLOPs (2 per multiply-add; {len(args.scales)} scales x 2 "
          f"flips, {model.num_classes} class tokens; the same count gives "
          f"{vit_flops(model, 224, 224, class_tokens=1) / 1e9:.1f} GFLOPs for one class token at 224)")
    peak = gpu_peak(name) if cuda else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = write_jpegs(tmp, max(n_new, n_old, batch))

        @torch.autocast(device.type, enabled=cuda)
        def per_image(store, recs):  # the baseline: infer_cams and write, one image at a time on this thread
            for r in recs:
                c = infer_cams(model, read_image(r.image), r.labels, args.scales, True, "fine", device)
                store.write(r.id, c, r.labels, c.shape[1:])
        runs = {
            "old (per image, one thread)": lambda store, recs: per_image(store, recs),
            f"new (batch {batch}, {args.workers} workers, {args.writer_threads} writers)": lambda store, recs:
                export_batched(model, recs, store, args.scales, True, "fine", device, batch_size=batch,
                               num_workers=args.workers, writer_threads=args.writer_threads,
                               precision=Precision.of(device, True)),
        }
        stores, ips = {}, 0.0
        for (label, run), n in zip(runs.items(), (n_old, n_new)):
            run(CamStore(tmp / f"warm{len(stores)}.zarr", mode="a"), records[:batch])  # warm-up
            store = stores[label] = CamStore(tmp / f"run{len(stores)}.zarr", mode="a")
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            run(store, records[:n])
            dt = time.perf_counter() - t
            ips = n / dt  # the last run: the batched path
            tflops = flops * n / dt / 1e12
            share = f", {100 * tflops / peak:.1f}% of the {peak} TFLOP/s fp16 peak" if peak else \
                (", GPU peak unknown" if cuda else "")
            print(f"{label:<42} {n / dt:8.2f} images/s  ({dt / n * 1000:7.1f} ms/image, zarr write included; "
                  f"{tflops:.3f} TFLOP/s{share})")
        old, new = stores.values()
        ids = old.ids()
        diff = max(float(np.abs(old.read(i)[0].astype(np.float32) - new.read(i)[0].astype(np.float32)).max())
                   for i in ids)
        print(f"largest CAM difference old vs new over {len(ids)} images: {diff:.2e}")
        cpu_side(records, args.scales, tmp, args.writer_threads)
    print(f"EXPORT_RESULT ips={ips:.2f} gpu={cuda}")


if __name__ == "__main__":
    main()
