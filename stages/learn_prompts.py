"""learn_prompts: phase 2, Contrastive Prompt Learning (issue 3)."""
NAME = "learn_prompts"
INPUTS = ('prepare_data', 'match')
SECTIONS = ('mask_generator', 'clip', 'learn_prompts', 'run.seed')
VERSION = "0"


def run(cfg, inputs, out):
    raise NotImplementedError("stage 'learn_prompts' is not implemented yet")
