"""prepare_data: validate the dataset tree and write the label tables
(pipeline/artifacts.py DataArtifact), then check the image sizes the CAM export can handle;
the work: pipeline/data/prepare.py."""
from pipeline.data.prepare import check_image_sizes, input_files, per_image, run
from stages.contract import Stage

STAGE = Stage(name="prepare_data", inputs=(), sections=("data",), run=run, input_files=input_files, version="3",
              per_image=per_image, check=check_image_sizes)
