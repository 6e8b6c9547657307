"""The rules across config sections (pipeline/config/rules.py), one test each: a config that
breaks the rule is refused with the rule's message, naming the field(s) and the file that set them."""
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline.pseudo_masks import routes
from pipeline.config import RULES, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def refused(tmp_path: Path, overrides: dict, base: str = "voc-smoke.yaml") -> tuple[str, str]:
    """(error message, the child file) of a config = base + overrides, which must be refused."""
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_base_": str(CONFIGS / base), **overrides}))
    with pytest.raises(ConfigError) as e:
        load_config(child, check_paths=False)
    return str(e.value), str(child)


def test_every_rule_has_a_docstring_and_a_test():
    tests = {n for n in globals() if n.startswith("test_")}
    for rule in RULES:
        assert rule.__doc__, rule.__name__
        assert f"test_{rule.__name__}" in tests, rule.__name__


def test_coco_splits_name_images_and_annotations(tmp_path):
    msg, child = refused(tmp_path, {"data": {"dataset": "coco", "splits": {"train": {"images": "imgs"}}}})
    assert f"{child}: data.splits.train: COCO needs 'images' and 'annotations'" in msg


def test_learn_prompts_keeps_last_epoch(tmp_path):
    msg, child = refused(tmp_path, {"learn_prompts": {"seed_eval_every": 2}})
    assert f"{child}: learn_prompts.select / learn_prompts.seed_eval_every: phase 2 trains the prompts only" in msg


def test_seed_eval_split_has_ground_truth(tmp_path):
    msg, child = refused(tmp_path, {"match": {"seed_eval_every": 1, "seed_eval_split": "nosuch"}})
    assert f"{child}: match.seed_eval_split: 'nosuch' is not a split with ground truth" in msg


def test_export_cams_source_is_a_phase_with_cams(tmp_path):
    msg, child = refused(tmp_path, {"export_cams": {"source": "learn_prompts"}})
    assert (f"{child}: export_cams.source: 'learn_prompts' is neither a training phase that makes CAMs "
            "(train_cam, match, refine) nor 'import'") in msg


def test_folder_dataset_names_classes(tmp_path):
    msg, child = refused(tmp_path, {"data": {"dataset": "folder"}})
    assert f"{child}: data.classes: a folder dataset needs a class list file" in msg


def test_folder_splits_name_labels(tmp_path):
    msg, child = refused(tmp_path, {"data": {"splits": {"val": {"labels": None}}}}, base="folder-smoke.yaml")
    assert f"{child}: data.splits.val: a folder dataset needs 'labels'" in msg


def test_published_datasets_have_val_split(tmp_path):
    msg, child = refused(tmp_path, {"data": {"val_split": None}})
    assert f"{child}: data.val_split: VOC/COCO need a val split" in msg


def test_sam_masks_share_export_split(tmp_path):
    msg, child = refused(tmp_path, {"pseudo_masks": {"extra_methods": ["sam"]}, "sam": {"split": "val"}})
    assert f"{child}: sam.split 'val' must equal export_cams.split 'train'" in msg


def test_ensemble_routes_are_extra_methods(tmp_path):
    msg, child = refused(tmp_path, {"ensemble": {"routes": ["argmax"]}})
    assert f"{child}: ensemble.routes: ['argmax'] not in pseudo_masks.extra_methods []" in msg


def test_ensemble_has_val_split(tmp_path):
    msg, child = refused(tmp_path, {"data": {"val_split": None}, "pseudo_masks": {"extra_methods": ["crf"]},
                                    "ensemble": {"routes": ["crf"]}}, base="folder-smoke.yaml")
    assert f"{child}: ensemble.routes: the blend is scored on the val split; data.val_split is null" in msg


def test_imported_cams_name_their_folder(tmp_path):
    msg, child = refused(tmp_path, {"export_cams": {"source": "import"}})
    assert f"{child}: export_cams.source 'import' needs import_cams.dir" in msg


def test_imported_cams_take_no_attention_routes(tmp_path, monkeypatch):
    imported = {"export_cams": {"source": "import"}, "import_cams": {"dir": "cams"}}
    msg, child = refused(tmp_path, {**imported, "pseudo_masks": {"extra_methods": ["affinity"]}})
    assert (f"{child}: pseudo_masks.extra_methods: pseudo_masks routes ['affinity'] walk the mask generator's "
            "attention") in msg
    assert "use a route without attention: sam, argmax, crf" in msg  # the registry's order
    # the route's record decides, not its name: crf declared as walking the attention is refused too
    monkeypatch.setitem(routes.ROUTES, "crf", replace(routes.ROUTES["crf"], attention=True))
    msg, _ = refused(tmp_path, imported)
    assert f"{CONFIGS / 'voc-smoke.yaml'}: pseudo_masks.method: pseudo_masks routes ['crf'] walk" in msg


def test_predict_split_is_a_data_split(tmp_path):
    msg, child = refused(tmp_path, {"train_segmentation": {"predict_split": "nosuch"}})
    assert f"{child}: train_segmentation.predict_split: 'nosuch' is none of the data splits" in msg


def test_a_rule_names_the_base_file_that_set_its_field(tmp_path):
    """The file named is the one that set the rule's field, here a base, not the file loaded."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"_base_": str(CONFIGS / "voc-smoke.yaml"),
                                    "train_segmentation": {"predict_split": "nosuch"}}))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "run": {"name": "x"}}))
    with pytest.raises(ConfigError, match=f"{base}: train_segmentation.predict_split"):
        load_config(child, check_paths=False)
