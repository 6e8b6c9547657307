"""The one torchrun launcher and backend choice of every training stage.

The SemPLeS phases (stages/launch.py) and the mmseg final model
(pipeline/segmentation/train.py) both fan out with ``torchrun`` on this node
through ``torchrun()``, and both pick their process-group backend with
``backend()``."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from pipeline.lifetime import die_with_parent

log = logging.getLogger("wsss")
ROOT = Path(__file__).resolve().parents[1]  # the project: the children import pipeline/ and stages/ from here


def in_torchrun() -> bool:
    """True inside a rank that torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend(device: str, dist_backend: str = "auto") -> str:
    """run.dist_backend, or with 'auto' NCCL on CUDA and gloo on CPU."""
    if dist_backend != "auto":
        return dist_backend
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "nccl" if device == "cuda" else "gloo"


def torchrun(module: str, args: list[str], nproc: int, what: str, log_path: Optional[Path] = None) -> None:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m module args``;
    output to ``log_path`` (appended) or this process's streams. Raises naming
    ``what`` when any rank fails. torchrun dies with this process; each rank ends with torchrun
    (``exit_with`` in the module's main)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log.info("%s: launching %d processes: %s", what, nproc, " ".join(cmd))
    if log_path is None:
        rc = subprocess.call(cmd, env=env, preexec_fn=die_with_parent)
    else:
        with open(log_path, "a") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
    if rc:
        where = f"see {log_path}" if log_path else "see the log above"
        raise RuntimeError(f"{what}: torchrun with {nproc} processes failed (exit {rc}); {where}")
