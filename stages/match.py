"""match: phase 1, Segment-Label Matching (issue 3)."""
NAME = "match"
INPUTS = ('prepare_data', 'train_cam')
SECTIONS = ('mask_generator', 'clip', 'match', 'run.seed')
VERSION = "2"  # 2: starts from the warm start's trained fusion (every key loaded)


def run(cfg, inputs, out):
    from stages.launch import run_training  # torchrun fan-out when run.nproc_per_node > 1
    return run_training(NAME, cfg, inputs, out)
