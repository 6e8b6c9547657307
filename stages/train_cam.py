"""train_cam: classification warm start of the mask generator S (pipeline/semples/phases/train_cam.py)."""
from pipeline.semples.seed_eval import SECTIONS as SEED_EVAL
from pipeline.weights import timm_weights
from stages.contract import Stage


def sections(cfg):
    """run.seed only when it trains: an imported warm start (train_cam.init_checkpoint) involves no
    randomness, so every seed of a multi-seed run shares it (and CAMs exported from it)."""
    return ('mask_generator', 'train_cam') + (() if cfg.train_cam.init_checkpoint else ('run.seed',)) + SEED_EVAL


STAGE = Stage(name="train_cam", gpu=True, inputs=('prepare_data',), sections=sections, version="3",
              run="pipeline.semples.phases.train_cam:run",
              weights=lambda cfg: timm_weights(cfg.mask_generator, cfg.train_cam.init_checkpoint),
              distributed=True)  # torchrun fan-out when run.nproc_per_node > 1
