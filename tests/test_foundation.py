"""Configs, data checks on corrupted copies of the tiny data, eval-masks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import ConfigError, load_config
from pipeline.data.datasets import LabelTable, read_mask, write_mask
from pipeline.evaluation.metrics import confusion, scores

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ configs
def write_cfg(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_base_inheritance_overrides_only_named_keys(tmp_path):
    base = write_cfg(tmp_path, "data: {dataset: voc, root: %s}\nmatch: {lambda_b: 1.0, epochs: 7}\n"
                     % (ROOT / "data/voc-tiny"), "base.yaml")
    child = write_cfg(tmp_path, f"_base_: {base.name}\nmatch: {{lambda_b: 3.0}}\n")
    cfg = load_config(child)
    assert cfg.match.lambda_b == 3.0 and cfg.match.epochs == 7


def test_shipped_configs_load_with_paper_values():
    smoke = load_config(ROOT / "configs/voc-smoke.yaml")
    assert smoke.data.root == Path("data/voc-tiny")
    full = load_config(ROOT / "configs/voc-full.yaml", overrides={"data": {"root": str(ROOT / "data/voc-tiny")}})
    assert (full.match.lambda_b, full.learn_prompts.lambda_t, full.refine.lambda_refine) == (2.4, 0.02, 0.05)
    assert (full.match.batch_size, full.learn_prompts.lr, full.learn_prompts.n_prompts) == (64, 0.1, 30)
    assert full.clip.pretrained == "openai" and full.export_cams.scales == [1.0, 1.2]
    coco = load_config(ROOT / "configs/coco-full.yaml", overrides={"data": {"root": str(ROOT / "data/coco-tiny")}})
    assert (coco.match.lambda_b, coco.learn_prompts.lambda_t, coco.refine.lambda_refine) == (0.75, 0.01, 0.2)
    assert coco.export_cams.scales == [1.0, 0.8, 1.2]


@pytest.mark.parametrize("text,needle", [
    ("match: {lamda_b: 1.0}\n", "match.lamda_b"),            # misspelled key
    ("match: {epochs: many}\n", "match.epochs"),             # wrong type
    ("clip: {pretrained: /no/such/clip.pt}\n", "clip.pretrained"),  # missing checkpoint
    ("data: {root: /no/such/root}\n", "data.root"),          # missing dataset
])
def test_bad_config_names_file_and_key(tmp_path, text, needle):
    p = write_cfg(tmp_path, f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\n" + text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value) and str(p) in str(e.value)


def test_bad_key_in_base_names_the_base_file(tmp_path):
    base = write_cfg(tmp_path, f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\nrefine: {{bogus: 1}}\n", "base.yaml")
    child = write_cfg(tmp_path, "_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: refine\.bogus"):
        load_config(child)


# ------------------------------------------------------------------ data check
def test_data_check_smoke_counts():
    res = invoke("data", "check", "--config", ROOT / "configs/voc-smoke.yaml")
    assert res.exit_code == 0, res.output
    assert "train: 70 images" in res.output and "val: 89 images" in res.output
    assert "person=47" in res.output


@pytest.fixture
def voc_copy(tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(ROOT / "data/voc-tiny", root)
    cfg = write_cfg(tmp_path, f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\ndata: {{root: {root}}}\n")
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    return root, cfg, ids


def _corrupt(kind, root, ids):
    i = ids[3]
    img, mask = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
    if kind == "missing image":
        img.unlink()
        return img
    if kind == "missing mask":
        mask.unlink()
        return mask
    if kind == "truncated image":
        img.write_bytes(img.read_bytes()[:2000])
        return img
    m = read_mask(mask)
    if kind == "mask size":
        write_mask(mask, m[:-8])
    elif kind == "label out of range":
        m[:4, :4] = 40
        write_mask(mask, m)
    elif kind == "no labels":
        write_mask(mask, np.where(m == 255, 255, 0).astype(np.uint8))
    return mask


@pytest.mark.parametrize("kind", ["missing image", "missing mask", "truncated image", "mask size",
                                  "label out of range", "no labels"])
def test_data_check_reports_bad_item(voc_copy, kind):
    root, cfg, ids = voc_copy
    bad = _corrupt(kind, root, ids)
    res = invoke("data", "check", "--config", cfg)
    assert res.exit_code == 1
    assert str(bad) in res.output, res.output


def test_data_check_empty_split(voc_copy):
    root, cfg, _ = voc_copy
    (root / "ImageSets/Segmentation/train.txt").write_text("")
    res = invoke("data", "check", "--config", cfg)
    assert res.exit_code == 1 and "split is empty" in res.output


def test_prepare_data_refuses_bad_data_and_writes_no_table(voc_copy, tmp_path):
    from stages.runner import run_stage, stage_keys
    from pipeline.store import Store
    from pipeline.data.datasets import DataError
    root, cfg_path, ids = voc_copy
    bad = _corrupt("label out of range", root, ids)
    cfg = load_config(cfg_path, overrides={"run": {"work_dir": str(tmp_path / "runs")}})
    with pytest.raises(DataError, match=str(bad)):
        run_stage(cfg, "prepare_data")
    key = stage_keys(cfg)["prepare_data"]
    assert Store(cfg.run.work_dir).state(key) == "partial"
    assert not list(Store(cfg.run.work_dir).path(key).glob("labels_*.json"))


def test_label_table_labels_come_from_masks(prepared):
    table = LabelTable.from_artifact(prepared, "train")
    assert len(table) == 70
    r = table.records[0]
    assert r.labels == sorted(int(c) for c in np.unique(read_mask(r.mask)) if 0 < c < 21)
    assert table.multi_hot().shape == (70, 20)


def test_coco_reader_renders_semantic_masks(tmp_path):
    cfg = load_config(ROOT / "configs/coco-full.yaml", overrides={
        "data": {"root": str(ROOT / "data/coco-tiny"), "splits": {
            "train": {"images": "images/train2017", "annotations": "annotations/instances_train2017.json"},
            "val": {"images": "images/val2017", "annotations": "annotations/instances_val2017.json"}}},
        "run": {"work_dir": str(tmp_path / "runs")}})
    from stages.runner import run_stage
    out = run_stage(cfg, "prepare_data")
    table = LabelTable.from_artifact(out, "train")
    assert 0 < len(table) <= 100
    for r in table.records[:10]:
        m = read_mask(r.mask)
        assert m.shape == (r.height, r.width)
        # official rendering: every rendered class is an image label, crowd regions included
        assert set(r.labels) >= {int(c) for c in np.unique(m) if 0 < c < 81} and 255 not in m
        assert r.labels and max(r.labels) <= 80
    res = invoke("data", "check", "--config", ROOT / "configs/coco-full.yaml")
    assert res.exit_code == 2 and "data.root" in res.output  # data/coco is not shipped


# ------------------------------------------------------------------ metrics
def test_confusion_matrix_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 2]], np.uint8)
    cm, missed = confusion(pred, gt, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 0], [1, 0, 1]])
    s = scores(cm, missed)
    # IoU0 = 2/(3+3-2)=.5, IoU1 = 2/(2+3-2)=2/3, IoU2 = 1/(2+1-1)=.5
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3 * 100)
    assert s["pixel_acc"] == pytest.approx(5 / 7 * 100)


def test_eval_masks_cli(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 2]], np.uint8)
    write_mask(gt_dir / "a.png", gt)
    write_mask(pred_dir / "a.png", pred)
    write_mask(gt_dir / "b.png", gt)
    write_mask(pred_dir / "b.png", gt)  # perfect: doubles the diagonal
    res = invoke("eval-masks", "--pred", pred_dir, "--gt", gt_dir, "--num-classes", 3)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # cm = [[2+3,1,0],[0,2+2,0],[1,0,1+2]]
    iou = [5 / (6 + 6 - 5), 4 / (4 + 5 - 4), 3 / (4 + 3 - 3)]
    assert out["miou"] == pytest.approx(np.mean(iou) * 100)
    assert set(out) >= {"miou", "per_class_iou", "pixel_acc"}
    (pred_dir / "b.png").unlink()
    res = invoke("eval-masks", "--pred", pred_dir, "--gt", gt_dir, "--num-classes", 3)
    assert res.exit_code == 1 and "b.png" in res.output
