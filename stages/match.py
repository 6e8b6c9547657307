"""match: phase 1, Segment-Label Matching (pipeline/semples/phases/match.py)."""
from pipeline.semples.seed_eval import SECTIONS as SEED_EVAL
from pipeline.weights import clip_weights
from stages.contract import Stage

STAGE = Stage(name="match", gpu=True, inputs=('prepare_data', 'train_cam'),
              sections=('mask_generator', 'clip', 'match', 'run.seed') + SEED_EVAL, version="3",
              run="pipeline.semples.phases.match:run", weights=lambda cfg: clip_weights(cfg.clip), distributed=True)
