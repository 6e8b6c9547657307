"""pseudo_masks: CAM seeds of the exported split -> label PNGs, one folder per route
(pipeline/pseudo_masks/routes/): cfg.pseudo_masks.method is the route
train_segmentation trains on, each of extra_methods a further one that evaluate scores
beside it; with coco_json also the trained route as COCO JSON. Layout:
pipeline/artifacts.py MaskArtifact; the work: pipeline/pseudo_masks/make.py."""
from pipeline.pseudo_masks.make import finalize, inputs, items, per_image, run, run_shard
from stages.contract import Stage

STAGE = Stage(name="pseudo_masks", gpu=True, inputs=inputs, run=run, items=items, run_shard=run_shard,
              finalize=finalize,
              per_image=per_image,
              # the CAMs' split and the mask generator behind them (attention routes)
              sections=("pseudo_masks", "export_cams.split", "export_cams.source"),
              # 6: SAM seeding in float32 (as the official anns_seed)
              version="6")
