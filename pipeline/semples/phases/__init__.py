"""The training phases, one module each with its ``PHASE`` record (pipeline/semples/phase.py):
train_cam, match, learn_prompts, refine; ``common`` holds what they share. The registry finds
every module here that defines ``PHASE``, so nothing else names a phase."""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from pipeline.config import Config
from pipeline.semples.phase import Phase
from pipeline.semples.phases.train_cam import warm_start_param_groups  # noqa: F401 (tests/test_fidelity.py)


@lru_cache(maxsize=None)
def phases() -> tuple[Phase, ...]:
    """Every registered phase, in the order of their sections in Config."""
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    found = [m.PHASE for m in modules if hasattr(m, "PHASE")]
    order = list(Config.model_fields)
    unknown = [p.name for p in found if p.name not in order]
    if unknown:
        raise RuntimeError(f"training phases {unknown} have no config section of their name in Config")
    return tuple(sorted(found, key=lambda p: order.index(p.name)))


def phase(name: str) -> Phase:
    for p in phases():
        if p.name == name:
            return p
    raise KeyError(f"unknown training phase '{name}'; phases: {', '.join(p.name for p in phases())}")
