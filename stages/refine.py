"""refine: phase 3, Prompt-guided Semantic Refinement (issue 3)."""
NAME = "refine"
INPUTS = ('prepare_data', 'train_cam', 'match', 'learn_prompts')
SECTIONS = ('mask_generator', 'clip', 'refine', 'run.seed')
VERSION = "0"


def run(cfg, inputs, out):
    raise NotImplementedError("stage 'refine' is not implemented yet")
