"""match: phase 1, Segment-Label Matching (issue 3)."""
from stages.contract import Stage
from stages.train_cam import SEED_EVAL


def run(cfg, inputs, out):
    from pipeline.semples import run_match
    return run_match(cfg, inputs, out)


STAGE = Stage(name="match", inputs=('prepare_data', 'train_cam'),
              sections=('mask_generator', 'clip', 'match', 'run.seed') + SEED_EVAL,
              version="3",  # 2: declares the data split and export_cams.cam its seed evaluation reads; 3: starts from the warm start's trained fusion, official early-stopping sweep
              run=run, distributed=True)  # torchrun fan-out when run.nproc_per_node > 1
