"""prepare_data: validate the dataset tree and write the label tables
(pipeline/artifacts.py DataArtifact); the work: pipeline/data/prepare.py."""
from pipeline.data.prepare import input_files, run
from stages.contract import Stage

STAGE = Stage(name="prepare_data", inputs=(), sections=("data",), run=run, input_files=input_files, version="3")
