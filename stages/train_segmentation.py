"""train_segmentation: mmseg segmentation model trained on the pseudo masks of the trained
route, validated on the REAL val masks (pipeline/artifacts.py SegmentationArtifact); the
work: pipeline/segmentation/final.py."""
from pipeline.artifacts import mask_stage
from pipeline.weights import segmentation_weights
from stages.contract import Stage

WORK = "pipeline.segmentation.final"


def inputs(cfg) -> tuple[str, ...]:
    """The label tables and the masks it trains on: pseudo_masks' trained route, or import_masks'
    when import_masks.dir is set."""
    return ("prepare_data", mask_stage(cfg))


STAGE = Stage(name="train_segmentation", gpu=True, inputs=inputs,
              sections=("data", "train_segmentation", "run.seed"), run=f"{WORK}:run", per_image=f"{WORK}:per_image",
              version="5",  # 5: per-class precision/recall in val_metrics.json
              weights=lambda cfg: segmentation_weights(cfg.train_segmentation))
