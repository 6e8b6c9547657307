"""sam_masks: SAM's automatic masks of every image of cfg.sam.split with FMA-WSSS's
settings, one JSON file per image (pipeline/artifacts.py SamArtifact), which the
pseudo-mask route sam labels from the CAMs. Needs prepare_data only, so the DAG runs
it beside the training phases. Per-image stage; the work: pipeline/sam/masks.py."""
from pipeline.sam.masks import finalize, items, per_image, run, run_shard
from stages.contract import Stage


def weights(cfg):
    from pipeline.sam.generator import hub_weights
    return hub_weights(cfg.sam)


STAGE = Stage(name="sam_masks", gpu=True, inputs=("prepare_data",), sections=("sam",), version="1",
              run=run, items=items, run_shard=run_shard, finalize=finalize, weights=weights,
              per_image=per_image)
