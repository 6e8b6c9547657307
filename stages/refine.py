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


if __name__ == "__main__":
    from stages.runner import run_stage
    from pipeline.config import load_config
    import logging
    import sys
    logging.basicConfig(level=logging.INFO)
    run_stage(load_config(sys.argv[1]), NAME, force="--force" in sys.argv)
