"""evaluate: seed, pseudo-mask (every route) and final-model mIoU in one report
(pipeline/artifacts.py EvalArtifact); with ensemble.routes also each ensemble model and
the blend; the work: pipeline/evaluation/evaluate.py; a flow publishes the report
(pipeline/evaluation/publish.py)."""
from pipeline.evaluation.evaluate import inputs, run
from pipeline.config import phase_sections
from pipeline.evaluation.publish import report_publications
from stages.contract import Stage


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
              run=run, version="9", publish=report_publications)
