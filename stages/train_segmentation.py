"""train_segmentation: mmseg segmentation model (issue 5)."""
NAME = "train_segmentation"
INPUTS = ('prepare_data', 'pseudo_masks')
SECTIONS = ('data', 'train_segmentation', 'run.seed')
VERSION = "0"


def run(cfg, inputs, out):
    raise NotImplementedError("stage 'train_segmentation' is not implemented yet")
