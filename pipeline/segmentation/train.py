"""Train / evaluate / predict with an mmseg config, through mmengine's Runner.

Single process: ``train(cfg)`` in this process. Several processes:
``launch(config_path, nproc)`` runs this module under torchrun through the
launcher every training stage shares (pipeline/distributed.py:
``python -m torch.distributed.run --standalone --nproc_per_node N -m
pipeline.segmentation.train <config> --launcher pytorch``), which is what
mmseg's tools/dist_train.sh does; mmengine then wraps the model in DDP, shards
the data per rank and saves checkpoints/logs on rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from pipeline.fileio import decoding, torch_save_atomic
from pipeline.lifetime import exit_with
from pipeline.segmentation.mmcv_compat import ensure_mmcv

ensure_mmcv()

from mmengine.config import Config  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

from pipeline.segmentation import mm_modules  # noqa: E402,F401  (registers dataset/metric/hook)
from pipeline.segmentation.mm_modules import VAL_HISTORY  # noqa: E402


def _prepare(cfg: Config) -> None:
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)  # mmengine builds nested parts in the mmseg scope
    if cfg.get("custom_imports"):
        import_modules_from_strings(**cfg.custom_imports)


@contextmanager
def mmengine_checkpoints():
    """mmengine 0.10.7 calls torch.load() without weights_only; since torch 2.6
    that defaults to True and refuses mmengine's own checkpoints (they pickle its
    HistoryBuffer and numpy objects), so resuming fails. Inside this block torch's
    documented switch TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD restores the old default
    for calls that do not pass weights_only. Only use it for checkpoints you trust
    (the artifact's own, the configured pretrained file)."""
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old


def val_history(work_dir: Path) -> list[dict]:
    p = Path(work_dir) / VAL_HISTORY
    return json.loads(p.read_text()) if p.exists() else []


def train(cfg: Config, launcher: str = "none") -> None:
    """Train (resuming from <work_dir>/last_checkpoint if present), then make
    sure the final iteration was validated (val_history.json ends with it),
    unless the config has no validation loop."""
    from mmengine.runner import Runner
    _prepare(cfg)
    cfg = cfg.copy()
    cfg.launcher = launcher
    with mmengine_checkpoints():
        runner = Runner.from_cfg(cfg)
        runner.train()
        if cfg.get("val_cfg") and runner.message_hub.get_info("wsss_last_val_iter") != runner.iter:
            runner.val()  # e.g. training had already finished before an interrupted rerun


def launch(config_path: Path, nproc: int, log_path: Path) -> None:
    """Run ``train`` under torchrun with ``nproc`` processes on this node."""
    from pipeline.distributed import torchrun
    torchrun("pipeline.segmentation.train", [config_path, "--launcher", "pytorch"], nproc,
             "train_segmentation", log_path)


def best_checkpoint(work_dir: Path) -> Path:
    """The checkpoint mmengine's save_best='mIoU' kept (best val mIoU)."""
    found = sorted(Path(work_dir).glob("best_mIoU_iter_*.pth"))
    if len(found) != 1:
        raise FileNotFoundError(f"{work_dir}: expected one best_mIoU_iter_*.pth, found {[p.name for p in found]}")
    return found[0]


def export_weights(work_dir: Path, target: Path, checkpoint: Path | None = None) -> dict:
    """Copy the model weights + meta of ``checkpoint`` (default: the last one)
    to ``target`` (no optimizer state: what mmseg's test tool and init_model need)."""
    if checkpoint is None:
        last = Path(work_dir) / "last_checkpoint"
        if not last.exists():
            raise FileNotFoundError(f"{last}: training left no checkpoint")
        checkpoint = Path(last.read_text().strip())
    with decoding(checkpoint, "mmseg checkpoint"):
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    slim = {"meta": ckpt.get("meta", {}), "state_dict": ckpt["state_dict"]}
    torch_save_atomic(slim, target)
    return slim["meta"]


def test(cfg: Config, checkpoint: Path, work_dir: Path, tta: bool = False) -> dict:
    """Metrics of ``checkpoint`` on the test set (= val) through mmengine's test
    loop, as mmseg's tools/test.py [--tta] does: with ``tta`` the model is the
    config's tta_model around it and the data go through tta_pipeline; the
    test_evaluator (CrfIoUMetric when a CRF is configured) scores it."""
    from mmengine.runner import Runner
    _prepare(cfg)
    cfg = cfg.copy()
    cfg.work_dir, cfg.load_from, cfg.resume = str(work_dir), str(checkpoint), False
    if tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    with mmengine_checkpoints():
        return dict(Runner.from_cfg(cfg).test())


def load_model(cfg: Config, checkpoint: Path, device: str = "cpu"):
    from mmseg.apis import init_model
    _prepare(cfg)
    with mmengine_checkpoints():
        return init_model(cfg.copy(), str(checkpoint), device=device)


def predict(model, image_path: str) -> np.ndarray:
    """(H, W) uint8 class ids at the image's original size."""
    from mmseg.apis import inference_model
    with torch.no_grad():
        res = inference_model(model, image_path)
    return res.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="train an mmseg config (used under torchrun)")
    ap.add_argument("config")
    ap.add_argument("--launcher", default="none", choices=["none", "pytorch", "slurm", "mpi"])
    args = ap.parse_args(argv)
    exit_with(os.getppid())  # torchrun: killed with the run, it cannot stop its ranks
    train(Config.fromfile(args.config), launcher=args.launcher)


if __name__ == "__main__":
    main()
