"""The record of a training phase: its run, loss step and what it trains.

Every module of pipeline/semples/phases/ defines one ``PHASE = Phase(...)``; the package
(pipeline/semples/phases/__init__.py) finds them: ``phases()``, ``phase(name)``. What the
machinery must know of a phase beyond its code its config section says, so that the config,
evaluate and the reports need no import of the training code: a phase's section is a TrainCfg
field of Config (pipeline/config/training.py ``phase_sections``), whose methods say whether it
makes CAMs and how reports name them (``cams_label``), which weights it imports instead of
training (``imports``) and whether it keeps its epoch by ground truth (``selects_on_gt``, the
one place that decides it). A new phase: docs/extending/training-phase.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pipeline.config import Config, TrainCfg


@dataclass(frozen=True)
class Phase:
    """One training phase: the code of it. What the config, evaluate and the reports must know
    of it (whether it makes CAMs and their words, imported weights, selection by ground truth)
    its config section says (TrainCfg methods)."""
    name: str  # its stage's name and its config section's
    run: Callable[[Config, dict, Path], dict]  # trains into out (pipeline/artifacts.py ModelArtifact)
    step: Callable  # its loss step (the run builds the call from its section)
    trainable: str  # what learns, in words

    def section(self, cfg: Config) -> TrainCfg:
        return getattr(cfg, self.name)
