"""A key given twice in one YAML mapping is an error of the config loader, naming file, key and
line (YAML would keep the last silently), and `wsss init-dataset --tiny` writes each key once (#38)."""
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, UniqueKeyLoader, load_config
from pipeline.data.init_dataset import init_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, key, line, first", [
    ("run:\n  name: a\ndata:\n  dataset: voc\nrun:\n  name: b\n", "run", 5, 1),
    ("data:\n  dataset: voc\n  root: x\n  root: y\n", "root", 4, 3),
])
def test_the_loader_refuses_a_key_given_twice(tmp_path, text, key, line, first):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(cfg, check_paths=False)
    assert f"{cfg}: line {line}: key '{key}' is given twice in one mapping (first on line {first})" in str(e.value)


def test_the_same_key_in_different_mappings_is_fine():
    assert yaml.load("a: {x: 1}\nb: {x: 2}\n", Loader=UniqueKeyLoader) == {"a": {"x": 1}, "b": {"x": 2}}


@pytest.mark.parametrize("tiny", [False, True], ids=["defaults", "tiny"])
def test_init_dataset_writes_each_key_once(tmp_path, tiny):
    d = tmp_path / "pets"
    (d / "images").mkdir(parents=True)
    jpg = sorted((ROOT / "data/coco-tiny/images/train2017").glob("*.jpg"))[0]
    shutil.copy(jpg, d / "images" / jpg.name)
    (d / "labels.csv").write_text(f"image,labels\n{jpg.name},dog\n")
    out = tmp_path / "configs/pets.yaml"
    init_dataset(d, out, tiny=tiny)
    raw = yaml.load(out.read_text(), Loader=UniqueKeyLoader)  # raises on a key given twice
    assert raw["run"]["name"] == "pets" and raw["run"]["work_dir"] == "runs/pets"
    cfg = load_config(out)
    assert (cfg.run.name, str(cfg.run.work_dir)) == ("pets", "runs/pets")
    assert cfg.run.num_workers == (0 if tiny else 8) and cfg.train_segmentation.tiny == tiny
