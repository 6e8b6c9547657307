"""evaluate: seed, pseudo-mask (every route) and final-model mIoU in one report
(pipeline/artifacts.py EvalArtifact); with ensemble.routes also each ensemble model and
the blend; the work: pipeline/evaluation/evaluate.py; a flow publishes the report
(pipeline/evaluation/publish.py)."""
from pipeline.artifacts import cam_stage, mask_stage
from pipeline.config import phase_sections
from stages.contract import Stage


def inputs(cfg) -> tuple[str, ...]:
    """prepare_data, the CAMs (none when the pseudo masks are imported and the CAMs are not: the run
    then makes no CAMs), the trained-on masks and the final model; the ensemble stage when
    ensemble.routes names further final models."""
    cams = (cam_stage(cfg),) if mask_stage(cfg) == "pseudo_masks" or cfg.export_cams.source == "import" else ()
    return ("prepare_data", *cams, mask_stage(cfg), "train_segmentation") + (
        ("ensemble",) if cfg.ensemble.routes else ())


def sections(cfg):
    """What it scores, and how the mask generator behind the CAMs kept its weights (the
    report's selection): select, seed_eval_split and any imported weights of every phase
    that makes CAMs."""
    return ("evaluate", "ensemble.routes",  # whether the ensemble stage is an input
            "data.train_split", "data.eval_split", "export_cams.split", "export_cams.source",
            "pseudo_masks.method", "pseudo_masks.extra_methods") + tuple(  # the routes it scores
        f"{name}.{field}" for name, s in phase_sections(cfg, cams_only=True).items()
        for field in ("select", "seed_eval_split", s.imports()) if field)


STAGE = Stage(name="evaluate", inputs=inputs, sections=sections,
              # 9: per-class precision/recall, protocol card, time and cost per stage; 8: the ensemble
              run="pipeline.evaluation.evaluate:run", version="9",
              publish="pipeline.evaluation.publish:report_publications")
