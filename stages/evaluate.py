"""evaluate: seed, pseudo-mask (every route) and final-model mIoU in one report
(pipeline/artifacts.py EvalArtifact); with ensemble.routes also each ensemble model and
the blend; the work: pipeline/evaluation/evaluate.py; a flow publishes the report
(pipeline/evaluation/publish.py)."""
from pipeline.evaluation.evaluate import inputs, run
from pipeline.evaluation.publish import report_publications
from stages.contract import Stage

STAGE = Stage(name="evaluate", inputs=inputs,
              sections=("evaluate", "ensemble.routes",  # whether the ensemble stage is an input
                        "data.train_split", "data.eval_split", "export_cams.split", "export_cams.source",
                        "pseudo_masks.method", "pseudo_masks.extra_methods",  # the routes it scores
                        # how the mask generator behind the CAMs kept its weights (the report's selection)
                        "train_cam.select", "train_cam.seed_eval_split", "train_cam.init_checkpoint",
                        "match.select", "match.seed_eval_split", "refine.select", "refine.seed_eval_split"),
              # 9: per-class precision/recall, protocol card, time and cost per stage; 8: the ensemble
              run=run, version="9", publish=report_publications)
