"""refine: phase 3, Prompt-guided Semantic Refinement (issue 3)."""
from stages.contract import Stage
from stages.train_cam import SEED_EVAL


def run(cfg, inputs, out):
    from pipeline.semples import run_refine
    return run_refine(cfg, inputs, out)


STAGE = Stage(name="refine", inputs=('prepare_data', 'train_cam', 'match', 'learn_prompts'),
              sections=('mask_generator', 'clip', 'refine', 'run.seed') + SEED_EVAL,
              version="3",  # 2: declares the data split and export_cams.cam its seed evaluation reads; 3: trained fusion inherited, prompt period id 13, official early-stopping sweep
              run=run, distributed=True)  # torchrun fan-out when run.nproc_per_node > 1
