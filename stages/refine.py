"""refine: phase 3, Prompt-guided Semantic Refinement (issue 3)."""
NAME = "refine"
INPUTS = ('prepare_data', 'train_cam', 'match', 'learn_prompts')
SECTIONS = ('mask_generator', 'clip', 'refine', 'run.seed')
VERSION = "1"


def run(cfg, inputs, out):
    from stages.launch import maybe_launch
    metrics = maybe_launch(NAME, cfg, inputs, out)  # torchrun fan-out when run.nproc_per_node > 1
    if metrics is not None:
        return metrics
    from pipeline.semples import run_refine
    return run_refine(cfg, inputs, out)

