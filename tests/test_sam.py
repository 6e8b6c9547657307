"""The SAM route: FMA-WSSS's seeding and rock-sand-water filter against
hand-computed cases, the generator's per-level offsets on synthetic SAM
outputs, and sam_masks + pseudo_masks(method sam) through the flow with a
tiny random SAM (kill mid-split, resume)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pipeline.pseudo_masks.routes.sam import seed_masks
from pipeline.sam.generator import rsw_filter


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------ seeding
def test_ties_go_to_background():
    # one class, three disjoint 2-pixel masks with CAM 0, c, 1. The min-max over
    # masks divides by (1 - 0 + 1e-7) = d, so c = d / 2 gives s = 0.5 exactly
    # (halving and 2-pixel means are exact in float64) and b = (1 - 0.5) ** 1 = s
    d = 1.0 + 1e-7
    masks = np.stack([box(1, 6, 0, 1, 0, 2), box(1, 6, 0, 1, 2, 4), box(1, 6, 0, 1, 4, 6)])
    cam = np.array([[[0, 0, d / 2, d / 2, 1, 1]]], np.float64)
    out = seed_masks(cam, [7], masks, [0, 0, 0], p=1.0)
    assert out.tolist() == [[0, 0, 0, 0, 7, 7]]
    cam[0, 0, 2:4] = 0.6  # s > b now: the middle mask turns foreground
    assert seed_masks(cam, [7], masks, [0, 0, 0], p=1.0).tolist() == [[0, 0, 7, 7, 7, 7]]


def test_whole_beats_part_beats_subpart_and_uncovered_is_background():
    h, w = 4, 8
    sub = box(h, w, 0, 2, 0, 2)     # level 0, class 2 (cam2 high there)
    part = box(h, w, 0, 3, 1, 4)    # level 1, class 1
    whole = box(h, w, 1, 4, 2, 6)   # level 2, class 2
    other = box(h, w, 0, 1, 7, 8)   # level 0, low CAMs: background
    cam = np.zeros((2, h, w))
    cam[0][part & ~sub & ~whole] = 1.0
    cam[1][sub] = 1.0
    cam[1][whole & ~part] = 1.0
    out = seed_masks(cam, [1, 2], np.stack([whole, sub, part, other]), [2, 0, 1, 0], p=0.7)
    expect = np.zeros((h, w), np.uint8)
    expect[sub] = 2
    expect[part] = 1
    expect[whole] = 2
    assert np.array_equal(out, expect)
    assert out[3, 0] == 0 and out[2, 7] == 0  # no mask covers these pixels


def test_within_a_level_the_more_confident_mask_is_painted_last():
    h, w = 1, 6
    a, b, c = box(h, w, 0, 1, 0, 4), box(h, w, 0, 1, 2, 6), box(h, w, 0, 1, 5, 6)  # a, b overlap at x = 2, 3
    cam = np.zeros((2, h, w))
    cam[0, 0, :2] = 1.0                  # class 3: means a 0.5, b 0, c 0 -> a: s ~ 1
    cam[1, 0, 2:4], cam[1, 0, 4:] = 0.6, 1.0  # class 5: means a 0.3, b 0.8, c 1 -> b: s = 0.5 / 0.7
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        out = seed_masks(cam, [3, 5], np.stack([a, b, c])[order], [1, 1, 1], p=1.0)
        assert out.tolist() == [[3, 3, 3, 3, 5, 5]]  # a (conf ~1) is painted over b (conf 0.71)
    # across levels the level decides, not the confidence: b as a whole mask covers a
    out = seed_masks(cam, [3, 5], np.stack([a, b, c]), [1, 2, 1], p=1.0)
    assert out.tolist() == [[3, 3, 5, 5, 5, 5]]


def test_zero_area_masks_paint_nothing_and_do_not_shift_the_normalisation():
    h, w = 1, 4
    m0, m1, empty = box(h, w, 0, 1, 0, 2), box(h, w, 0, 1, 2, 4), np.zeros((h, w), bool)
    cam = np.array([[[0.5, 0.5, 1.0, 1.0]]])
    ref = seed_masks(cam, [4], np.stack([m0, m1]), [1, 1], p=2.0)
    assert ref.tolist() == [[0, 0, 4, 4]]
    # counted with g = 0, the empty mask would make s(m0) = 0.5 > b = 0.25: m0 foreground
    out = seed_masks(cam, [4], np.stack([m0, empty, m1]), [1, 2, 1], p=2.0)
    assert np.array_equal(out, ref)
    assert seed_masks(cam, [4], np.zeros((0, h, w), bool), [], p=2.0).tolist() == [[0, 0, 0, 0]]


def test_a_class_with_equal_means_everywhere_never_wins():
    h, w = 2, 4
    left, right = box(h, w, 0, 2, 0, 2), box(h, w, 0, 2, 2, 4)
    cam = np.zeros((2, h, w))
    cam[0] = 0.9                 # class 1: the same mean on every mask -> s = 0
    cam[1][:, 2:] = 0.8          # class 2: high on the right only
    out = seed_masks(cam, [1, 2], np.stack([left, right]), [2, 2], p=0.7)
    assert (out[:, :2] == 0).all() and (out[:, 2:] == 2).all()
    # one mask only: min = max for every class -> all background
    assert (seed_masks(cam, [1, 2], right[None], [2], p=0.7) == 0).all()


def test_seed_masks_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="masks must be"):
        seed_masks(np.zeros((1, 4, 4)), [1], np.zeros((2, 4, 5), bool), [0, 0], 0.7)
    with pytest.raises(ValueError, match="cam must be"):
        seed_masks(np.zeros((2, 4, 4)), [1], np.zeros((1, 4, 4), bool), [0], 0.7)


def test_rock_sand_water_filter():
    h, w = 10, 10
    whole = box(h, w, 0, 10, 0, 5)
    part_in = box(h, w, 0, 4, 0, 4)        # inside the whole: recall 1 -> dropped
    part_out = box(h, w, 0, 4, 6, 10)      # disjoint -> kept
    sub_quarter = box(h, w, 4, 6, 4, 8)    # 2 of 8 pixels in the whole: 0.25 < 0.3 -> kept
    sub_edge = box(h, w, 6, 9, 4, 10)      # 3 of 18 pixels in the whole (1/6) -> kept
    sub_in_part = box(h, w, 0, 2, 7, 9)    # inside the kept part -> dropped
    zero = np.zeros((h, w), bool)
    masks = np.stack([sub_quarter, part_in, whole, sub_in_part, part_out, zero, sub_edge])
    levels = [0, 1, 2, 0, 1, 1, 0]
    kept = rsw_filter(masks, levels, 0.3)
    assert kept.tolist() == [2, 4, 0, 6]   # level 2, then 1, then 0; input order within a level
    # recall exactly at the threshold is dropped (strict <): 3 of 10 pixels inside
    at = np.zeros((h, w), bool)
    at[9, 2:10] = True
    at[8, 8:10] = True                     # 10 pixels, 3 of them (9, 2..4) in the whole
    assert rsw_filter(np.stack([whole, at]), [2, 0], 0.3).tolist() == [0]
    assert rsw_filter(np.stack([whole, at]), [2, 0], 0.31).tolist() == [0, 1]
    # no whole masks: the first level present fills the container unfiltered
    assert rsw_filter(np.stack([part_in, whole]), [1, 1], 0.3).tolist() == [0, 1]


# ---------------------------------------------------------------- generator
def _generator(outputs, crop_n_layers=0, **kw):
    """FmaMaskGenerator on a tiny SAM whose decoder returns fixed (logits, iou) for the one point."""
    from pipeline.sam.generator import FmaMaskGenerator, tiny_sam
    gen = FmaMaskGenerator(tiny_sam(), points_per_side=1, crop_n_layers=crop_n_layers, pred_iou_thresh=0.86,
                           stability_score_thresh=0.92, min_mask_region_area=0, **kw)
    logits, iou = outputs

    def predict_torch(points, labels, multimask_output=True, return_logits=True):
        n = len(points)
        return logits.expand(n, *logits.shape[1:]), iou.expand(n, 3), None
    gen.predictor.predict_torch = predict_torch
    return gen


def _logits(h, w, *boxes):
    out = torch.full((1, 3, h, w), -20.0)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        out[0, i, y0:y1, x0:x1] = 20.0
    return out


def test_generator_offsets_decide_the_iou_filter_and_the_nms():
    h, w = 40, 40
    image = np.zeros((h, w, 3), np.uint8)
    # sub-part and whole have near-identical boxes (NMS IoU > 0.7); the part fails the IoU filter
    logits = _logits(h, w, (5, 30, 5, 30), (10, 20, 10, 20), (5, 31, 5, 31))
    iou = torch.tensor([[0.95, 0.80, 0.80]])
    recs = _generator((logits, iou), iou_thresh_offsets=(0, 0, 0.1), nms_offsets=(0, 0, 1.0)).generate(image)
    assert [r["level"] for r in recs] == [2]                   # +0.1 lets it pass, +1.0 wins the NMS
    assert recs[0]["predicted_iou"] == pytest.approx(0.80)     # SAM's own IoU is reported
    assert recs[0]["bbox"] == [5.0, 5.0, 25.0, 25.0] and recs[0]["area"] == 26 * 26
    recs = _generator((logits, iou)).generate(image)           # Meta's behaviour: no offsets
    assert [r["level"] for r in recs] == [0]                   # 0.80 fails, the sub-part wins the NMS


def test_generator_rock_sand_water_filter_runs_after_the_nms():
    h, w = 40, 40
    image = np.zeros((h, w, 3), np.uint8)
    # whole on the left; part disjoint on the right; sub-part inside the whole
    logits = _logits(h, w, (2, 8, 2, 8), (5, 15, 25, 35), (0, 20, 0, 20))
    iou = torch.tensor([[0.9, 0.9, 0.9]])
    gen = _generator((logits, iou), iou_thresh_offsets=(0, 0, 0.1), nms_offsets=(0, 0, 1.0), rsw_thresh=0.3)
    recs = gen.generate(image)
    assert [r["level"] for r in recs] == [2, 1]
    from pycocotools import mask as mask_utils
    assert mask_utils.decode(recs[1]["segmentation"])[5:15, 25:35].all()
    assert isinstance(recs[0]["segmentation"]["counts"], str)  # JSON-ready COCO RLE
    assert sorted(r["level"] for r in _generator((logits, iou)).generate(image)) == [0, 1, 2]


def test_generator_stability_score_bias_is_added_per_level_before_the_filter():
    # FMA sam_auto.py _process_batch: keep (stability + bias[level]) >= stability_score_thresh
    h, w = 40, 40
    image = np.zeros((h, w, 3), np.uint8)
    logits = _logits(h, w, (2, 8, 2, 8), (5, 15, 25, 35), (10, 20, 10, 20))
    logits[0, 2, 8:22, 8:22] = torch.where(logits[0, 2, 8:22, 8:22] > 0, 20.0, 0.5)  # a soft ring
    # whole: 100 px above +1, 196 above -1 -> stability 0.51; sub-part and part are sharp (1.0)
    iou = torch.tensor([[0.9, 0.9, 0.9]])
    recs = _generator((logits, iou)).generate(image)
    assert sorted(r["level"] for r in recs) == [0, 1]
    recs = _generator((logits, iou), stability_score_bias=(0.0, 0.0, 0.45)).generate(image)
    assert sorted(r["level"] for r in recs) == [0, 1, 2]
    whole = next(r for r in recs if r["level"] == 2)
    assert whole["stability_score"] == pytest.approx(100 / 196)  # the reported score is SAM's own
    recs = _generator((logits, iou), stability_score_bias=(-0.5, 0.0, 0.45)).generate(image)
    assert sorted(r["level"] for r in recs) == [1, 2]             # a negative bias drops the sub-part
    with pytest.raises(ValueError, match="one value per level"):
        _generator((logits, iou), stability_score_bias=(0.0, 0.1))


def test_an_image_without_any_mask_gives_no_records():
    # with crops, Meta's cross-crop NMS fails when no crop found a mask (empty_crop_fix)
    logits, iou = _logits(40, 40, (5, 30, 5, 30), (5, 30, 5, 30), (5, 30, 5, 30)), torch.zeros((1, 3))
    assert _generator((logits, iou), crop_n_layers=1).generate(np.zeros((40, 40, 3), np.uint8)) == []


def test_missing_weights_name_the_key_the_url_and_the_file(tmp_path, monkeypatch):
    from pipeline.sam.generator import checkpoint_file
    with pytest.raises(FileNotFoundError, match="sam.checkpoint.*nope.pth"):
        checkpoint_file("vit_b", str(tmp_path / "nope.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = "http://127.0.0.1:9/sam_vit_b_01ec64.pth"  # nothing listens on port 9: the offline case
    with pytest.raises(RuntimeError, match=r"sam\.checkpoint: cannot download http://127\.0\.0\.1:9/"
                                           r"sam_vit_b_01ec64\.pth to .*hub/checkpoints/sam_vit_b_01ec64\.pth"):
        checkpoint_file("vit_b", url)
    assert not (tmp_path / "hub/checkpoints/sam_vit_b_01ec64.pth").exists()


def test_offline_sam_weights_stop_the_run_before_any_write(tmp_path, monkeypatch):
    from conftest import ROOT
    from pipeline.config import load_config
    from pipeline.weights import WeightsUnavailable
    from stages.runner import run_all

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = load_config(ROOT / "configs/voc-sam-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs")},
        "sam": {"tiny": False, "model_type": "vit_b", "checkpoint": "http://127.0.0.1:9/sam_vit_b_01ec64.pth"}})
    with pytest.raises(WeightsUnavailable, match=r"sam_masks needs Meta's SAM vit_b weights \(sam\.checkpoint: "
                                                 r"http://127\.0\.0\.1:9/sam_vit_b_01ec64\.pth\)") as e:
        run_all(cfg, until="sam_masks")
    assert "hub/checkpoints/sam_vit_b_01ec64.pth" in str(e.value) and "Nothing was written" in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_sam_split_must_match_the_export(tmp_path):
    from conftest import ROOT
    from pipeline.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="sam.split 'val' must equal export_cams.split 'train'"):
        load_config(ROOT / "configs/voc-sam-smoke.yaml", overrides={"sam": {"split": "val"}})
    with pytest.raises(ConfigError, match="repeats a route"):
        load_config(ROOT / "configs/voc-sam-smoke.yaml", overrides={"pseudo_masks": {"extra_methods": ["sam"]}})


# --------------------------------------------------------------------- flow
def test_sam_route_through_the_flow_resumes_after_a_kill(sam_smoke_run, tmp_path):
    """The session's voc-sam-smoke run (conftest sam_smoke_run, one stage after another):
    pseudo_masks labels SAM's mask files (method sam) beside the CRF route, with the COCO
    export. On a copy of its store without the sam_masks artifact, `wsss stage sam_masks`
    killed mid-split, then, without export_cams and pseudo_masks too, the Prefect flow to
    pseudo_masks with run.gpus [0, 1]: the finished mask files are kept, the rest written;
    sam_masks and export_cams (independent GPU stages, one device each, each in a process of
    its own) ran at the same time, pseudo_masks after both (flows/dag.py schedule); every
    output equals the sequential session run's."""
    import shutil

    from conftest import ROOT
    from pipeline.pseudo_masks.coco_export import decode
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable, read_mask
    from pipeline.sam.files import read_masks_json
    from pipeline.artifacts import CamArtifact
    from pipeline.cams.store import CamStore
    from pipeline.store import Store
    from stages.runner import stage_keys

    run = sam_smoke_run
    shutil.copytree(run["cfg"].run.work_dir, tmp_path / "runs")
    cfg_file = tmp_path / "sam.yaml"
    cfg_file.write_text(f"_base_: {run['cfg_path']}\nrun: {{work_dir: {tmp_path / 'runs'}, gpus: [0, 1]}}\n")
    cfg = load_config(cfg_file)
    keys = stage_keys(cfg)
    store = Store(cfg.run.work_dir)
    shutil.rmtree(store.path(keys["sam_masks"]))
    prepared = store.path(keys["prepare_data"])

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    d = store.path(keys["sam_masks"]) / "masks_train"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "stage", "sam_masks", "--config", str(cfg_file)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and len(list(d.glob("*.json"))) < 2:
            time.sleep(0.05)
        assert proc.poll() is None, "sam_masks finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in d.glob("*.json")}
    ids = LabelTable.from_artifact(prepared, "train").ids()
    assert 2 <= len(done) < len(ids) == 4 and store.state(keys["sam_masks"]) == "partial"

    assert keys == run["keys"]  # run.gpus is part of no key
    for name in ("export_cams", "pseudo_masks"):
        shutil.rmtree(store.path(keys[name]))
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg_file), "--until",
                          "pseudo_masks"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert all(store.state(keys[n]) == "cached" for n in ("sam_masks", "export_cams", "pseudo_masks"))
    spans = {n: (t["started"], t["finished"]) for n in ("sam_masks", "export_cams", "pseudo_masks")
             for t in [store.manifest(keys[n])["timings"]]}
    (s0, e0), (s1, e1), (s2, _) = spans["sam_masks"], spans["export_cams"], spans["pseudo_masks"]
    assert s0 < e1 and s1 < e0, spans  # the two branches computed at the same time
    assert s2 >= max(e0, e1), spans  # pseudo_masks waited for both of its inputs
    a, b = CamStore(CamArtifact(store.path(keys["export_cams"])).store("train")), \
        CamStore(CamArtifact(run["dirs"]["export_cams"]).store("train"))
    assert a.ids() == b.ids() and all(np.array_equal(a.read(i)[0], b.read(i)[0]) for i in a.ids())
    for sub in ("masks", "masks_crf"):
        mine, theirs = store.path(keys["pseudo_masks"]) / sub, run["dirs"]["pseudo_masks"] / sub
        pngs = sorted(p.name for p in theirs.glob("*.png"))
        assert pngs and pngs == sorted(p.name for p in mine.glob("*.png"))
        assert all((mine / n).read_bytes() == (theirs / n).read_bytes() for n in pngs), sub
    assert {n: (d / n).stat().st_mtime_ns for n in done} == done   # finished images were not redone
    assert sorted(p.stem for p in d.glob("*.json")) == sorted(ids) and not list(d.glob(".*"))
    session = run["dirs"]["sam_masks"] / "masks_train"
    assert all((d / f"{i}.json").read_bytes() == (session / f"{i}.json").read_bytes() for i in ids)

    pm = run["dirs"]["pseudo_masks"]
    table = LabelTable.from_artifact(prepared, "train")
    coco = decode(pm / "pseudo_masks_coco.json")
    for i in ids:
        doc = json.loads((d / f"{i}.json").read_text())
        assert doc["image_id"] == i and (doc["height"], doc["width"]) == (table[i].height, table[i].width)
        assert all({"segmentation", "level", "predicted_iou", "stability_score", "bbox", "area"} <= set(a)
                   for a in doc["annotations"])
        masks, levels, _ = read_masks_json(d / f"{i}.json")
        sam, crf = read_mask(pm / "masks" / f"{i}.png"), read_mask(pm / "masks_crf" / f"{i}.png")
        assert set(np.unique(sam)) <= {0, *table[i].labels} and sam.shape == crf.shape == masks.shape[1:]
        assert not sam[~masks.any(0)].any()                        # uncovered pixels are background
        assert np.array_equal(coco[i], sam)                        # the COCO export is the trained route


def test_read_ahead_keeps_order_and_raises_at_the_failing_item():
    """sam_masks' image prefetch: order kept, at most `ahead` loads started before the consumer
    takes an item, a load's error raised when its item is reached (earlier items delivered)."""
    import threading
    from pipeline.utils import read_ahead
    started, lock = [], threading.Lock()

    def load(i):
        with lock:
            started.append(i)
        if i == 5:
            raise OSError(f"cannot read {i}")
        return i * i

    got = []
    with pytest.raises(OSError, match="cannot read 5"):
        for i, v in read_ahead(range(8), load, 2):
            with lock:
                assert len(started) <= i + 1 + 2  # never more than 2 ahead of the consumer
            got.append((i, v))
    assert got == [(i, i * i) for i in range(5)]
    assert list(read_ahead([], load, 3)) == []
    assert [v for _, v in read_ahead(range(3), load, 1)] == [0, 1, 4]
