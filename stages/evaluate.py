"""evaluate: mIoU tables and plots (issues 4, 5)."""
NAME = "evaluate"
INPUTS = ('prepare_data', 'export_cams', 'pseudo_masks', 'train_segmentation')
SECTIONS = ('evaluate',)
VERSION = "0"


def run(cfg, inputs, out):
    raise NotImplementedError("stage 'evaluate' is not implemented yet")
