"""pseudo_masks: CAM seeds of the exported split -> label PNGs, one folder per route
(pipeline/pseudo_masks/routes/): cfg.pseudo_masks.method is the route
train_segmentation trains on, each of extra_methods a further one that evaluate scores
beside it; with coco_json also the trained route as COCO JSON. Layout:
pipeline/artifacts.py MaskArtifact; the work: pipeline/pseudo_masks/make.py."""
from pipeline.artifacts import cam_stage
from pipeline.pseudo_masks import routes
from stages.contract import Stage

WORK = "pipeline.pseudo_masks.make"


def inputs(cfg) -> tuple[str, ...]:
    """prepare_data, the CAMs, the mask generator that made them (the attention routes use its
    attention), and the further inputs of the run's routes. Imported CAMs (export_cams.source:
    import) come from import_cams and have no mask generator."""
    extra = [i for m in cfg.pseudo_masks.routes for i in routes.get(m).inputs]
    model = () if cfg.export_cams.source == "import" else (cfg.export_cams.source,)
    return ('prepare_data', cam_stage(cfg)) + model + tuple(dict.fromkeys(extra))


STAGE = Stage(name="pseudo_masks", gpu=True, inputs=inputs, run=f"{WORK}:run", items=f"{WORK}:items",
              run_shard=f"{WORK}:run_shard", finalize=f"{WORK}:finalize", per_image=f"{WORK}:per_image",
              # the CAMs' split and the mask generator behind them (attention routes)
              sections=("pseudo_masks", "export_cams.split", "export_cams.source"),
              # 6: SAM seeding in float32 (as the official anns_seed)
              version="6")
