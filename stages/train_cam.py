"""train_cam: classification warm start of the mask generator S (issue 3)."""
NAME = "train_cam"
INPUTS = ('prepare_data',)
SECTIONS = ('mask_generator', 'train_cam', 'run.seed')
VERSION = "0"


def run(cfg, inputs, out):
    raise NotImplementedError("stage 'train_cam' is not implemented yet")
