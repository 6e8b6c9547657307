"""Seeds -> pseudo masks: CRF on a real image, uncertainty band, affinity
random walk, and the stage (process pool, resume, palette PNGs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cam_fixtures import gt_store
from pipeline.config import PseudoMasksCfg
from pipeline.data.classes import IGNORE
from pipeline.data.datasets import read_image, read_mask
from pipeline.evaluation.metrics import Confusion
from pipeline.pseudo_masks.routes import ROUTES
from pipeline.pseudo_masks.routes.affinity import AffinityCfg, affinity_propagate
from pipeline.pseudo_masks.threshold import seed_labels


def pseudo_mask(image, cams, classes, cfg):
    """The route cfg.method alone (no job, no further inputs)."""
    return ROUTES[cfg.method].mask(image, cams, classes, cfg, None, None)

TINY = Path(__file__).resolve().parents[1] / "data/voc-tiny"


def _blocky(gt: np.ndarray, cell: int = 16) -> np.ndarray:
    """GT sampled on a coarse grid and blown up: right inside, wrong along every edge."""
    h, w = gt.shape
    small = gt[cell // 2::cell, cell // 2::cell]
    big = np.kron(small, np.ones((cell, cell), np.uint8))[:h, :w]
    return np.pad(big, ((0, h - big.shape[0]), (0, w - big.shape[1])), mode="edge")


def test_crf_moves_a_noisy_seed_to_the_image_edges():
    image = read_image(TINY / "JPEGImages/000000000081.jpg")  # an aeroplane against the sky
    gt = read_mask(TINY / "SegmentationClass/000000000081.png")
    seed_mask = _blocky(gt)
    cams = np.stack([(seed_mask == 1).astype(np.float32) * 0.9])
    seed = seed_labels(cams, [1], 0.45)
    crf = pseudo_mask(image, cams, [1], PseudoMasksCfg(method="crf"))
    assert set(np.unique(crf)) <= {0, 1}
    miou = {}
    for name, pred in (("seed", seed), ("crf", crf)):
        c = Confusion(21)
        c.add(pred, gt)
        miou[name] = c.summary()["miou"]
    assert miou["crf"] > miou["seed"] + 5, miou
    changed = (crf != seed) & (gt != IGNORE)
    assert changed.sum() > 500
    assert (crf[changed] == gt[changed]).mean() > 0.75  # the pixels it moved, it moved towards GT


def test_uncertain_band_becomes_ignore():
    cams = np.array([[[0.1, 0.4, 0.6, 0.9]]], np.float32)
    cfg = PseudoMasksCfg(method="argmax", low_threshold=0.3, high_threshold=0.7)
    assert pseudo_mask(None, cams, [5], cfg).tolist() == [[0, IGNORE, IGNORE, 5]]
    assert pseudo_mask(None, cams, [5], PseudoMasksCfg(method="argmax")).tolist() == [[0, 0, 5, 5]]
    with pytest.raises(ValueError, match="set together"):
        PseudoMasksCfg(low_threshold=0.3)


def test_affinity_walk_spreads_within_a_region_only():
    # 2x4 patch grid, patches 0-3 (left) and 4-7 (right) attend within their half only
    grid, patch = (2, 4), 4
    side = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    attn = (side[:, None] == side[None, :]).astype(np.float32)
    attn /= attn.sum(1, keepdims=True)
    cams = np.zeros((1, 8, 16), np.float32)
    cams[0, :4, :4] = 1.0  # only one left patch fires
    out = affinity_propagate(cams, attn, grid, patch, AffinityCfg(beta=2, iterations=3))
    assert out.shape == cams.shape
    assert out[0, 4:, 2:6].min() > 0.2     # spread to the other left patches
    assert out[0, :, 12:].max() < 1e-6     # nothing leaks into the right half


def test_stage_writes_palette_pngs_in_a_pool_and_resumes(smoke_cfg, prepared, tmp_path):
    from pipeline.config import load_config
    from stages.pseudo_masks import STAGE as pseudo_masks

    cfg = load_config(smoke_cfg.source, overrides={"run": {"work_dir": str(smoke_cfg.run.work_dir), "processes": 2},
                                                   "pseudo_masks": {"method": "argmax", "gallery_size": 2}})
    export = tmp_path / "export"
    ids = gt_store(prepared, "train", export)
    inputs = {"prepare_data": prepared, "export_cams": export, "refine": tmp_path / "unused"}
    out = tmp_path / "pm"
    out.mkdir()
    assert pseudo_masks.items(cfg, inputs) == ids
    metrics = pseudo_masks.run(cfg, inputs, out)
    assert metrics["images"] == len(ids) == 70
    from pipeline.data.datasets import LabelTable
    table = LabelTable.from_artifact(prepared, "train")
    for i in ids[:10]:
        with Image.open(out / "masks" / f"{i}.png") as im:
            assert im.mode == "P"
        gt, pm = read_mask(table[i].mask), read_mask(out / "masks" / f"{i}.png")
        assert np.array_equal(pm[gt != IGNORE], gt[gt != IGNORE])
    assert (out / "pseudo_mask_gallery.png").exists()
    (out / "masks" / f"{ids[3]}.png").unlink()
    assert pseudo_masks.run_shard(cfg, inputs, out, ids) == 1  # only the missing one is redone
    assert (out / "masks" / f"{ids[3]}.png").exists()


def test_stage_names_a_bad_image(smoke_cfg, prepared, tmp_path):
    from pipeline.cams.store import CamStore, store_path
    from stages.pseudo_masks import STAGE as pseudo_masks

    export = tmp_path / "export"
    ids = gt_store(prepared, "train", export)
    CamStore(store_path(export, "train"), mode="a").write(ids[0], np.zeros((1, 5, 5)), [1], (5, 5))
    out = tmp_path / "pm"
    out.mkdir()
    inputs = {"prepare_data": prepared, "export_cams": export, "refine": tmp_path / "unused"}
    with pytest.raises(ValueError, match=f"image '{ids[0]}': CAMs are 5x5"):
        pseudo_masks.run_shard(smoke_cfg, inputs, out, ids[:1])
    assert not (out / "masks" / f"{ids[0]}.png").exists()


def test_affinity_crf_stage_with_a_real_mask_generator(tmp_path):
    from cam_fixtures import fake_refine
    from conftest import ROOT
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable
    from stages.export_cams import STAGE as export_cams
    from stages.pseudo_masks import STAGE as pseudo_masks
    from stages.runner import run_stage

    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs"), "device": "cpu", "processes": 1}, "data": {"max_images": 2},
        "export_cams": {"gallery_size": 0},
        "pseudo_masks": {"method": "affinity_crf", "gallery_size": 1, "affinity": {"beta": 4, "iterations": 2}}})
    inputs = {"prepare_data": run_stage(cfg, "prepare_data"), "refine": fake_refine(cfg, tmp_path / "refine"),
              "export_cams": tmp_path / "export"}
    inputs["export_cams"].mkdir()
    export_cams.run(cfg, inputs, inputs["export_cams"])
    out = tmp_path / "pm"
    out.mkdir()
    assert pseudo_masks.run(cfg, inputs, out)["images"] == 2
    table = LabelTable.from_artifact(inputs["prepare_data"], "train")
    for r in table.records:
        m = read_mask(out / "masks" / f"{r.id}.png")
        assert m.shape == (r.height, r.width) and set(np.unique(m)) <= {0, *r.labels}
