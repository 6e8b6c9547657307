"""Shared training loop of the SemPLeS stages (train_cam, match,
learn_prompts, refine): AdamW + cosine schedule (timm), AMP on CUDA,
per-epoch atomic checkpoints with exact resume, loss history, CAM gallery,
and DistributedDataParallel when run under torchrun.

Determinism: the sample order of an epoch is DistributedSampler's
permutation for (seed, epoch), also in single-process runs, and the
augmentation of a sample is drawn from an RNG seeded by (seed, epoch, index),
so DDP ranks together see exactly the batches of a single-process run.

``fit(FitSpec)`` is the loop over named pieces: ``setup`` (optimizer, schedule,
precision and scaler, loader, DDP wrap), ``train_epoch`` (whose update is
``optimizer_step``, the step bench/train_step.py and bench/amp_exactness.py time)
and the callbacks of pipeline.semples.callbacks around them (checkpoint and
resume, seed evaluation, keep-best selection, history, log, gallery).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision.transforms.v2.functional as TF
from PIL import Image
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.config import TrainCfg
from pipeline.data.datasets import LabelTable, read_image
from pipeline.models.mask_generator import MEAN, STD, normalize_numpy
from pipeline.semples.callbacks import BEST_MODEL, CHECKPOINT, Callback, callbacks_for, write_gallery  # noqa: F401
from pipeline.semples.dist import barrier, dist_info, is_main  # noqa: F401 (the phases' imports)
from pipeline.precision import Precision
from pipeline.utils import progress


# ------------------------------------------------------------------ data
def train_transform(crop_size: int, augment: str):
    """timm's ImageNet train transform with the arguments WeakTr's datasets.py passes
    (main.py defaults: bicubic, colour jitter 0.4 - which timm drops when RandAugment
    is on -, rand-m9-mstd0.5-inc1, random erasing 0.25 pixel mode), or crop + flip only."""
    from timm.data import create_transform
    if augment == "weaktr":
        t = create_transform(crop_size, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                             interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
                             mean=MEAN, std=STD)
        return _old_pillow_posterize(t)
    return create_transform(crop_size, is_training=True, color_jitter=None, auto_augment=None,
                            interpolation="bicubic", re_prob=0.0, mean=MEAN, std=STD)


def _posterize_zero_bits_black(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, except that 0 bits gives what older Pillow gave (mask ~(2**8-1):
    every value 0, a black image) instead of the ValueError of Pillow 13."""
    from timm.data.auto_augment import posterize
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep, **kwargs)


def _old_pillow_posterize(transform):
    """PosterizeIncreasing (inc1) reaches 0 bits at magnitude 10 (m9 + mstd 0.5 noise
    clipped at 10: ~1.5 in 1,000 samples). The official runs (timm 0.5.4, old Pillow)
    got a black image there; today's Pillow raises. Swap the op's function inside this
    transform only; timm's other ops are untouched (all fine at their extremes on RGB)."""
    from timm.data.auto_augment import RandAugment
    ops = [op for t in transform.transforms if isinstance(t, RandAugment) for op in t.ops
           if op.name.startswith("Posterize")]
    if not ops:
        raise RuntimeError("timm's weaktr transform has no RandAugment Posterize op: timm changed, check the fix")
    for op in ops:
        op.aug_fn = _posterize_zero_bits_black
    return transform


class TrainImages(Dataset):
    """Images + multi-hot foreground labels of a label table. train=True: the
    stage's augmentation (``train_transform``) drawn from RNGs seeded by
    (seed, epoch, index); train=False: plain resize to crop_size."""

    def __init__(self, table: LabelTable, crop_size: int, seed: int = 0, train: bool = True,
                 ids: Optional[list[str]] = None, augment: str = "weaktr"):
        self.records = [table[i] for i in ids] if ids is not None else table.records
        self.k = table.num_classes - 1
        self.crop, self.seed, self.train, self.epoch = crop_size, seed, train, 0
        self.transform = train_transform(crop_size, augment) if train else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        if self.train:
            # timm's transforms draw from python's random, numpy and torch: seed all three per sample
            sample_seed = hash((self.seed, self.epoch, i)) % (2 ** 32)
            py_state, np_state = random.getstate(), np.random.get_state()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                random.seed(sample_seed)
                np.random.seed(sample_seed)
                x = self.transform(Image.fromarray(read_image(r.image)))
            random.setstate(py_state)
            np.random.set_state(np_state)
        else:
            x = TF.resize(normalize_numpy(read_image(r.image)), [self.crop, self.crop], antialias=True)
        y = torch.zeros(self.k)
        bad = [c for c in r.labels if not 1 <= c <= self.k]
        if bad:
            raise ValueError(f"{r.image}: labels {bad} outside 1..{self.k}")
        y[[c - 1 for c in r.labels]] = 1
        return x, y


# ------------------------------------------------------------------ the optimizer step
def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """One update from ``loss``: clear the gradients, backward the scaled loss,
    step (skipped by the scaler on inf/NaN gradients) and update the scale."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


# ------------------------------------------------------------------ loop
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple]


@dataclass
class Training:
    """What fit() trains with, built by ``setup``: ``model`` is ``trainable``
    wrapped in DDP when a process group exists."""
    name: str
    trainable: nn.Module
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: CosineLRScheduler
    precision: Precision
    scaler: torch.amp.GradScaler
    sampler: DistributedSampler
    loader: DataLoader
    device: torch.device


def setup(tcfg: TrainCfg, seed: int, dataset: TrainImages, trainable: nn.Module, device: torch.device,
          num_workers: int = 0, name: str = "train", param_groups: Optional[list[dict]] = None) -> Training:
    """The official recipe: AdamW at lr x global batch / 512 (tcfg.effective_lr())
    over ``param_groups`` (default: every parameter that requires grad), timm's
    cosine schedule, AMP per tcfg, and a loader whose sample order is
    DistributedSampler's permutation for (seed, epoch)."""
    rank, world = dist_info()
    if tcfg.batch_size % world:
        raise ValueError(f"batch_size {tcfg.batch_size} is not divisible by {world} processes")
    if param_groups is None:
        param_groups = [{"params": [p for p in trainable.parameters() if p.requires_grad]}]
    if not any(g["params"] for g in param_groups):
        raise ValueError(f"{name}: nothing to train")
    model = trainable
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            trainable, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(param_groups, lr=tcfg.effective_lr(), weight_decay=tcfg.weight_decay,
                            fused=device.type == "cuda")
    sched = CosineLRScheduler(opt, t_initial=tcfg.epochs, lr_min=tcfg.min_lr, warmup_t=tcfg.warmup_epochs,
                              warmup_lr_init=tcfg.warmup_lr)
    precision = Precision.of(device, tcfg.amp, tcfg.amp_dtype)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    per_rank = tcfg.batch_size // world
    # official loaders drop the last incomplete batch (a tiny split keeps it rather than train on nothing)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=len(sampler) >= per_rank,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)
    return Training(name, trainable, model, opt, sched, precision, precision.scaler(), sampler, loader, device)


def train_epoch(tr: Training, step: StepFn, epoch: int, epochs: int, batch_size: int,
                on_step: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Train 0-based ``epoch``; its history record: the per-item means of the
    step's stats over all ranks, lr, seconds and images/s. The schedule is
    stepped before the epoch to the value for epoch - 1 (the official scripts
    call lr_scheduler.step(epoch) after each epoch). ``on_step(i, stats)`` after the
    epoch's i-th update (0-based), with this rank's stats of that batch as floats."""
    te = time.time()
    tr.sched.step(max(epoch - 1, 0))
    tr.sampler.set_epoch(epoch)
    tr.loader.dataset.set_epoch(epoch)
    tr.trainable.train()
    world = dist_info()[1]
    sums: dict[str, float] = {}
    count = 0
    batches = progress(tr.loader, f"{tr.name} epoch {epoch + 1}/{epochs}", every_s=30) if is_main() else tr.loader
    for i, (images, labels) in enumerate(batches):
        images = images.to(tr.device, non_blocking=True)
        labels = labels.to(tr.device, non_blocking=True)
        with tr.precision.autocast():
            loss, stats, n = step(tr.model, images, labels)
        if world > 1:  # weight so that the all-reduced mean is the global per-item mean
            t = torch.tensor([float(n)], device=tr.device)
            dist.all_reduce(t)
            loss = loss * (n * world / max(t.item(), 1))
        optimizer_step(loss, tr.opt, tr.scaler)
        values = {k: float(v) for k, v in stats.items()}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v * n
        count += n
        if on_step is not None:
            on_step(i, values)
    if world > 1:
        keys = sorted(sums)
        t = torch.tensor([sums[k] for k in keys] + [float(count)], device=tr.device, dtype=torch.float64)
        dist.all_reduce(t)
        sums, count = dict(zip(keys, t[:-1].tolist())), t[-1].item()
    if not all(np.isfinite(list(sums.values()))):
        raise FloatingPointError(f"{tr.name}: non-finite loss in epoch {epoch + 1}: {sums}")
    seconds = time.time() - te
    return {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()},
            "lr": tr.opt.param_groups[0]["lr"], "seconds": round(seconds, 2),
            "images_per_s": round(len(tr.loader) * batch_size / seconds, 2)}


@dataclass
class FitSpec:
    """What ``fit`` trains: ``trainable`` for tcfg.epochs with ``step(module, images, labels) ->
    (loss, stats, n_items)`` into ``out`` (checkpoint, history, gallery). ``param_groups``: see
    ``setup``. ``epoch_eval(module, epoch) -> {"seed_miou", ...}``: the seed evaluation (callbacks
    SeedEval, and KeepBest with tcfg.select 'gt_miou'); ``gallery(path)`` draws the CAM gallery at
    the end; ``callbacks``: more, after the standard ones (pipeline.semples.callbacks).
    ``stop_after`` ends the call after that epoch (tests of resuming)."""
    out: Path
    tcfg: TrainCfg
    seed: int
    dataset: TrainImages
    trainable: nn.Module
    step: StepFn
    device: torch.device
    name: str = "train"
    num_workers: int = 0
    param_groups: Optional[list[dict]] = None
    epoch_eval: Optional[Callable[[nn.Module, int], dict]] = None
    gallery: Optional[Callable[[Path], None]] = None
    callbacks: Sequence[Callback] = ()
    stop_after: Optional[int] = None


@dataclass
class FitState:
    """What the callbacks see and change: the spec, what ``setup`` built, the first epoch of
    this call, the history records and the best-so-far (KeepBest)."""
    spec: FitSpec
    tr: Training
    start: int = 0
    history: list[dict] = field(default_factory=list)
    best: Optional[dict] = None


def fit(spec: FitSpec) -> dict:
    """Train as ``spec`` says (DDP when a process group exists), resuming from
    out/checkpoint.pt, calling the callbacks' hooks (pipeline.semples.callbacks) around
    each epoch. Returns metrics of the last epoch (and of the selected one)."""
    callbacks = callbacks_for(spec)
    tcfg = spec.tcfg
    state = FitState(spec, setup(tcfg, spec.seed, spec.dataset, spec.trainable, spec.device, spec.num_workers,
                                 spec.name, spec.param_groups))
    for cb in callbacks:
        cb.on_fit_start(state)
    end = tcfg.epochs if spec.stop_after is None else min(spec.stop_after, tcfg.epochs)
    for epoch in range(state.start, end):
        def on_step(i: int, stats: dict, epoch: int = epoch) -> None:
            for cb in callbacks:
                cb.on_train_step(state, epoch, i, stats)
        rec = train_epoch(state.tr, spec.step, epoch, tcfg.epochs, tcfg.batch_size, on_step if is_main() else None)
        state.history.append(rec)
        for cb in callbacks:
            cb.on_train_epoch_end(state, epoch, rec)
        if is_main():
            for cb in callbacks:
                cb.on_epoch_end(state, epoch, rec)
        barrier()
    if is_main():
        for cb in callbacks:
            cb.on_fit_end(state, end == tcfg.epochs)
    barrier()
    history, best = state.history, state.best
    last = history[-1] if history else {}
    selected = {f"selected_{k}": v for k, v in best.items() if k != "model"} if best else {}
    return {f"final_{k}": v for k, v in last.items() if k not in ("epoch", "seconds")} | \
           {"epochs": len(history), "first_loss": history[0]["loss"] if history else None} | selected
