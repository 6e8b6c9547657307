"""Where a run's results are, for the commands that read them after the run (`wsss
export-cams`, `export-masks`, `predict`, `export-model`): each a finished artifact of the
config's run plan, or NotCached (stages/plan.py) saying what to run first."""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import CamArtifact, MaskArtifact, cam_stage, mask_stage
from stages.plan import RunPlan


def cam_store(plan: RunPlan) -> Path:
    """The run's CAMs of export_cams.split (exported or imported)."""
    return CamArtifact(plan.cached(cam_stage(plan.cfg))).store(plan.cfg.export_cams.split)


def pseudo_masks(plan: RunPlan, route: str | None = None) -> tuple[Path, list[str], str]:
    """(folder of label PNGs, ids of its images, what they are) of the masks the final model
    trains on: the imported ones, or route ``route`` (default pseudo_masks.method) of the
    pseudo_masks stage; ValueError for a route the run does not make."""
    from pipeline.data.datasets import LabelTable
    cfg, name = plan.cfg, mask_stage(plan.cfg)
    art = MaskArtifact(plan.cached(name))
    if cfg.import_masks.dir is not None:  # imported: one set, of the training split
        src, split, what = art.trained, cfg.data.train_split, name
    else:
        route = route or cfg.pseudo_masks.method
        if route not in cfg.pseudo_masks.routes:
            raise ValueError(f"--route {route}: not a route of this run ({', '.join(cfg.pseudo_masks.routes)})")
        src, split, what = art.route(route, cfg.pseudo_masks.method), cfg.export_cams.split, f"{name}, route {route}"
    return src, LabelTable.from_artifact(plan.cached("prepare_data"), split).ids(), what


def final_model(plan: RunPlan, config_name: str) -> Path:
    """The finished train_segmentation artifact, or a PredictError saying how to make it."""
    from pipeline.segmentation.predict import final_model_dir
    return final_model_dir(plan.store, plan.keys["train_segmentation"], config_name)
