"""train_segmentation: mmseg segmentation model trained on the pseudo masks of the trained
route, validated on the REAL val masks (pipeline/artifacts.py SegmentationArtifact); the
work: pipeline/segmentation/final.py."""
from pipeline.segmentation.final import inputs, per_image, run
from pipeline.weights import segmentation_weights
from stages.contract import Stage

STAGE = Stage(name="train_segmentation", gpu=True, inputs=inputs,
              sections=("data", "train_segmentation", "run.seed"), run=run, per_image=per_image,
              version="5",  # 5: per-class precision/recall in val_metrics.json
              weights=lambda cfg: segmentation_weights(cfg.train_segmentation))
