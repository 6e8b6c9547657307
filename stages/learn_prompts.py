"""learn_prompts: phase 2, Contrastive Prompt Learning (issue 3)."""
NAME = "learn_prompts"
INPUTS = ('prepare_data', 'match')
SECTIONS = ('mask_generator', 'clip', 'learn_prompts', 'run.seed')
VERSION = "2"  # 2: starts from the warm start's trained fusion (every key loaded); prompt period id 13


def run(cfg, inputs, out):
    from stages.launch import run_training  # torchrun fan-out when run.nproc_per_node > 1
    return run_training(NAME, cfg, inputs, out)
