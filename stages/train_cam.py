"""train_cam: classification warm start of the mask generator S (issue 3)."""
NAME = "train_cam"
INPUTS = ('prepare_data',)
SECTIONS = ('mask_generator', 'train_cam', 'run.seed')
VERSION = "1"


def run(cfg, inputs, out):
    from stages.launch import maybe_launch
    metrics = maybe_launch(NAME, cfg, inputs, out)  # torchrun fan-out when run.nproc_per_node > 1
    if metrics is not None:
        return metrics
    from pipeline.semples import run_train_cam
    return run_train_cam(cfg, inputs, out)

