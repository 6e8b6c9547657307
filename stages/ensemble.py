"""ensemble: further final models, one per cfg.ensemble.routes entry (train_segmentation's
recipe on that route's pseudo masks), blended with train_segmentation's model on the val
split by per-pixel class probabilities and cfg.ensemble.weights. In the DAG only when
ensemble.routes is set (evaluate then takes it as an input). Layout: pipeline/artifacts.py
EnsembleArtifact; the work: pipeline/segmentation/ensemble.py."""
from pipeline.weights import segmentation_weights
from stages.contract import Stage

STAGE = Stage(name="ensemble", gpu=True, inputs=("prepare_data", "pseudo_masks", "train_segmentation"),
              # the members use train_segmentation's recipe; pseudo_masks.method names the main model's route
              sections=("ensemble", "data", "train_segmentation", "run.seed", "pseudo_masks.method"),
              run="pipeline.segmentation.ensemble:run",
              version="1", weights=lambda cfg: segmentation_weights(cfg.train_segmentation))
