"""Shared training loop of the SemPLeS stages (train_cam, match,
learn_prompts, refine): AdamW + cosine schedule (timm), AMP on CUDA,
per-epoch atomic checkpoints with exact resume, loss history, CAM gallery,
and DistributedDataParallel when run under torchrun.

Determinism: the sample order of an epoch is DistributedSampler's
permutation for (seed, epoch), also in single-process runs, and the
augmentation of a sample is drawn from an RNG seeded by (seed, epoch, index),
so DDP ranks together see exactly the batches of a single-process run.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.config import TrainCfg
from pipeline.data.datasets import LabelTable, read_image
from pipeline.models.mask_generator import MEAN, STD, normalize_numpy, unwrap
from pipeline.plots import heat_overlay, save_grid, save_loss_history
from pipeline.store import torch_save_atomic
from pipeline.utils import progress

log = logging.getLogger("wsss")
CHECKPOINT = "checkpoint.pt"


# ------------------------------------------------------------------ distributed
def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return dist_info()[0] == 0


def barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()


# ------------------------------------------------------------------ data
class TrainImages(Dataset):
    """Images + multi-hot foreground labels of a label table. train=True:
    random resized crop + horizontal flip drawn from RNG(seed, epoch, index);
    train=False: plain resize to crop_size."""

    def __init__(self, table: LabelTable, crop_size: int, seed: int = 0, train: bool = True,
                 ids: Optional[list[str]] = None):
        self.records = [table[i] for i in ids] if ids is not None else table.records
        self.k = table.num_classes - 1
        self.crop, self.seed, self.train, self.epoch = crop_size, seed, train, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        x = normalize_numpy(read_image(r.image))
        if self.train:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, i)) % (2 ** 63))
                top, left, h, w = T.RandomResizedCrop.get_params(x, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
                flip = bool(torch.rand(()) < 0.5)
            x = TF.resized_crop(x, top, left, h, w, [self.crop, self.crop], antialias=True)
            if flip:
                x = TF.horizontal_flip(x)
        else:
            x = TF.resize(x, [self.crop, self.crop], antialias=True)
        y = torch.zeros(self.k)
        bad = [c for c in r.labels if not 1 <= c <= self.k]
        if bad:
            raise ValueError(f"{r.image}: labels {bad} outside 1..{self.k}")
        y[[c - 1 for c in r.labels]] = 1
        return x, y


# ------------------------------------------------------------------ checkpoints
def _atomic_save(obj, path: Path) -> None:
    torch_save_atomic(obj, path)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ------------------------------------------------------------------ gallery
def write_gallery(path: Path, cams_fn: Callable[[torch.Tensor], torch.Tensor], dataset: TrainImages,
                  class_names: list[str], device, max_classes: int = 3) -> None:
    """One row per image: the image, then the min-max normalised CAM of each
    of its labelled classes (at most max_classes) as a heat overlay."""
    if len(dataset) == 0:
        return
    rows, labels = [], []
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        for i in range(len(dataset)):
            x, y = dataset[i]
            cam = cams_fn(x[None].to(device))[0].float().cpu()
            cam = torch.nn.functional.interpolate(cam[None], x.shape[-2:], mode="bilinear",
                                                  align_corners=False)[0]
            img = ((x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            row = [img]
            ks = torch.nonzero(y).flatten().tolist()[:max_classes]
            for k in ks:
                c = cam[k]
                c = (c - c.min()) / (c.max() - c.min() + 1e-5)
                row.append(heat_overlay(img, c.numpy()))
            rows.append(row)
            labels.append(f"{Path(dataset.records[i].image).stem}: " + ", ".join(class_names[k] for k in ks))
    save_grid(path, rows, row_labels=labels)


# ------------------------------------------------------------------ loop
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple]


def fit(out: Path, tcfg: TrainCfg, seed: int, dataset: TrainImages, trainable: nn.Module, step: StepFn,
        device: torch.device, num_workers: int = 0, name: str = "train",
        gallery: Optional[Callable[[Path], None]] = None, stop_after: Optional[int] = None) -> dict:
    """Train ``trainable`` (wrapped in DDP when a process group exists) with
    ``step(module, images, labels) -> (loss, stats, n_items)`` for tcfg.epochs,
    resuming from out/checkpoint.pt. Writes the loss history and, at the end,
    the gallery (rank 0). ``stop_after`` ends the call after that epoch (tests
    of resuming). Returns metrics of the last epoch."""
    out = Path(out)
    rank, world = dist_info()
    if tcfg.batch_size % world:
        raise ValueError(f"batch_size {tcfg.batch_size} is not divisible by {world} processes")
    params = [p for p in trainable.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name}: nothing to train")
    model = trainable
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            trainable, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = CosineLRScheduler(opt, t_initial=tcfg.epochs, lr_min=tcfg.min_lr, warmup_t=tcfg.warmup_epochs,
                              warmup_lr_init=min(1e-6, tcfg.lr))
    use_amp = tcfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=tcfg.batch_size // world, sampler=sampler,
                        num_workers=num_workers, pin_memory=device.type == "cuda")

    ckpt_path = out / CHECKPOINT
    start, history = 0, []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        unwrap(trainable).load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"][rank] if isinstance(ck["rng"], list) and rank < len(ck["rng"]) else ck["rng"])
        start, history = ck["epoch"] + 1, ck["history"]
        if is_main():
            log.info("%s: resuming after epoch %d from %s", name, ck["epoch"] + 1, ckpt_path)
    t0 = time.time()
    for epoch in range(start, tcfg.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        te = time.time()
        sched.step(epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        trainable.train()
        sums: dict[str, float] = {}
        count = 0
        batches = progress(loader, f"{name} epoch {epoch + 1}/{tcfg.epochs}", every_s=30) if is_main() else loader
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss, stats, n = step(model, images, labels)
            n_all = n
            if world > 1:  # weight so that the all-reduced mean is the global per-item mean
                t = torch.tensor([float(n)], device=device)
                dist.all_reduce(t)
                n_all = t.item()
                loss = loss * (n * world / max(n_all, 1))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
        if world > 1:
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys] + [float(count)], device=device, dtype=torch.float64)
            dist.all_reduce(t)
            sums, count = dict(zip(keys, t[:-1].tolist())), t[-1].item()
        if not all(np.isfinite(list(sums.values()))):
            raise FloatingPointError(f"{name}: non-finite loss in epoch {epoch + 1}: {sums}")
        rec = {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()},
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - te, 2)}
        history.append(rec)
        rngs = [_rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, _rng_state())
        if is_main():
            _atomic_save({"epoch": epoch, "model": unwrap(trainable).state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                          "rng": rngs if world > 1 else rngs[0], "history": history}, ckpt_path)
            save_loss_history(out, history, name)
            done = epoch + 1 - start
            eta = (time.time() - t0) / done * (tcfg.epochs - epoch - 1)
            log.info("%s epoch %d/%d: %s lr %.3g (%.1fs, ETA %.0fs)", name, epoch + 1, tcfg.epochs,
                     " ".join(f"{k} {v:.4f}" for k, v in rec.items() if k not in ("epoch", "lr", "seconds")),
                     rec["lr"], rec["seconds"], eta)
        barrier()
    if is_main() and gallery is not None and (stop_after is None or stop_after >= tcfg.epochs):
        trainable.eval()
        gallery(out / "gallery.png")
    barrier()
    last = history[-1] if history else {}
    return {f"final_{k}": v for k, v in last.items() if k not in ("epoch", "seconds")} | \
           {"epochs": len(history), "first_loss": history[0]["loss"] if history else None}
