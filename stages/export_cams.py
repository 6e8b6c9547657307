"""export_cams: multi-scale + flip CAMs of the mask generator of stage
cfg.export_cams.source (default refine: full SemPLeS) over cfg.export_cams.split,
one zarr v3 group per split (pipeline/artifacts.py CamArtifact). Per-image stage;
the work: pipeline/cams/export.py."""
from pipeline.cams.export import finalize, inputs, items, per_image, run, run_shard
from stages.contract import Stage

STAGE = Stage(name="export_cams", gpu=True, inputs=inputs, sections=("mask_generator", "export_cams"), run=run,
              items=items, run_shard=run_shard, finalize=finalize, per_image=per_image,
              version="4")  # 4: the store holds the patch-grid CAMs (layout "grid"), read as float32 maps
