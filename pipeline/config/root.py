"""The root Config: every section, the cross-section checks, and THROUGHPUT."""
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
from pipeline.config.segmentation import EnsembleCfg, TrainSegmentationCfg
from pipeline.config.training import LearnPromptsCfg, MatchCfg, RefineCfg, TrainCamCfg

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
    def _check_splits(self):
        if self.data.dataset == "coco":
            for name in self.data.all_splits:
                s = self.data.splits.get(name)
                if s is None or not (s.images and s.annotations):
                    raise ValueError(f"data.splits.{name}: COCO needs 'images' and 'annotations'")
        lp = self.learn_prompts
        if lp.select != "last" or lp.seed_eval_every:
            raise ValueError("learn_prompts.select / learn_prompts.seed_eval_every: phase 2 trains the prompts "
                             "only (S is frozen, its seeds do not change); keep 'last' and 0")
        for stage in ("train_cam", "match", "refine"):
            split = seed_eval_split(self, stage)
            if getattr(self, stage).seed_eval_every and split not in self.data.all_splits:
                raise ValueError(f"{stage}.seed_eval_split: '{split}' is not a split with ground truth of this "
                                 f"config (data splits: {', '.join(self.data.all_splits)})")
        if self.data.dataset == "folder":
            if not self.data.classes:
                raise ValueError("data.classes: a folder dataset needs a class list file")
            for name in self.data.all_splits:
                s = self.data.splits.get(name)
                if s is None or not s.labels:
                    raise ValueError(f"data.splits.{name}: a folder dataset needs 'labels' (a labels file)")
        elif self.data.val_split is None:
            raise ValueError("data.val_split: VOC/COCO need a val split")
        if "sam" in self.pseudo_masks.routes and self.sam.split != self.export_cams.split:
            raise ValueError(f"sam.split '{self.sam.split}' must equal export_cams.split '{self.export_cams.split}' "
                             "(the sam route labels SAM's masks with the exported CAMs)")
        bad = [r for r in self.ensemble.routes if r not in self.pseudo_masks.extra_methods]
        if bad:
            raise ValueError(f"ensemble.routes: {bad} not in pseudo_masks.extra_methods "
                             f"{self.pseudo_masks.extra_methods} (train_segmentation's model trains on "
                             f"pseudo_masks.method '{self.pseudo_masks.method}'; each further model on an extra route)")
        if self.ensemble.routes and self.data.val_split is None:
            raise ValueError("ensemble.routes: the blend is scored on the val split; data.val_split is null")
        if self.export_cams.source == "import":
            if self.import_cams.dir is None:
                raise ValueError("export_cams.source 'import' needs import_cams.dir (the folder of CAM files)")
            aff = [m for m in self.pseudo_masks.routes if m.startswith("affinity")]
            if aff:
                raise ValueError(f"pseudo_masks routes {aff} walk the mask generator's attention, which imported "
                                 "CAMs do not have (export_cams.source: import); use argmax, crf or sam")
        pred = self.train_segmentation.predict_split
        if pred is not None and pred not in self.data.all_splits:
            raise ValueError(f"train_segmentation.predict_split: '{pred}' is none of the data splits "
                             f"{self.data.all_splits}")
        return self

    def section(self, name: str) -> dict:
        """A section as the artifact keys see it: without its THROUGHPUT fields."""
        drop = {t.split(".", 1)[1] for t in THROUGHPUT if t.startswith(name + ".")}
        return json.loads(getattr(self, name).model_dump_json(exclude=drop or None))

    def resolved(self) -> dict:
        """Every field as JSON (not ``source``): Config.model_validate(resolved()) rebuilds it;
        the flow hands this to its tasks."""
        return json.loads(self.model_dump_json())


def seed_eval_split(cfg: Config, stage: str) -> str:
    """The GT split a training stage's seeds are scored on."""
    return getattr(cfg, stage).seed_eval_split or cfg.data.eval_split or cfg.data.train_split
