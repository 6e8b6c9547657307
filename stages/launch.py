"""Multi-process training: a training stage called with run.nproc_per_node > 1
(outside torchrun) re-runs itself under ``torchrun --nproc_per_node N`` with
this module as the entry point; every rank calls the stage's run() inside a
process group, rank 0 writes checkpoints, logs and the metrics file.

    python -m torch.distributed.run --nproc_per_node 2 -m stages.launch \
        --stage match --config cfg.json --inputs inputs.json --out DIR
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

METRICS = ".dist_metrics.json"  # dot-file: not part of the manifest
log = logging.getLogger("wsss")


def in_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend(cfg) -> str:
    if cfg.run.dist_backend != "auto":
        return cfg.run.dist_backend
    from pipeline.utils import get_device
    return "nccl" if get_device(cfg.run.device).type == "cuda" else "gloo"


def maybe_launch(stage: str, cfg, inputs: dict, out: Path):
    """Metrics of the torchrun run when this call should fan out; None to run here."""
    n = cfg.run.nproc_per_node
    if n <= 1 or in_torchrun():
        return None
    out = Path(out)
    (out / ".launch_config.json").write_text(json.dumps(cfg.resolved()))
    (out / ".launch_inputs.json").write_text(json.dumps({k: str(v) for k, v in inputs.items()}))
    (out / METRICS).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "stages.launch", "--stage", stage, "--config", str(out / ".launch_config.json"),
           "--inputs", str(out / ".launch_inputs.json"), "--out", str(out)]
    log.info("%s: launching %d processes: %s", stage, n, " ".join(cmd))
    res = subprocess.run(cmd, cwd=os.getcwd())
    if res.returncode != 0:
        raise RuntimeError(f"{stage}: torchrun with {n} processes failed (exit {res.returncode}); "
                           "see the log above")
    return json.loads((out / METRICS).read_text())


def run_training(stage: str, cfg, inputs: dict, out: Path) -> dict:
    """A training stage's run(): here, or fanned out under torchrun when
    run.nproc_per_node > 1 (each rank then runs the same function in-process)."""
    metrics = maybe_launch(stage, cfg, inputs, out)
    if metrics is not None:
        return metrics
    import pipeline.semples as semples
    return getattr(semples, f"run_{stage}")(cfg, inputs, out)


def main(argv=None) -> None:
    from pipeline.config import Config
    from stages import get

    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [rank " + os.environ.get("RANK", "0")
                        + "] %(message)s")
    cfg = Config.model_validate(json.loads(Path(a.config).read_text()))
    inputs = {k: Path(v) for k, v in json.loads(Path(a.inputs).read_text()).items()}
    be = backend(cfg)
    if be == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(be)
    try:
        metrics = get(a.stage).run(cfg, inputs, Path(a.out))
        if dist.get_rank() == 0:
            (Path(a.out) / METRICS).write_text(json.dumps(metrics or {}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
