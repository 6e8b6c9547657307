"""The named callbacks of the training loop (pipeline.semples.training.fit): seed evaluation,
keep-best selection, checkpointing, the loss history, the epoch log line, TensorBoard event
files and the CAM gallery.

A callback is a small class with any of five hooks, called in the order of ``callbacks_for``;
``state`` is the loop's FitState (pipeline.semples.training: its spec, what setup built, the
first epoch of the call, the history and the best-so-far):

- ``on_fit_start(state)``: every rank, after setup (Checkpoint resumes here);
- ``on_train_step(state, epoch, i, stats)``: rank 0, after the epoch's i-th update (0-based), with
  rank 0's stats of that batch;
- ``on_train_epoch_end(state, epoch, rec)``: every rank, right after the epoch's updates
  (Checkpoint captures the RNG state here, before anything else draws from it);
- ``on_epoch_end(state, epoch, rec)``: rank 0, in order: SeedEval adds its numbers to ``rec``,
  KeepBest compares them, Checkpoint writes everything ``resume`` needs, then history and log;
- ``on_fit_end(state, finished)``: rank 0; ``finished``: every epoch of the schedule is done.

A new callback: its class here and one line in ``callbacks_for``.
"""
from __future__ import annotations

import errno
import logging
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import Dataset

from pipeline.artifacts import ModelArtifact
from pipeline.fileio import decoding, torch_save_atomic
from pipeline.models.mask_generator import MEAN, STD, unwrap
from pipeline.plots import heat_overlay, save_grid, save_loss_history
from pipeline.semples.dist import dist_info, is_main

log = logging.getLogger("wsss")
CHECKPOINT = ModelArtifact.checkpoint.name
BEST_MODEL = ModelArtifact.best_state.name  # select: gt_miou: the chosen epoch's weights (state_dict)


class Callback:
    """No-op hooks; a callback overrides the ones it needs (module docstring)."""

    def on_fit_start(self, state) -> None: ...

    def on_train_step(self, state, epoch: int, i: int, stats: dict) -> None: ...

    def on_train_epoch_end(self, state, epoch: int, rec: dict) -> None: ...

    def on_epoch_end(self, state, epoch: int, rec: dict) -> None: ...

    def on_fit_end(self, state, finished: bool) -> None: ...


class SeedEval(Callback):
    """``evaluate(module, epoch) -> {"seed_miou", ...}`` every tcfg.seed_eval_every epochs and at
    the last one; its numbers join the epoch's history record. Runs after the RNG capture, so a
    resumed run draws what an uninterrupted one does."""

    def __init__(self, evaluate: Callable[[torch.nn.Module, int], dict]):
        self.evaluate = evaluate

    def on_epoch_end(self, state, epoch, rec):
        every, epochs = state.spec.tcfg.seed_eval_every, state.spec.tcfg.epochs
        if every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            rec.update(self.evaluate(unwrap(state.spec.trainable), epoch + 1))


class KeepBest(Callback):
    """select: gt_miou. state.best: the better of the best-so-far and this epoch by seed mIoU
    (ties keep the earlier epoch) with a CPU copy of its weights, kept in checkpoint.pt so a
    resumed run keeps the best-so-far; at the end its weights go to out/best_model_state.pt."""

    def on_epoch_end(self, state, epoch, rec):
        best = state.best
        if "seed_miou" not in rec or (best is not None and rec["seed_miou"] <= best["seed_miou"]):
            return
        state.best = {"epoch": rec["epoch"], "seed_miou": rec["seed_miou"], "seed_threshold": rec.get("seed_threshold"),
                      "model": {k: v.detach().to("cpu", copy=True)
                                for k, v in unwrap(state.spec.trainable).state_dict().items()}}

    def on_fit_end(self, state, finished):
        if state.best is not None:
            torch_save_atomic(state.best["model"], Path(state.spec.out) / BEST_MODEL)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def rng_states():
    """This process's RNG state, or every rank's (a list) under DDP; every rank must call it."""
    world = dist_info()[1]
    if world == 1:
        return _rng_state()
    rngs = [None] * world
    dist.all_gather_object(rngs, _rng_state())
    return rngs


class Checkpoint(Callback):
    """out/checkpoint.pt after every epoch: weights, optimizer, schedule, scaler, every rank's
    RNG state, history and best-so-far; a later fit continues after its epoch exactly."""

    def __init__(self) -> None:
        self.rngs = None

    def on_fit_start(self, state):
        path = Path(state.spec.out) / CHECKPOINT
        if not path.exists():
            return
        tr, rank = state.tr, dist_info()[0]
        with decoding(path, "resume checkpoint"):
            ck = torch.load(path, map_location="cpu", weights_only=False)
        unwrap(tr.trainable).load_state_dict(ck["model"])
        tr.opt.load_state_dict(ck["optimizer"])
        tr.sched.load_state_dict(ck["scheduler"])
        tr.scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"][rank] if isinstance(ck["rng"], list) and rank < len(ck["rng"]) else ck["rng"])
        if is_main():
            log.info("%s: resuming after epoch %d from %s", tr.name, ck["epoch"] + 1, path)
        state.start, state.history, state.best = ck["epoch"] + 1, ck["history"], ck.get("best")

    def on_train_epoch_end(self, state, epoch, rec):
        self.rngs = rng_states()

    def on_epoch_end(self, state, epoch, rec):
        tr = state.tr
        torch_save_atomic({"epoch": epoch, "model": unwrap(tr.trainable).state_dict(),
                           "optimizer": tr.opt.state_dict(), "scheduler": tr.sched.state_dict(),
                           "scaler": tr.scaler.state_dict(), "rng": self.rngs, "history": state.history,
                           "best": state.best}, Path(state.spec.out) / CHECKPOINT)


class LossHistory(Callback):
    """out/<name>_history.json and its plot, rewritten every epoch."""

    def on_epoch_end(self, state, epoch, rec):
        save_loss_history(state.spec.out, state.history, state.spec.name)


class EpochLog(Callback):
    """One log line per epoch: the step's stats, lr, throughput and the ETA."""

    def on_fit_start(self, state):
        self.t0 = time.time()

    def on_epoch_end(self, state, epoch, rec):
        epochs = state.spec.tcfg.epochs
        eta = (time.time() - self.t0) / (epoch + 1 - state.start) * (epochs - epoch - 1)
        losses = " ".join(f"{k} {v:.4f}" for k, v in rec.items() if k not in ("epoch", "lr", "seconds", "images_per_s"))
        log.info("%s epoch %d/%d: %s lr %.3g (%.1fs, %.1f images/s, ETA %.0fs)", state.spec.name, rec["epoch"],
                 epochs, losses, rec["lr"], rec["seconds"], rec["images_per_s"], eta)


class TensorBoard(Callback):
    """Event files in out/tensorboard/ (rank 0) to watch while the stage trains. The step is the
    number of updates so far (epoch x batches per epoch + i + 1), so a resumed fit continues the
    curves; its writer purges what a killed run wrote after the checkpoint's last update (the
    updates it redoes), so no step is written twice. Tags: step/<term> (rank 0's batch),
    epoch/<term> (the epoch's mean over all ranks), lr/group<i>, throughput/images_per_s,
    seed/<number>_gt (the seed evaluation: uses ground truth), cams/gallery (the gallery's CAMs
    after every epoch). A write that fails stops the writing with one warning and the stage goes
    on, except a full disk (ENOSPC), which is raised like any other write on it."""

    def __init__(self) -> None:
        self.writer = None
        self.stopped = False

    def _safely(self, write: Callable, *args) -> None:
        if self.stopped:
            return
        try:
            write(*args)
        except Exception as e:  # whatever the event writer raises must not end the training
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise
            self.stopped = True
            log.warning("TensorBoard event files stop here, the training goes on (%s: %s)", type(e).__name__, e)

    def _open(self, state) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.per_epoch = len(state.tr.loader)
        self.folder = ModelArtifact(state.spec.out).tensorboard
        self.writer = SummaryWriter(str(self.folder), purge_step=state.start * self.per_epoch + 1, flush_secs=30)

    def on_fit_start(self, state):
        self.stopped = not is_main()
        self._safely(self._open, state)

    def _step(self, epoch: int, i: int, stats: dict) -> None:
        for k, v in stats.items():
            self.writer.add_scalar(f"step/{k}", v, epoch * self.per_epoch + i + 1)

    def on_train_step(self, state, epoch, i, stats):
        self._safely(self._step, epoch, i, stats)

    def _epoch(self, state, epoch: int, rec: dict) -> None:
        step, w = (epoch + 1) * self.per_epoch, self.writer
        for k, v in rec.items():
            if k not in ("epoch", "lr", "seconds") and isinstance(v, (int, float)):
                w.add_scalar(_epoch_tag(k), v, step)
        for g, group in enumerate(state.tr.opt.param_groups):
            w.add_scalar(f"lr/group{g}", group["lr"], step)
        if state.spec.gallery is not None:
            self._gallery(state, step)
        w.flush()

    def _gallery(self, state, step: int) -> None:
        """The Gallery callback's picture of the model now (eval mode, then back)."""
        model, png = state.spec.trainable, self.folder / ".gallery.png"
        was_training = model.training
        model.eval()
        try:
            state.spec.gallery(png)
        finally:
            model.train(was_training)
        if png.exists():  # gallery_size 0 draws nothing
            with Image.open(png) as im:
                im = im.convert("RGB")
                im.thumbnail((768, 768))  # about 200 KB per epoch
                self.writer.add_image("cams/gallery", np.asarray(im), step, dataformats="HWC")
            png.unlink()

    def on_epoch_end(self, state, epoch, rec):
        self._safely(self._epoch, state, epoch, rec)

    def on_fit_end(self, state, finished):
        self._safely(lambda: self.writer.close())


def _epoch_tag(key: str) -> str:
    """The TensorBoard tag of an epoch record's number."""
    if key == "images_per_s":
        return "throughput/images_per_s"
    if key.startswith("seed_"):  # scored against the ground-truth masks
        return f"seed/{key.removeprefix('seed_')}_gt"
    return f"epoch/{key}"


class Gallery(Callback):
    """At the end of a finished fit, ``write(path)`` draws the CAM gallery (module in eval mode)."""

    def __init__(self, write: Callable[[Path], None]):
        self.write = write

    def on_fit_end(self, state, finished):
        if finished:
            state.spec.trainable.eval()
            self.write(ModelArtifact(state.spec.out).gallery)


def callbacks_for(spec) -> list[Callback]:
    """The loop's callbacks for a FitSpec, in hook order. Selection by ground truth is decided here, once
    (TrainCfg.selects_on_gt): it adds KeepBest, which needs the seed evaluation."""
    cbs: list[Callback] = [SeedEval(spec.epoch_eval)] if spec.epoch_eval is not None else []
    if spec.tcfg.selects_on_gt():
        if spec.epoch_eval is None:
            raise ValueError(f"{spec.name}: select 'gt_miou' needs a seed evaluation (epoch_eval)")
        cbs.append(KeepBest())
    cbs += [Checkpoint(), LossHistory(), EpochLog(), TensorBoard()]
    return cbs + ([Gallery(spec.gallery)] if spec.gallery is not None else []) + list(spec.callbacks)


def write_gallery(path: Path, cams_fn: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset,
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
