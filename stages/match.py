"""match: phase 1, Segment-Label Matching (issue 3)."""
NAME = "match"
INPUTS = ('prepare_data', 'train_cam')
SECTIONS = ('mask_generator', 'clip', 'match', 'run.seed')
VERSION = "1"


def run(cfg, inputs, out):
    from stages.launch import maybe_launch
    metrics = maybe_launch(NAME, cfg, inputs, out)  # torchrun fan-out when run.nproc_per_node > 1
    if metrics is not None:
        return metrics
    from pipeline.semples import run_match
    return run_match(cfg, inputs, out)

