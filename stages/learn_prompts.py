"""learn_prompts: phase 2, Contrastive Prompt Learning (issue 3)."""
NAME = "learn_prompts"
INPUTS = ('prepare_data', 'match')
SECTIONS = ('mask_generator', 'clip', 'learn_prompts', 'run.seed')
VERSION = "1"


def run(cfg, inputs, out):
    from stages.launch import maybe_launch
    metrics = maybe_launch(NAME, cfg, inputs, out)  # torchrun fan-out when run.nproc_per_node > 1
    if metrics is not None:
        return metrics
    from pipeline.semples import run_learn_prompts
    return run_learn_prompts(cfg, inputs, out)

