"""Checkpoint selection and the per-epoch seed evaluation:
the one-pass threshold sweep equals per-threshold confusion matrices, fit()
records a real seed-mIoU curve and keeps the best epoch under gt_miou (also
across a resume), the stages save the selected weights and say which
selection they used, and the config refuses incomplete set-ups."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cams.inference import infer_cams
from pipeline.cams.store import CamStore
from pipeline.config import OFFICIAL_SWEEP, ConfigError, load_config
from pipeline.data.datasets import LabelTable, read_image
from pipeline.evaluation.scores import evaluate_seeds
from pipeline.semples.losses import train_cam_step
from pipeline.evaluation.metrics import Confusion, seed_confusions
from pipeline.models.mask_generator import build_mask_generator, load_mask_generator
from pipeline.evaluation.scores import best_threshold, official_threshold
from pipeline.semples.seed_eval import eval_ids, seed_miou_eval
from pipeline.semples.training import BEST_MODEL, CHECKPOINT, FitSpec, TrainImages, fit
from test_semples_stages import ROOT, history, tiny_cfg


def test_one_pass_sweep_equals_a_confusion_per_threshold():
    rng = np.random.default_rng(0)
    t = np.array(OFFICIAL_SWEEP)
    for _ in range(10):
        h, w = rng.integers(1, 40, 2)
        gt = rng.integers(0, 21, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        fg = rng.integers(1, 21, (h, w))
        # scores exactly at thresholds too: a tie goes to background
        top = rng.choice(np.concatenate([t, rng.random(30), [0.0, 1.0]]).astype(np.float32), (h, w))
        cms = seed_confusions(top, fg, gt, t, 21)
        for i, th in enumerate(t):
            ref = Confusion(21)
            ref.add(np.where(top > float(th), fg, 0), gt)
            assert np.array_equal(cms[i], ref.cm), th


def _train(cfg, table, out, epoch_eval, stop_after=None):
    torch.manual_seed(0)
    model = build_mask_generator(cfg.mask_generator, 20, load_weights=False)
    ds = TrainImages(table, 64, seed=0, ids=table.ids()[:8])
    m = fit(FitSpec(out, cfg.train_cam, 0, ds, model, train_cam_step, torch.device("cpu"), stop_after=stop_after,
                    epoch_eval=epoch_eval))
    return model, m


def test_fit_records_the_real_seed_curve_and_keeps_the_best_epoch(tmp_path, prepared):
    cfg = tiny_cfg(tmp_path, epochs=3)
    cfg.train_cam.select, cfg.train_cam.seed_eval_every, cfg.train_cam.seed_eval_max_images = "gt_miou", 1, 6
    table = LabelTable.from_artifact(prepared, "train")
    real = seed_miou_eval(cfg, "train_cam", prepared, torch.device("cpu"))
    states = []

    def spy(model, epoch):  # the real evaluation; remembers each evaluated epoch's weights
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, epoch)

    out = tmp_path / "fit"
    out.mkdir()
    model, metrics = _train(cfg, table, out, spy)
    curve = [h["seed_miou"] for h in history(out, "train")]
    assert len(curve) == 3 and len(states) == 3 and len(set(curve)) > 1, curve
    best = int(np.argmax(curve))
    assert metrics["selected_epoch"] == best + 1 and metrics["selected_seed_miou"] == curve[best]
    kept = torch.load(out / BEST_MODEL, weights_only=True)
    assert all(torch.equal(kept[k], states[best][k]) for k in kept)
    # the curve's last point is the official evaluation of the final model:
    # scale 1.0 + flip CAMs in a store, swept 0.40..0.59 by evaluate_seeds
    store = CamStore(tmp_path / "cams.zarr", mode="a")
    ids = table.ids()[:6]
    model.eval()
    for i in ids:
        img = read_image(table[i].image)
        store.write(i, infer_cams(model, img, table[i].labels, (1.0,), True), table[i].labels, img.shape[:2])
    res = evaluate_seeds(store, ids, lambda i: table[i].mask, OFFICIAL_SWEEP, 21)
    # the official whole_eval number (stops at the first non-improving threshold) is what the epoch
    # records and selects by; the global maximum stands beside it
    swept = {t: r["miou"] for t, r in res.items()}
    last = history(out, "train")[-1]
    assert official_threshold(swept)[1] == pytest.approx(curve[-1], abs=0.05)  # float16 store
    assert best_threshold(swept)[1] == pytest.approx(last["seed_best_miou"], abs=0.05)
    assert last["seed_best_miou"] >= last["seed_miou"] and last["seed_best_threshold"] >= last["seed_threshold"]
    # the seed-mIoU panel sits next to the loss curve
    assert Image.open(out / "train_history.png").size[0] > 800


def test_resume_keeps_the_best_so_far(tmp_path, prepared):
    cfg = tiny_cfg(tmp_path, epochs=3)
    cfg.train_cam.select, cfg.train_cam.seed_eval_every = "gt_miou", 1
    table = LabelTable.from_artifact(prepared, "train")
    scores = {1: 5.0, 2: 9.0, 3: 3.0}  # best = epoch 2, before the interruption

    def scripted(model, epoch):
        return {"seed_miou": scores[epoch], "seed_threshold": 0.45}

    out = tmp_path / "fit"
    out.mkdir()
    _train(cfg, table, out, scripted, stop_after=2)
    after_two = torch.load(out / CHECKPOINT, weights_only=False)
    assert after_two["best"]["epoch"] == 2
    model, metrics = _train(cfg, table, out, scripted)
    assert metrics["selected_epoch"] == 2 and metrics["selected_seed_miou"] == 9.0
    kept = torch.load(out / BEST_MODEL, weights_only=True)
    assert all(torch.equal(kept[k], after_two["model"][k]) for k in kept)
    assert not all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    assert [h["seed_miou"] for h in history(out, "train")] == [5.0, 9.0, 3.0]


def test_eval_every_n_epochs_and_the_last(tmp_path, prepared):
    cfg = tiny_cfg(tmp_path, epochs=3)
    cfg.train_cam.seed_eval_every = 2
    table = LabelTable.from_artifact(prepared, "train")
    seen = []
    out = tmp_path / "fit"
    out.mkdir()
    _, metrics = _train(cfg, table, out, lambda m, e: seen.append(e) or {"seed_miou": float(e)})
    assert seen == [2, 3] and "selected_epoch" not in metrics and not (out / BEST_MODEL).exists()
    assert [h.get("seed_miou") for h in history(out, "train")] == [None, 2.0, 3.0]


def test_stage_saves_the_selected_weights_and_names_the_selection(tmp_path):
    from stages.runner import run_stage
    cfg = tiny_cfg(tmp_path, epochs=2)
    cfg.train_cam.select, cfg.train_cam.seed_eval_every, cfg.train_cam.seed_eval_max_images = "gt_miou", 1, 4
    run_stage(cfg, "prepare_data")
    d = run_stage(cfg, "train_cam")
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["metrics"]["selection"] == "best epoch by seed mIoU on train (uses ground truth)"
    kept = torch.load(d / BEST_MODEL, weights_only=True)
    saved = load_mask_generator(d / "model.pt", "cpu").state_dict()
    assert all(torch.equal(kept[k], saved[k]) for k in kept)
    assert all("seed_miou" in h for h in history(d, "train_cam"))

    last = tiny_cfg(tmp_path, epochs=2)  # the default: last epoch, no GT involved in the choice
    last.train_cam.seed_eval_every = 0
    d = run_stage(last, "train_cam")
    assert json.loads((d / "manifest.json").read_text())["metrics"]["selection"] == "last epoch (no pixel labels)"
    assert not (d / BEST_MODEL).exists() and not any("seed_miou" in h for h in history(d, "train_cam"))


def test_seed_eval_ids_match_ids_or_their_numeric_suffix(tmp_path, prepared):
    table = LabelTable.from_artifact(prepared, "train")
    a, b = table.ids()[3], table.ids()[5]
    lst = tmp_path / "ids.txt"
    lst.write_text(f"{b.rsplit('_', 1)[-1]}\n{a}\n")  # WeakTr's COCO list holds bare 12-digit ids
    cfg = tiny_cfg(tmp_path)
    cfg.train_cam.seed_eval_ids = lst
    assert eval_ids(cfg, "train_cam", table) == [b, a]
    lst.write_text(f"{a}\nnot_an_id\n")
    with pytest.raises(ValueError, match=r"ids.txt \(train_cam.seed_eval_ids\): 1 of 2 ids .*not_an_id"):
        eval_ids(cfg, "train_cam", table)


@pytest.mark.parametrize("over,match", [
    ({"match": {"select": "gt_miou", "seed_eval_every": 0}}, r"match: .*select 'gt_miou' needs seed_eval_every"),
    ({"refine": {"seed_eval_split": "nope"}}, r"refine.seed_eval_split: 'nope' is not a split"),
    ({"learn_prompts": {"select": "gt_miou", "seed_eval_every": 1}}, r"learn_prompts.select"),
    ({"train_cam": {"seed_eval_ids": "missing/ids.txt"}}, r"train_cam.seed_eval_ids: missing/ids.txt does not exist"),
])
def test_config_refuses_incomplete_selection(over, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ROOT / "configs/voc-smoke.yaml", overrides=over)


def test_full_configs_use_the_official_numbers():
    voc = load_config(ROOT / "configs/voc-full.yaml", overrides={"data": {"root": "data/voc-tiny"}})
    coco = load_config(ROOT / "configs/coco-full.yaml", overrides={"data": {"root": "data/coco-tiny"}})
    assert (voc.pseudo_masks.bg_threshold, voc.evaluate.bg_threshold) == (0.43, 0.43)
    assert (coco.pseudo_masks.bg_threshold, coco.evaluate.bg_threshold) == (0.42, 0.42)
    assert voc.evaluate.sweep == coco.evaluate.sweep == list(OFFICIAL_SWEEP)
    assert OFFICIAL_SWEEP[0] == 0.40 and OFFICIAL_SWEEP[-1] == 0.59 and len(OFFICIAL_SWEEP) == 20
    assert (coco.pseudo_masks.crf.bilateral_sxy, coco.pseudo_masks.crf.bilateral_compat) == (50, 10)
    for c in (voc, coco):
        assert [getattr(c, s).select for s in ("train_cam", "match", "refine")] == ["last"] * 3
        assert c.data.coco_render == "official"


# ------------------------------------------------------------------ COCO ground truth (item 10)
def _coco_with_overlap_and_crowd(tmp_path):
    """A 20x20 image: a large dog listed before a small person inside it, and a
    person crowd region (uncompressed RLE) half over the dog."""
    from pycocotools.coco import COCO
    crowd = np.zeros((20, 20), np.uint8)
    crowd[12:18, 8:18] = 1
    flat, runs, cur = crowd.ravel(order="F"), [0], 0  # uncompressed RLE: alternating 0/1 run lengths
    for v in flat:
        if v != cur:
            runs.append(0)
            cur = v
        runs[-1] += 1
    box = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]  # noqa: E731
    doc = {"images": [{"id": 7, "file_name": "x.jpg", "height": 20, "width": 20}],
           "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
           "annotations": [
               {"id": 1, "image_id": 7, "category_id": 18, "iscrowd": 0, "area": 144.0,
                "segmentation": box(2, 2, 14, 14), "bbox": [2, 2, 12, 12]},
               {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 16.0,
                "segmentation": box(6, 6, 10, 10), "bbox": [6, 6, 4, 4]},
               {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": float(crowd.sum()),
                "segmentation": {"size": [20, 20], "counts": runs}, "bbox": [8, 12, 10, 6]}]}
    (tmp_path / "inst.json").write_text(json.dumps(doc))
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(tmp_path / "inst.json"))


def test_coco_masks_render_as_the_official_conversion(tmp_path):
    from pipeline.data.datasets import coco_category_map, render_coco_mask
    coco = _coco_with_overlap_and_crowd(tmp_path)
    cmap = coco_category_map(coco)  # person -> 15, dog -> 12
    dog, person = cmap[18], cmap[1]
    official = render_coco_mask(coco, 7, cmap)
    largest = render_coco_mask(coco, 7, cmap, "largest_first")
    # overlap of dog (listed first) and person: the first instance keeps it
    assert official[8, 8] == dog and largest[8, 8] == person
    # crowd: its category where nothing came first, 255 in the old rendering
    assert official[16, 16] == person and largest[16, 16] == 255
    assert official[13, 10] == dog and largest[13, 10] == 255  # crowd over the dog: the dog came first
    assert official[0, 0] == largest[0, 0] == 0
    # official = parse_coco.py: each decoded instance fills the pixels still 0, in annotation order
    ref = np.zeros((20, 20), np.uint8)
    for a in coco.loadAnns(coco.getAnnIds(imgIds=7)):
        ref += (ref == 0) * (coco.annToMask(a) * cmap[a["category_id"]]).astype(np.uint8)
    assert np.array_equal(official, ref)


def test_prepare_data_renders_coco_tiny_as_configured(tmp_path):
    from pipeline.data.datasets import read_mask
    from stages.runner import run_stage
    over = {"data": {"root": str(ROOT / "data/coco-tiny"), "max_images": 20, "splits": {
        "train": {"images": "images/train2017", "annotations": "annotations/instances_train2017.json"},
        "val": {"images": "images/val2017", "annotations": "annotations/instances_val2017.json"}}},
        "run": {"work_dir": str(tmp_path / "runs")}}
    masks = {}
    for mode in ("official", "largest_first"):
        over["data"]["coco_render"] = mode
        cfg = load_config(ROOT / "configs/coco-full.yaml", overrides=over)
        out = run_stage(cfg, "prepare_data")
        table = LabelTable.from_artifact(out, "val")
        masks[mode] = {r.id: read_mask(r.mask) for r in table.records}
    assert masks["official"].keys() == masks["largest_first"].keys()
    differ = [i for i in masks["official"] if not np.array_equal(masks["official"][i], masks["largest_first"][i])]
    assert differ  # overlapping instances exist in real COCO images
    assert not any((m == 255).any() for m in masks["official"].values())  # crowd keeps its category
