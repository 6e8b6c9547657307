"""export_cams: multi-scale CAM export to zarr (issue 4)."""
NAME = "export_cams"
INPUTS = ('prepare_data', 'refine')
SECTIONS = ('mask_generator', 'export_cams')
VERSION = "0"


def run(cfg, inputs, out):
    raise NotImplementedError("stage 'export_cams' is not implemented yet")
