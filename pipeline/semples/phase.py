"""The registry of training phases: one ``Phase`` record per module of the package
pipeline/semples/phases/ (its ``PHASE``), found there, so nothing else names a phase.

What reads it: the config (export_cams.source names a phase that makes CAMs, the rules of
select / seed_eval_*), evaluate and its report (which phase made the CAMs, how each kept its
weights), the image checks (the splits the seed evaluation reads), the training loop (whether
selection by ground truth applies: ``selects_on_gt``, the one place that decides it).

A new phase: a module in pipeline/semples/phases/ with its loss step, its ``run`` and its
``PHASE``; its config section (a TrainCfg subclass, one field of pipeline/config/root.py Config,
whose field order is the phases' order); its stage record (stages/). docs/extending/training-phase.md
walks through one.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from pipeline.config import Config, TrainCfg


@dataclass(frozen=True)
class Phase:
    """One training phase. ``cams``: how the report names the CAMs of the mask generator it
    trains (e.g. "L_match only (phase 1)"); None: it trains no mask generator (learn_prompts), so
    export_cams.source cannot name it and it has no seed evaluation or selection. ``imports``: the
    field of its section naming weights it imports instead of training (train_cam.init_checkpoint)."""
    name: str  # its stage's name and its config section's
    run: Callable[[Config, dict, Path], dict]  # trains into out (pipeline/artifacts.py ModelArtifact)
    step: Callable  # its loss step (the run builds the call from its section)
    trainable: str  # what learns, in words
    cams: Optional[str] = None
    imports: Optional[str] = None

    def section(self, cfg: Config) -> TrainCfg:
        return getattr(cfg, self.name)

    def imported_from(self, cfg: Config) -> Optional[str]:
        """The weights file this phase imports instead of training under ``cfg``, if any."""
        return getattr(self.section(cfg), self.imports) if self.imports else None


def selects_on_gt(tcfg: TrainCfg) -> bool:
    """Whether a phase keeps the epoch with the best seed mIoU against ground truth (select:
    gt_miou) rather than its last: the training loop's KeepBest, the kept weights, the seed
    evaluation's refusal without ground truth and the report's words all ask here."""
    return tcfg.select == "gt_miou"


@lru_cache(maxsize=None)
def phases() -> tuple[Phase, ...]:
    """Every registered phase, in the order of their sections in Config."""
    from pipeline import config
    from pipeline.semples import phases as package
    found = [getattr(importlib.import_module(f"{package.__name__}.{m.name}"), "PHASE", None)
             for m in pkgutil.iter_modules(package.__path__)]
    order = list(config.Config.model_fields)
    unknown = [p.name for p in found if p is not None and p.name not in order]
    if unknown:
        raise RuntimeError(f"training phases {unknown} have no config section of their name in Config")
    return tuple(sorted((p for p in found if p is not None), key=lambda p: order.index(p.name)))


def cam_phases() -> tuple[Phase, ...]:
    """The phases that train the mask generator: export_cams.source may name each."""
    return tuple(p for p in phases() if p.cams is not None)


def phase(name: str) -> Phase:
    for p in phases():
        if p.name == name:
            return p
    raise KeyError(f"unknown training phase '{name}'; phases: {', '.join(p.name for p in phases())}")
