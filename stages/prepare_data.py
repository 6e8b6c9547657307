"""prepare_data: validate the dataset tree and write the label tables
(pipeline/artifacts.py DataArtifact), then check the image sizes the CAM export can handle;
the work: pipeline/data/prepare.py."""
from stages.contract import Stage

WORK = "pipeline.data.prepare"

STAGE = Stage(name="prepare_data", inputs=(), sections=("data",), run=f"{WORK}:run",
              input_files=f"{WORK}:input_files", version="3", per_image=f"{WORK}:per_image",
              check=f"{WORK}:check_image_sizes")
