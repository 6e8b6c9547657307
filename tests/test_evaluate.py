"""Evaluation against hand-computed confusion matrices, and the evaluate
stage on a CAM store built from the ground truth itself."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cam_fixtures import gt_store
from pipeline.cams.store import CamStore
from pipeline.data.datasets import write_mask
from pipeline.evaluation.scores import best_threshold, evaluate_masks, evaluate_seeds, official_threshold

GT = np.array([[3, 3, 255], [0, 7, 7]], np.uint8)


def test_seed_scores_equal_a_hand_computed_confusion(tmp_path):
    store = CamStore(tmp_path / "c.zarr", mode="a")
    cams = np.array([[[0.9, 0.2, 0.5], [0.0, 0.6, 0.1]],    # class 3
                     [[0.1, 0.8, 0.4], [0.3, 0.7, 0.0]]])   # class 7
    store.write("x", cams, [3, 7], (2, 3))
    write_mask(tmp_path / "x.png", GT)
    res = evaluate_seeds(store, ["x"], lambda i: tmp_path / f"{i}.png", [0.45, 0.85], 21)
    # t=0.45 -> pred [[3, 7, 3], [0, 7, 0]]; (0, 2) is ignored in GT
    # IoU bg = 1/(1+2-1), class 3 = 1/(2+1-1), class 7 = 1/(2+2-1); other classes absent
    r = res[0.45]
    assert r["miou"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3 * 100)
    assert r["per_class_iou"]["7"] == pytest.approx(100 / 3) and r["per_class_iou"]["1"] is None
    assert r["fg_precision"] == pytest.approx(100.0) and r["fg_recall"] == pytest.approx(75.0)
    # per class from the same matrix (tp / predicted / GT): bg 1 / 2 / 1; class 3 1 / 1 / 2; class 7 1 / 2 / 2
    pr = {c: (r["per_class_precision"][c], r["per_class_recall"][c]) for c in ("0", "3", "7")}
    assert pr == {"0": (50.0, 100.0), "3": (100.0, 50.0), "7": (50.0, 50.0)}
    assert r["per_class_precision"]["1"] is None and r["per_class_recall"]["1"] is None
    # t=0.85 -> pred [[3, 0, 0], [0, 0, 0]]: bg 1/4, class 3 1/2, class 7 0
    assert res[0.85]["miou"] == pytest.approx((0.25 + 0.5 + 0) / 3 * 100)
    # background wins a tie (the official argmax over [t, cams] puts t first)
    t = float(np.float32(0.9))  # exactly the stored (float32) CAM value of pixel (0, 0)
    tie = evaluate_seeds(store, ["x"], lambda i: tmp_path / f"{i}.png", [t, t - 1e-4], 21)
    assert tie[t]["per_class_iou"]["3"] == 0 and tie[t - 1e-4]["per_class_iou"]["3"] == 50


def test_official_sweep_stops_at_the_first_threshold_that_does_not_improve():
    """SemPLeS / WeakTr evaluation.py whole_eval: `if mIoU > max_mIoU: keep else: break`, from 0."""
    curve = {0.40: 50.0, 0.41: 52.0, 0.42: 51.0, 0.43: 60.0}
    assert official_threshold(curve) == (0.41, 52.0)
    assert best_threshold(curve) == (0.43, 60.0)  # the global maximum, reported beside it
    assert official_threshold({0.41: 50.0, 0.40: 50.0, 0.42: 70.0}) == (0.40, 50.0)  # a tie stops it
    assert best_threshold({0.40: 50.0, 0.41: 50.0}) == (0.40, 50.0)
    assert official_threshold({0.40: 0.0, 0.41: 10.0}) == (None, 0.0)


def test_mask_scores_count_ignored_predictions_as_missed(tmp_path):
    write_mask(tmp_path / "gt.png", GT)
    write_mask(tmp_path / "pred.png", np.array([[3, 255, 3], [0, 7, 7]], np.uint8))
    r = evaluate_masks(lambda i: tmp_path / "pred.png", ["x"], lambda i: tmp_path / "gt.png", 21)
    # bg 1/1; class 3: tp 1, gt 2 (one missed), pred 1 -> 1/2; class 7: 2/2
    assert r["miou"] == pytest.approx(2.5 / 3 * 100)
    assert r["fg_recall"] == pytest.approx(75.0)
    # the uncertain pixel is a miss of class 3 (recall 1/2) and in no class's precision (3: 1/1)
    assert r["per_class_recall"]["3"] == pytest.approx(50.0) and r["per_class_precision"]["3"] == pytest.approx(100.0)
    with pytest.raises(FileNotFoundError, match="pseudo mask missing for image 'y'"):
        evaluate_masks(lambda i: tmp_path / f"{i}.png", ["y"], lambda i: tmp_path / "gt.png", 21)


def test_ground_truth_cams_score_100(smoke_cfg, prepared, tmp_path):
    from pipeline.data.datasets import LabelTable, read_mask
    from stages.evaluate import STAGE as evaluate

    export, pm, seg, out = (tmp_path / n for n in ("export", "pm", "seg", "out"))
    ids = gt_store(prepared, "train", export)
    table = LabelTable.from_artifact(prepared, "train")
    (pm / "masks").mkdir(parents=True)
    for i in ids:
        write_mask(pm / "masks" / f"{i}.png", read_mask(table[i].mask))
    seg.mkdir()
    out.mkdir()
    inputs = {"prepare_data": prepared, "export_cams": export, "pseudo_masks": pm, "train_segmentation": seg}

    metrics = evaluate.run(smoke_cfg, inputs, out)
    assert metrics["seed_miou"] == pytest.approx(100.0)
    assert metrics["seed_best_miou_gt_sweep"] == pytest.approx(100.0)
    assert metrics["pseudo_mask_miou"] == pytest.approx(100.0)
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == len(ids) == 70
    assert report["seed_sweep"]["uses_ground_truth"] is True
    assert [float(t) for t in report["seed_sweep"]["curve"]] == [i / 100 for i in range(40, 60)]  # official sweep
    # a flat curve: the official loop stops at the second threshold and reports the first
    sw = report["seed_sweep"]
    assert (sw["official_threshold"], sw["official_miou"]) == (0.4, pytest.approx(100.0))
    assert metrics["seed_official_miou_gt_sweep"] == pytest.approx(100.0)
    assert "official sweep threshold 0.4" in (out / "report.md").read_text()
    assert report["selection"]["uses_ground_truth"] is False and metrics["selection_uses_ground_truth"] is False
    assert "refine: last epoch (no pixel labels)" in (out / "report.md").read_text()
    assert report["final_model"]["available"] is False
    assert "n/a" in (out / "report.md").read_text() and "uses GT" in (out / "report.md").read_text()
    for f in ("per_class_iou.png", "gallery.png"):
        assert (out / f).stat().st_size > 1000

    (seg / "val_metrics.json").write_text(json.dumps({"miou": 12.5, "per_class_iou": {"background": 70.0}}))
    quick = smoke_cfg.model_copy(update={"evaluate": smoke_cfg.evaluate.model_copy(
        update={"sweep": [0.45], "gallery_size": 0})})
    quick.refine = quick.refine.model_copy(update={"select": "gt_miou", "seed_eval_every": 1})
    metrics = evaluate.run(quick, inputs, out)
    assert metrics["final_val_miou"] == 12.5 and metrics["selection_uses_ground_truth"] is True
    assert "refine: best epoch by seed mIoU on train (uses ground truth)" in (out / "report.md").read_text()
    assert "| final segmentation model (last iteration; single-scale test) | val | 12.50 |" in (out / "report.md").read_text()


def test_every_pseudo_mask_route_is_scored_side_by_side(smoke_cfg, prepared, tmp_path, monkeypatch):
    """... in one pass that decodes each ground-truth mask once (issue #38)."""
    from pipeline.evaluation.compare import Run, compare_table
    from pipeline.evaluation.report import EvalReport
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable, read_mask
    from pipeline.evaluation import evaluate as evaluate_module
    from pipeline.evaluation import scores
    from stages.evaluate import STAGE as evaluate

    cfg = load_config(smoke_cfg.source, overrides={
        "run": {"work_dir": str(smoke_cfg.run.work_dir)}, "evaluate": {"sweep": [0.45], "gallery_size": 0},
        "pseudo_masks": {"method": "sam", "extra_methods": ["crf", "argmax"]}})
    export, pm, seg, out = (tmp_path / n for n in ("export", "pm", "seg", "out"))
    ids = gt_store(prepared, "train", export)
    table = LabelTable.from_artifact(prepared, "train")
    for d in ("masks", "masks_crf", "masks_argmax"):
        (pm / d).mkdir(parents=True)
    for i in ids:  # trained route (sam) = GT; crf = GT with the top half background; argmax = all background
        gt = read_mask(table[i].mask)
        half = gt.copy()
        half[: gt.shape[0] // 2] = 0
        write_mask(pm / "masks" / f"{i}.png", gt)
        write_mask(pm / "masks_crf" / f"{i}.png", half)
        write_mask(pm / "masks_argmax" / f"{i}.png", np.zeros_like(gt))
    seg.mkdir()
    out.mkdir()
    inputs = {"prepare_data": prepared, "export_cams": export, "pseudo_masks": pm, "train_segmentation": seg}
    reads = Counter()
    for module in (scores, evaluate_module):
        monkeypatch.setattr(module, "read_mask", lambda p, read=read_mask: reads.update([str(p)]) or read(p))
    metrics = evaluate.run(cfg, inputs, out)
    gt_paths = {table[i].mask for i in ids}
    assert {p: n for p, n in reads.items() if p in gt_paths} == {p: 1 for p in gt_paths}
    assert sum(n for p, n in reads.items() if "masks_crf" in p) == len(ids)
    report = json.loads((out / "report.json").read_text())
    routes = report["pseudo_mask_routes"]
    assert list(routes) == ["sam", "crf", "argmax"] and report["trained_route"] == "sam"
    assert routes["sam"]["miou"] == pytest.approx(100.0) == metrics["pseudo_mask_miou_sam"]
    assert 0 < routes["argmax"]["miou"] < routes["crf"]["miou"] < 100.0
    assert routes["argmax"]["fg_recall"] == 0.0
    assert metrics["pseudo_mask_miou_crf"] == routes["crf"]["miou"]
    md = (out / "report.md").read_text()
    assert f"| pseudo mask (crf) | train | {routes['crf']['miou']:.2f} |" in md
    assert "| class | seed | pseudo mask | crf | argmax | final (val) |" in md
    table_md = compare_table([Run("a", out, EvalReport.load(out / "report.json"))])
    assert "| pseudo-mask mIoU, route sam | 100.00 (trained) |" in table_md
    assert f"| pseudo-mask mIoU, route crf | {routes['crf']['miou']:.2f} |" in table_md
