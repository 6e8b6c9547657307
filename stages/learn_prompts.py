"""learn_prompts: phase 2, Contrastive Prompt Learning (pipeline/semples/phases/learn_prompts.py)."""
from pipeline.weights import clip_weights
from stages.contract import Stage

STAGE = Stage(name="learn_prompts", gpu=True, inputs=('prepare_data', 'match'),
              sections=('mask_generator', 'clip', 'learn_prompts', 'run.seed', 'data.train_split'), version="3",
              run="pipeline.semples.phases.learn_prompts:run", weights=lambda cfg: clip_weights(cfg.clip),
              distributed=True)
