"""The root Config: every section, the rules across sections (rules.py), and THROUGHPUT."""
from __future__ import annotations

import json
from typing import Optional

from pydantic import Field, model_validator

from pipeline.config.base import Section
from pipeline.config.cams import ExportCamsCfg, ImportCamsCfg
from pipeline.config.evaluation import ChecksCfg, EvaluateCfg
from pipeline.config.models import ClipCfg, MaskGeneratorCfg
from pipeline.config.pseudo_masks import ImportMasksCfg, PseudoMasksCfg, SamCfg
from pipeline.config.run_data import DataCfg, RunCfg
from pipeline.config.rules import RULES
from pipeline.config.segmentation import EnsembleCfg, TrainSegmentationCfg
from pipeline.config.training import LearnPromptsCfg, MatchCfg, RefineCfg, TrainCamCfg, phase_sections

# Fields that change how fast a stage runs (or where), never what it computes: no
# artifact key covers them, and every stage's config view may read them.
THROUGHPUT = ("run.work_dir", "run.device", "run.num_workers", "run.shard_size", "run.processes",
              "run.task_runner", "run.dask_address", "run.dask_workers", "run.nproc_per_node",
              "run.dist_backend", "run.gpus", "run.lock_lease_s",
              "export_cams.batch_size", "export_cams.writer_threads", "export_cams.prefetch_batches",
              "sam.points_per_batch", "sam.amp", "sam.images_in_flight", "train_segmentation.require_compiled_ops",
              "data.fetch")  # prepare_data fetches a missing tree first; the tree, not the fetch, makes the key


class Config(Section):
    run: RunCfg = Field(default_factory=RunCfg)
    data: DataCfg
    mask_generator: MaskGeneratorCfg = Field(default_factory=MaskGeneratorCfg)
    clip: ClipCfg = Field(default_factory=ClipCfg)
    train_cam: TrainCamCfg = Field(default_factory=TrainCamCfg)
    match: MatchCfg = Field(default_factory=MatchCfg)
    learn_prompts: LearnPromptsCfg = Field(default_factory=LearnPromptsCfg)
    refine: RefineCfg = Field(default_factory=RefineCfg)
    import_cams: ImportCamsCfg = Field(default_factory=ImportCamsCfg)
    export_cams: ExportCamsCfg = Field(default_factory=ExportCamsCfg)
    sam: SamCfg = Field(default_factory=SamCfg)
    pseudo_masks: PseudoMasksCfg = Field(default_factory=PseudoMasksCfg)
    import_masks: ImportMasksCfg = Field(default_factory=ImportMasksCfg)
    train_segmentation: TrainSegmentationCfg = Field(default_factory=TrainSegmentationCfg)
    ensemble: EnsembleCfg = Field(default_factory=EnsembleCfg)
    evaluate: EvaluateCfg = Field(default_factory=EvaluateCfg)
    checks: ChecksCfg = Field(default_factory=ChecksCfg)

    # set by load_config, not by YAML
    source: Optional[str] = Field(None, exclude=True)

    @model_validator(mode="after")
    def _check_rules(self):
        for rule in RULES:
            rule(self)
        return self

    def section(self, name: str) -> dict:
        """A section as the artifact keys see it: without its THROUGHPUT fields."""
        drop = {t.split(".", 1)[1] for t in THROUGHPUT if t.startswith(name + ".")}
        return json.loads(getattr(self, name).model_dump_json(exclude=drop or None))

    def resolved(self) -> dict:
        """Every field as JSON (not ``source``): Config.model_validate(resolved()) rebuilds it;
        the flow hands this to its tasks."""
        return json.loads(self.model_dump_json())


def cam_labels() -> dict[str, str]:
    """How reports name the CAMs of each phase that makes them (TrainCfg.cams_label), by phase."""
    return {n: s.cams_label() for n, s in phase_sections(Config.model_construct(), cams_only=True).items()}

