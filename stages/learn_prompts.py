"""learn_prompts: phase 2, Contrastive Prompt Learning (issue 3)."""
from stages.contract import Stage


def run(cfg, inputs, out):
    from pipeline.semples import run_learn_prompts
    return run_learn_prompts(cfg, inputs, out)


STAGE = Stage(name="learn_prompts", inputs=('prepare_data', 'match'),
              sections=('mask_generator', 'clip', 'learn_prompts', 'run.seed', 'data.train_split'),
              version="3",  # 2: declares data.train_split; 3: starts from the warm start's trained fusion (every key loaded), prompt period id 13
              run=run, distributed=True)  # torchrun fan-out when run.nproc_per_node > 1
