"""train_cam: classification warm start of the mask generator S (pipeline/semples/phases.py)."""
from pipeline.semples.seed_eval import SECTIONS as SEED_EVAL
from pipeline.weights import timm_weights
from stages.contract import Stage


def run(cfg, inputs, out):
    from pipeline.semples.phases import run_train_cam
    return run_train_cam(cfg, inputs, out)


STAGE = Stage(name="train_cam", inputs=('prepare_data',),
              sections=('mask_generator', 'train_cam', 'run.seed') + SEED_EVAL, version="3", run=run,
              weights=lambda cfg: timm_weights(cfg.mask_generator, cfg.train_cam.init_checkpoint),
              distributed=True)  # torchrun fan-out when run.nproc_per_node > 1
