"""evaluate: seed, pseudo-mask (every route) and final-model mIoU in one report
(pipeline/artifacts.py EvalArtifact); the work: pipeline/evaluation/evaluate.py."""
from pipeline.evaluation.evaluate import run
from stages.contract import Stage

STAGE = Stage(name="evaluate", inputs=("prepare_data", "export_cams", "pseudo_masks", "train_segmentation"),
              sections=("evaluate", "data.train_split", "data.eval_split", "export_cams.split", "export_cams.source",
                        "pseudo_masks.method", "pseudo_masks.extra_methods",  # the routes it scores
                        # how the mask generator behind the CAMs kept its weights (the report's selection)
                        "train_cam.select", "train_cam.seed_eval_split", "train_cam.init_checkpoint",
                        "match.select", "match.seed_eval_split", "refine.select", "refine.seed_eval_split"),
              # 8: per-class precision/recall, protocol card, time and cost per stage
              run=run, version="8")
