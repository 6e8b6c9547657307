"""Shared training loop of the SemPLeS stages (train_cam, match,
learn_prompts, refine): AdamW + cosine schedule (timm), AMP on CUDA,
per-epoch atomic checkpoints with exact resume, loss history, CAM gallery,
and DistributedDataParallel when run under torchrun.

Determinism: the sample order of an epoch is DistributedSampler's
permutation for (seed, epoch), also in single-process runs, and the
augmentation of a sample is drawn from an RNG seeded by (seed, epoch, index),
so DDP ranks together see exactly the batches of a single-process run.

``fit`` is the loop over named pieces: ``setup`` (optimizer, schedule,
precision and scaler, loader, DDP wrap), ``resume``, ``train_epoch`` (whose
update is ``optimizer_step``, the step bench/train_step.py and
bench/amp_exactness.py time) and ``save_checkpoint``.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision.transforms.v2.functional as TF
from PIL import Image
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.artifacts import ModelArtifact
from pipeline.config import TrainCfg
from pipeline.data.datasets import LabelTable, read_image
from pipeline.models.mask_generator import MEAN, STD, normalize_numpy, unwrap
from pipeline.plots import heat_overlay, save_grid, save_loss_history
from pipeline.precision import Precision
from pipeline.store import decoding, torch_save_atomic
from pipeline.utils import progress

log = logging.getLogger("wsss")
CHECKPOINT = ModelArtifact.checkpoint.name
BEST_MODEL = ModelArtifact.best_state.name  # select: gt_miou: the chosen epoch's weights (state_dict)


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


# ------------------------------------------------------------------ checkpoints
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


def resume(tr: Training, path: Path) -> tuple[int, list[dict], Optional[dict]]:
    """(first epoch to train, history, best-so-far) from checkpoint ``path``,
    restoring weights, optimizer, schedule, scaler and this rank's RNG state;
    (0, [], None) when there is no checkpoint."""
    if not path.exists():
        return 0, [], None
    rank = dist_info()[0]
    with decoding(path, "resume checkpoint"):
        ck = torch.load(path, map_location="cpu", weights_only=False)
    unwrap(tr.trainable).load_state_dict(ck["model"])
    tr.opt.load_state_dict(ck["optimizer"])
    tr.sched.load_state_dict(ck["scheduler"])
    tr.scaler.load_state_dict(ck["scaler"])
    _set_rng_state(ck["rng"][rank] if isinstance(ck["rng"], list) and rank < len(ck["rng"]) else ck["rng"])
    if is_main():
        log.info("%s: resuming after epoch %d from %s", tr.name, ck["epoch"] + 1, path)
    return ck["epoch"] + 1, ck["history"], ck.get("best")


def train_epoch(tr: Training, step: StepFn, epoch: int, epochs: int, batch_size: int) -> dict:
    """Train 0-based ``epoch``; its history record: the per-item means of the
    step's stats over all ranks, lr, seconds and images/s. The schedule is
    stepped before the epoch to the value for epoch - 1 (the official scripts
    call lr_scheduler.step(epoch) after each epoch)."""
    te = time.time()
    tr.sched.step(max(epoch - 1, 0))
    tr.sampler.set_epoch(epoch)
    tr.loader.dataset.set_epoch(epoch)
    tr.trainable.train()
    world = dist_info()[1]
    sums: dict[str, float] = {}
    count = 0
    batches = progress(tr.loader, f"{tr.name} epoch {epoch + 1}/{epochs}", every_s=30) if is_main() else tr.loader
    for images, labels in batches:
        images = images.to(tr.device, non_blocking=True)
        labels = labels.to(tr.device, non_blocking=True)
        with tr.precision.autocast():
            loss, stats, n = step(tr.model, images, labels)
        if world > 1:  # weight so that the all-reduced mean is the global per-item mean
            t = torch.tensor([float(n)], device=tr.device)
            dist.all_reduce(t)
            loss = loss * (n * world / max(t.item(), 1))
        optimizer_step(loss, tr.opt, tr.scaler)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
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


def rng_states():
    """This process's RNG state, or every rank's (a list) under DDP; every rank must call it."""
    if dist_info()[1] == 1:
        return _rng_state()
    rngs = [None] * dist_info()[1]
    dist.all_gather_object(rngs, _rng_state())
    return rngs


def save_checkpoint(tr: Training, path: Path, epoch: int, history: list[dict], best: Optional[dict], rngs) -> None:
    """Everything ``resume`` needs to continue after 0-based ``epoch`` exactly (rank 0 writes)."""
    torch_save_atomic({"epoch": epoch, "model": unwrap(tr.trainable).state_dict(), "optimizer": tr.opt.state_dict(),
                       "scheduler": tr.sched.state_dict(), "scaler": tr.scaler.state_dict(),
                       "rng": rngs, "history": history, "best": best}, path)


def fit(out: Path, tcfg: TrainCfg, seed: int, dataset: TrainImages, trainable: nn.Module, step: StepFn,
        device: torch.device, num_workers: int = 0, name: str = "train",
        gallery: Optional[Callable[[Path], None]] = None, stop_after: Optional[int] = None,
        param_groups: Optional[list[dict]] = None,
        epoch_eval: Optional[Callable[[nn.Module, int], dict]] = None) -> dict:
    """Train ``trainable`` (wrapped in DDP when a process group exists) with
    ``step(module, images, labels) -> (loss, stats, n_items)`` for tcfg.epochs,
    resuming from out/checkpoint.pt. Writes the loss history and, at the end,
    the gallery (rank 0). ``stop_after`` ends the call after that epoch (tests
    of resuming). ``param_groups``: see ``setup``. ``epoch_eval(module, epoch)
    -> {"seed_miou", ...}`` runs on rank 0 every tcfg.seed_eval_every epochs and
    at the last one; its numbers join the epoch's history record, and with
    tcfg.select 'gt_miou' the best epoch's weights go to out/best_model_state.pt.
    Returns metrics of the last epoch (and of the selected one)."""
    out = Path(out)
    tr = setup(tcfg, seed, dataset, trainable, device, num_workers, name, param_groups)
    if tcfg.select == "gt_miou" and epoch_eval is None:
        raise ValueError(f"{name}: select 'gt_miou' needs a seed evaluation (epoch_eval)")
    start, history, best = resume(tr, out / CHECKPOINT)
    t0 = time.time()
    for epoch in range(start, tcfg.epochs if stop_after is None else min(stop_after, tcfg.epochs)):
        rec = train_epoch(tr, step, epoch, tcfg.epochs, tcfg.batch_size)
        history.append(rec)
        rngs = rng_states()
        if is_main():
            if epoch_eval is not None and _eval_due(epoch, tcfg):  # after the RNG capture: resume-exact
                rec.update(epoch_eval(unwrap(trainable), epoch + 1))
                if tcfg.select == "gt_miou":
                    best = _keep_best(best, rec, trainable)
            save_checkpoint(tr, out / CHECKPOINT, epoch, history, best, rngs)
            save_loss_history(out, history, name)
            _log_epoch(name, rec, tcfg.epochs, (time.time() - t0) / (epoch + 1 - start) * (tcfg.epochs - epoch - 1))
        barrier()
    if is_main() and gallery is not None and (stop_after is None or stop_after >= tcfg.epochs):
        trainable.eval()
        gallery(ModelArtifact(out).gallery)
    if is_main() and best is not None:
        torch_save_atomic(best["model"], out / BEST_MODEL)
    barrier()
    last = history[-1] if history else {}
    selected = {f"selected_{k}": v for k, v in best.items() if k != "model"} if best else {}
    return {f"final_{k}": v for k, v in last.items() if k not in ("epoch", "seconds")} | \
           {"epochs": len(history), "first_loss": history[0]["loss"] if history else None} | selected


def _log_epoch(name: str, rec: dict, epochs: int, eta: float) -> None:
    losses = " ".join(f"{k} {v:.4f}" for k, v in rec.items() if k not in ("epoch", "lr", "seconds", "images_per_s"))
    log.info("%s epoch %d/%d: %s lr %.3g (%.1fs, %.1f images/s, ETA %.0fs)", name, rec["epoch"], epochs, losses,
             rec["lr"], rec["seconds"], rec["images_per_s"], eta)


# ------------------------------------------------------------------ checkpoint selection
def _eval_due(epoch: int, tcfg: TrainCfg) -> bool:
    """Seed evaluation after 0-based ``epoch``: every seed_eval_every epochs and at the last."""
    every = tcfg.seed_eval_every
    return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == tcfg.epochs)


def _keep_best(best: Optional[dict], rec: dict, module: nn.Module) -> dict:
    """The better of the best-so-far and this epoch by seed mIoU (ties keep the
    earlier epoch), with a CPU copy of its weights (kept in checkpoint.pt so
    a resumed run keeps the best-so-far)."""
    if best is not None and rec["seed_miou"] <= best["seed_miou"]:
        return best
    return {"epoch": rec["epoch"], "seed_miou": rec["seed_miou"], "seed_threshold": rec.get("seed_threshold"),
            "model": {k: v.detach().to("cpu", copy=True) for k, v in unwrap(module).state_dict().items()}}
