"""The record of a training phase, and what decides how a phase keeps its weights.

Every module of pipeline/semples/phases/ defines one ``PHASE = Phase(...)``; the package
(pipeline/semples/phases/__init__.py) finds them: ``phases()``, ``cam_phases()``, ``phase(name)``.
Evaluate and its report read the records (which phase made the CAMs, in words); the config
needs none: a phase's section is a TrainCfg field of Config, and what the config's rules must
know of it (makes_cams, imports) its section's methods say (pipeline/config/training.py
``phase_sections``).

``selects_on_gt`` is the one place that decides whether selection by ground truth applies: the
training loop's callbacks (KeepBest), the kept weights, the seed evaluation's refusal without
ground truth and the report's words (``selection_label``) all ask it.

A new phase: docs/extending/training-phase.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from pipeline.config import Config, TrainCfg


@dataclass(frozen=True)
class Phase:
    """One training phase. ``cams``: how the report names the CAMs of the mask generator it
    trains (e.g. "L_match only (phase 1)"), set exactly when its section makes CAMs (TrainCfg.makes_cams:
    export_cams.source may name it, its seeds are evaluated and may select its epoch)."""
    name: str  # its stage's name and its config section's
    run: Callable[[Config, dict, Path], dict]  # trains into out (pipeline/artifacts.py ModelArtifact)
    step: Callable  # its loss step (the run builds the call from its section)
    trainable: str  # what learns, in words
    cams: Optional[str] = None

    def section(self, cfg: Config) -> TrainCfg:
        return getattr(cfg, self.name)


def selects_on_gt(tcfg: TrainCfg) -> bool:
    """Whether a phase keeps the epoch with the best seed mIoU against ground truth (select:
    gt_miou) rather than its last."""
    return tcfg.select == "gt_miou"


def imported_from(tcfg: TrainCfg) -> Optional[str]:
    """The weights file a phase imports instead of training (train_cam.init_checkpoint), if any."""
    return getattr(tcfg, tcfg.imports()) if tcfg.imports() else None


def selection_label(cfg: Config, stage: str) -> str:
    """How a training stage picks the weights it keeps, in words (metrics and reports)."""
    from pipeline.config import seed_eval_split
    tcfg = getattr(cfg, stage)
    if imported_from(tcfg):
        return (f"imported from {imported_from(tcfg)} (WeakTr's released checkpoint_best_mIoU.pth "
                "was chosen by its authors on ground truth)")
    if selects_on_gt(tcfg):
        return f"best epoch by seed mIoU on {seed_eval_split(cfg, stage)} (uses ground truth)"
    return "last epoch (no pixel labels)"
