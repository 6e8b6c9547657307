"""How a stage's code is called: ``execute`` runs a stage's run() under its
read-only config view (stages/contract.py); a distributed (training) stage
called with run.nproc_per_node > 1 outside torchrun re-runs itself under
torchrun (pipeline/distributed.py) with this module as the entry point:
every rank calls the stage's run() inside a process group, rank 0 writes
checkpoints, logs and the metrics file.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m stages.launch \\
        --stage match --config cfg.json --inputs inputs.json --out DIR
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from pipeline.config import Config
from pipeline.distributed import backend, in_torchrun, torchrun
from pipeline.lifetime import exit_with
from stages.contract import Stage, view

METRICS = ".dist_metrics.json"  # dot-file: not part of the manifest
log = logging.getLogger("wsss")


def execute(stage: Stage, cfg: Config, inputs: dict, out: Path) -> dict:
    """Metrics of ``stage.run`` on this config: here, or for a distributed stage
    with run.nproc_per_node > 1, under torchrun (each rank runs it in-process)."""
    n = cfg.run.nproc_per_node
    if not stage.distributed or n <= 1 or in_torchrun():
        return stage.run(view(cfg, stage), inputs, out)
    out = Path(out)
    # the whole config travels (the ranks rebuild the view); dot-files are not part of the manifest
    (out / ".launch_config.json").write_text(json.dumps(cfg.resolved()))
    (out / ".launch_inputs.json").write_text(json.dumps({k: str(v) for k, v in inputs.items()}))
    (out / METRICS).unlink(missing_ok=True)
    torchrun("stages.launch", ["--stage", stage.name, "--config", out / ".launch_config.json",
                               "--inputs", out / ".launch_inputs.json", "--out", out], n, stage.name)
    return json.loads((out / METRICS).read_text())


def shards(stage: Stage, cfg: Config, inputs: dict, out: Path) -> tuple[list[str], list[list[str]]]:
    """(the stage's ids, its shards of run.shard_size ids that have work left): a shard whose
    per-image outputs (Stage.per_image) are all there is not scheduled, so a heal of one image
    runs one shard. A shard keeps all its ids (export_cams computes a missing image in the batch
    it had: pipeline/cams/export.py). The runner has healed the artifact before this: an output
    that is there is sound."""
    v = view(cfg, stage)
    ids = stage.items(v, inputs)
    size = cfg.run.shard_size
    all_shards = [ids[i:i + size] for i in range(0, len(ids), size)]
    if not stage.per_image:
        return ids, all_shards
    pending = set().union(*(lay.pending(out, ids) for lay in stage.per_image(v)))
    return ids, [s for s in all_shards if pending.intersection(s)]


def main(argv=None) -> None:
    import torch
    import torch.distributed as dist

    from stages import get

    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    exit_with(os.getppid())  # torchrun: killed with the run, it cannot stop its ranks
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [rank " + os.environ.get("RANK", "0")
                        + "] %(message)s")
    cfg = Config.model_validate(json.loads(Path(a.config).read_text()))
    inputs = {k: Path(v) for k, v in json.loads(Path(a.inputs).read_text()).items()}
    be = backend(cfg.run.device, cfg.run.dist_backend)
    if be == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(be)
    try:
        metrics = execute(get(a.stage), cfg, inputs, Path(a.out))
        if dist.get_rank() == 0:
            (Path(a.out) / METRICS).write_text(json.dumps(metrics or {}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
