"""Stages of the DAG: one explicit registry of ``Stage`` records
(stages/contract.py), in DAG order. The runner (stages/runner.py), the flow
(flows/dag.py) and the CLI read it; nothing looks a stage up by a built name.

A stage module is its record, naming the library functions that do the work as
'module:function' (imported at their first call: importing this registry, building a plan,
its keys or `wsss status` imports no model library), e.g.::

    WORK = "pipeline.sam.masks"
    STAGE = Stage(name="sam_masks", inputs=("prepare_data",), sections=("sam",), version="1",
                  run=f"{WORK}:run", items=f"{WORK}:items", run_shard=f"{WORK}:run_shard",
                  finalize=f"{WORK}:finalize", weights=weights)

The work lives in the stage family's package under pipeline/; what a stage
writes is named in pipeline/artifacts.py, which its readers use too, so no
stage imports another. run and the shard functions get a read-only view of
the config holding the declared sections (+ run.* throughput fields): reading
anything else raises, naming the stage and the field, so declare every field
the result depends on (dotted, e.g. 'data.train_split', when the whole section
would over-invalidate). A new stage: its module here, its record in the tuple
below, its layout in pipeline/artifacts.py.
"""
from __future__ import annotations

from stages import (ensemble, evaluate, export_cams, import_cams, import_masks, learn_prompts, match,
                    prepare_data, pseudo_masks, refine, sam_masks, train_cam, train_segmentation)
from stages.contract import Stage

STAGES: dict[str, Stage] = {s.name: s for s in (
    prepare_data.STAGE, sam_masks.STAGE, import_cams.STAGE, train_cam.STAGE, match.STAGE, learn_prompts.STAGE,
    refine.STAGE, export_cams.STAGE, pseudo_masks.STAGE, import_masks.STAGE, train_segmentation.STAGE,
    ensemble.STAGE, evaluate.STAGE)}
ORDER = tuple(STAGES)


def get(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}'; stages: {', '.join(ORDER)}")
    return STAGES[name]
