"""sam_masks: SAM's automatic masks of every image of cfg.sam.split with FMA-WSSS's
settings, one JSON file per image (pipeline/artifacts.py SamArtifact), which the
pseudo-mask route sam labels from the CAMs. Needs prepare_data only, so the DAG runs
it beside the training phases. Per-image stage; the work: pipeline/sam/masks.py."""
from stages.contract import Stage

WORK = "pipeline.sam.masks"


def weights(cfg):
    from pipeline.sam.generator import hub_weights
    return hub_weights(cfg.sam)


STAGE = Stage(name="sam_masks", gpu=True, inputs=("prepare_data",), sections=("sam",), version="1",
              run=f"{WORK}:run", items=f"{WORK}:items", run_shard=f"{WORK}:run_shard", finalize=f"{WORK}:finalize",
              weights=weights, per_image=f"{WORK}:per_image")
