"""pseudo_masks: CAM seeds -> pseudo masks (issue 4)."""
NAME = "pseudo_masks"
INPUTS = ('prepare_data', 'export_cams', 'refine')
SECTIONS = ('pseudo_masks',)
VERSION = "0"


def run(cfg, inputs, out):
    raise NotImplementedError("stage 'pseudo_masks' is not implemented yet")
