"""refine: phase 3, Prompt-guided Semantic Refinement (pipeline/semples/phases/refine.py)."""
from pipeline.semples.seed_eval import SECTIONS as SEED_EVAL
from pipeline.weights import clip_weights
from stages.contract import Stage

STAGE = Stage(name="refine", gpu=True, inputs=('prepare_data', 'train_cam', 'match', 'learn_prompts'),
              sections=('mask_generator', 'clip', 'refine', 'run.seed') + SEED_EVAL, version="3",
              run="pipeline.semples.phases.refine:run", weights=lambda cfg: clip_weights(cfg.clip), distributed=True)
