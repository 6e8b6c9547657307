"""import_cams: CAMs made by another code base (a folder of per-image files in the format
cfg.import_cams.format, pipeline/cams/formats/) as this pipeline's CAM artifact
(pipeline/artifacts.py ImportedCamArtifact), read by pseudo_masks and evaluate when
export_cams.source is 'import'. The key covers the folder's fingerprint. The work:
pipeline/cams/importer.py."""
from pipeline.cams.formats import folder_fingerprint, get_format
from stages.contract import Stage


def fingerprint(cfg) -> str:
    ic = cfg.import_cams
    return folder_fingerprint(ic.dir, [get_format(ic.format).suffix], ic.hash)


STAGE = Stage(name="import_cams", inputs=("prepare_data",), sections=("import_cams", "export_cams.split"),
              run="pipeline.cams.importer:run", per_image="pipeline.cams.importer:per_image",
              fingerprint=fingerprint, version="1")
