"""train_cam: classification warm start of the mask generator S (issue 3)."""
NAME = "train_cam"
INPUTS = ('prepare_data',)
SECTIONS = ('mask_generator', 'train_cam', 'run.seed')
VERSION = "2"  # 2: official warm start (feature fusion, uniform weight decay; train_cam.recipe)


def run(cfg, inputs, out):
    from stages.launch import run_training  # torchrun fan-out when run.nproc_per_node > 1
    return run_training(NAME, cfg, inputs, out)
