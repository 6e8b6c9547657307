"""export_cams: multi-scale + flip CAMs of the mask generator of stage
cfg.export_cams.source (default refine: full SemPLeS) over cfg.export_cams.split,
one zarr v3 group per split (pipeline/artifacts.py CamArtifact). Per-image stage;
the work: pipeline/cams/export.py."""
from stages.contract import Stage

WORK = "pipeline.cams.export"


def inputs(cfg) -> tuple[str, ...]:
    """prepare_data and the training stage whose mask generator makes the CAMs (source 'import':
    no training stage; the run reads import_cams' CAMs instead and never runs this stage)."""
    if cfg.export_cams.source == "import":
        return ('prepare_data', 'import_cams')
    return ('prepare_data', cfg.export_cams.source)


STAGE = Stage(name="export_cams", gpu=True, inputs=inputs, sections=("mask_generator", "export_cams"),
              run=f"{WORK}:run", items=f"{WORK}:items", run_shard=f"{WORK}:run_shard",
              finalize=f"{WORK}:finalize", per_image=f"{WORK}:per_image",
              version="4")  # 4: the store holds the patch-grid CAMs (layout "grid"), read as float32 maps
