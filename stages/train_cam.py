"""train_cam: classification warm start of the mask generator S (issue 3)."""
from stages.contract import Stage

# the training images (data.train_split) and the per-epoch seed evaluation: its split
# (data.eval_split, else train_split) and the CAM it scores (export_cams.cam), which
# with select gt_miou choose the weights kept
SEED_EVAL = ('data.train_split', 'data.eval_split', 'export_cams.cam')


def run(cfg, inputs, out):
    from pipeline.semples import run_train_cam
    return run_train_cam(cfg, inputs, out)


def sections(cfg):
    """run.seed only when it trains: an imported warm start (train_cam.init_checkpoint) involves no
    randomness, so every seed of a multi-seed run shares it (and CAMs exported from it)."""
    return ('mask_generator', 'train_cam') + (() if cfg.train_cam.init_checkpoint else ('run.seed',)) + SEED_EVAL


STAGE = Stage(name="train_cam", inputs=('prepare_data',), sections=sections,
              version="3",  # 2: declares the data split and export_cams.cam its seed evaluation reads; 3: official warm start (feature fusion, uniform weight decay; train_cam.recipe)
              run=run, distributed=True)  # torchrun fan-out when run.nproc_per_node > 1
