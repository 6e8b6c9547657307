"""refine: phase 3, Prompt-guided Semantic Refinement (issue 3)."""
NAME = "refine"
INPUTS = ('prepare_data', 'train_cam', 'match', 'learn_prompts')
SECTIONS = ('mask_generator', 'clip', 'refine', 'run.seed')
VERSION = "2"  # 2: starts from the warm start's trained fusion (every key loaded); prompt period id 13


def run(cfg, inputs, out):
    from stages.launch import run_training  # torchrun fan-out when run.nproc_per_node > 1
    return run_training(NAME, cfg, inputs, out)
