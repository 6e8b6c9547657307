"""`wsss tensorboard`: one TensorBoard logdir over the training stages of one or more runs and
their seeds. The logdir holds symbolic links with readable names, ``<run.name>/<stage>`` (a
multi-seed config: ``<run.name>/<stage>/seed<k>``; an ensemble's further models:
``<run.name>/ensemble/<route>``), to the tensorboard/ folder of each stage's artifact, where
the stage writes its event files as it trains (pipeline/semples/callbacks.py TensorBoard,
mmengine's TensorboardVisBackend for the segmentation models). A stage that has not started
yet gets its link too: TensorBoard shows it once the folder appears."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from pipeline.artifacts import EnsembleArtifact, Layout
from pipeline.config import Config
from pipeline.semples.phases import phases
from stages.plan import RunPlan
from stages.seeds import seeds_of, with_seed

SEGMENTATION = "train_segmentation"


def event_folders(cfg: Config) -> dict[str, Path]:
    """{run-relative name: tensorboard folder} of every training stage the config runs."""
    training = {p.name for p in phases()} | {SEGMENTATION}
    out = {}
    seeds = seeds_of(cfg)
    for seed in seeds or [None]:
        plan = RunPlan(cfg if seed is None else with_seed(cfg, seed))
        tail = "" if seed is None else f"/seed{seed}"
        for name in plan.names:
            if name in training:
                out[f"{name}{tail}"] = Layout(plan.path(name)).tensorboard
            elif name == "ensemble":
                for route in cfg.ensemble.routes:
                    out[f"ensemble/{route}{tail}"] = EnsembleArtifact(plan.path(name)).member(route).tensorboard
    return out


def build_logdir(cfgs: Sequence[Config], logdir: Optional[Path] = None) -> tuple[Path, list[str]]:
    """Make (or update) the links of the runs of ``cfgs`` in ``logdir`` (default: a new temporary
    folder); returns it and a line per link, then one naming it. Two configs of one run.name: the
    second is named '<run.name> (2)'. Only links are replaced: anything else in the way is an error."""
    logdir = Path(logdir or tempfile.mkdtemp(prefix="wsss-tensorboard-"))
    links: dict[str, Path] = {}
    names: list[str] = []
    for i, cfg in enumerate(cfgs):
        run = cfg.run.name if cfg.run.name not in names else f"{cfg.run.name} ({i + 1})"
        names.append(run)
        links |= {f"{run}/{rel}": target.absolute() for rel, target in event_folders(cfg).items()}
    for rel, target in links.items():
        link = logdir / rel
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise FileExistsError(f"{link}: is in the way of a link to {target} and is not one; "
                                  "choose another --logdir")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
    return logdir, [f"{rel} -> {target}" for rel, target in links.items()] + [f"logdir: {logdir}"]


def serve(logdir: Path, port: int) -> int:
    """Run TensorBoard on ``logdir`` until it is stopped (Ctrl-C); its exit status."""
    try:
        return subprocess.run([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                               "--port", str(port)]).returncode
    except KeyboardInterrupt:
        return 0
