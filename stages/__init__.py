"""Stages of the DAG. Each module exposes NAME, INPUTS (upstream stage names;
a stage whose inputs depend on the config also has ``inputs(cfg)``),
SECTIONS (config sections its result depends on), VERSION (bump when its
logic changes) and ``run(cfg, inputs, out) -> metrics``. Per-image stages
also expose ``items(cfg, inputs)``, ``run_shard(cfg, inputs, out, ids)`` and
``finalize(cfg, inputs, out)`` so a flow can map shards over workers."""
from __future__ import annotations

import importlib
from types import ModuleType

ORDER = ("prepare_data", "sam_masks", "train_cam", "match", "learn_prompts", "refine", "export_cams",
         "pseudo_masks", "train_segmentation", "evaluate")


def get(name: str) -> ModuleType:
    if name not in ORDER:
        raise KeyError(f"unknown stage '{name}'; stages: {', '.join(ORDER)}")
    return importlib.import_module(f"stages.{name}")
