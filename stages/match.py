"""match: phase 1, Segment-Label Matching (issue 3)."""
NAME = "match"
INPUTS = ('prepare_data', 'train_cam')
SECTIONS = ('mask_generator', 'clip', 'match', 'run.seed')
VERSION = "0"


def run(cfg, inputs, out):
    raise NotImplementedError("stage 'match' is not implemented yet")
