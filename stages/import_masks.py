"""import_masks: pseudo masks made by another code base (a folder of <image id>.png label maps
of data.train_split) as this pipeline's mask layout (pipeline/artifacts.py
ImportedMaskArtifact), which train_segmentation trains on and evaluate scores when
import_masks.dir is set. The key covers the folder's fingerprint. The work:
pipeline/pseudo_masks/imported.py."""
from stages.contract import Stage

WORK = "pipeline.pseudo_masks.imported"

STAGE = Stage(name="import_masks", inputs=("prepare_data",), sections=("import_masks", "data.train_split"),
              run=f"{WORK}:run", fingerprint=f"{WORK}:fingerprint", version="1")
