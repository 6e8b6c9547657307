"""The mixed-precision paths, run on CPU under bfloat16 autocast (pipeline/precision.py):
a training epoch, the CAM export (what the store then holds) and the SAM generator, each
against float32.

The tolerances come from bfloat16's 8-bit significand: each autocast matmul rounds its
inputs to a relative error of at most u = 2^-8 (~3.9e-3, float32 accumulates), so one layer
is off by about u of its output's magnitude, and a stack of layers by a few u (measured below,
each tolerance about twice the measured worst). A path that did not autocast agrees bit for
bit, so each test also asserts that the results differ."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cam_fixtures import fake_refine
from conftest import ROOT
from pipeline.precision import Precision

U = 2.0 ** -8  # bfloat16's unit roundoff
BF16 = Precision.of("cpu", True, "bfloat16")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and threads only fight over shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("device,amp,dtype,enabled,scaler", [
    ("cuda", True, "float16", True, True),      # the official recipe, as before
    ("cuda", True, "bfloat16", True, False),
    ("cuda", False, "float16", False, False),
    ("cpu", True, "float16", False, False),     # the default on a CPU: float32, as before
    ("cpu", True, "bfloat16", True, False),     # asked for: bfloat16 autocast, no scaler
    ("cpu", False, "bfloat16", False, False),
    ("meta", True, "bfloat16", False, False),   # a device type without autocast: float32
])
def test_precision_follows_what_the_device_supports(device, amp, dtype, enabled, scaler):
    p = Precision.of(device, amp, dtype)
    assert (p.device_type, p.enabled, p.dtype) == (device, enabled, getattr(torch, dtype))
    assert p.scales == scaler and (p.scaler().is_enabled() == scaler or not torch.cuda.is_available())


def test_a_training_epoch_under_bfloat16_autocast(prepared, tmp_path):
    """train_cam's step for one epoch (2 steps of 4 images): the epoch's mean loss within u of
    float32's (the per-item losses' rounding errors average out in the mean; measured 3.4e-4
    relative), and the weight updates point the same way: AdamW's first steps move each weight
    by about lr x sign(gradient), so the updates differ only where a gradient is smaller than
    its rounding error and flips sign (cosine of the updates measured 0.997; > 0.99 allows
    0.5% of the weights to flip)."""
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable
    from pipeline.models.mask_generator import build_mask_generator
    from pipeline.semples.losses import train_cam_step
    from pipeline.semples.training import FitSpec, TrainImages, fit

    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs")}, "mask_generator": {"img_size": 64, "drop_path_rate": 0.0},
        "train_cam": {"epochs": 1, "batch_size": 4, "crop_size": 64, "lr": 0.256, "gallery_size": 0}})
    table = LabelTable.from_artifact(prepared, "train")
    runs = {}
    for dtype in ("float16", "bfloat16"):  # float16 on a CPU: float32
        torch.manual_seed(0)
        model = build_mask_generator(cfg.mask_generator, 20, load_weights=False)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        out = tmp_path / dtype
        out.mkdir()
        fit(FitSpec(out, cfg.train_cam.model_copy(update={"amp_dtype": dtype}), 0,
                    TrainImages(table, 64, seed=0, ids=table.ids()[:8]), model, train_cam_step,
                    torch.device("cpu")))
        update = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
        runs[dtype] = json.loads((out / "train_history.json").read_text())[0]["loss"], update
    (loss32, up32), (loss16, up16) = runs["float16"], runs["bfloat16"]
    assert loss16 != loss32 and abs(loss16 - loss32) <= U * abs(loss32)
    assert torch.nn.functional.cosine_similarity(up16, up32, dim=0) > 0.99


def test_the_cam_export_under_bfloat16_autocast(prepared, smoke_cfg, tmp_path):
    """The store keeps bfloat16 grids as float32 (exactly: every bfloat16 is a float32; float16
    would clip bfloat16's range at 65504 and flush its small values), the read rebuilds the maps
    from them, and the grids are within 4u of float32's, relative to each array's largest value
    (the tiny ViT's layers add up to 2u measured)."""
    from pipeline.cams.inference import export_batched
    from pipeline.cams.store import CamStore
    from pipeline.data.datasets import LabelTable
    from pipeline.models.mask_generator import load_mask_generator

    records = LabelTable.from_artifact(prepared, "train").records[:6]
    model = load_mask_generator(fake_refine(smoke_cfg, tmp_path / "refine") / "model.pt")
    stores = {}
    for name, precision in (("float32", None), ("bfloat16", BF16)):
        stores[name] = CamStore(tmp_path / f"{name}.zarr", mode="a")
        assert export_batched(model, records, stores[name], (1.0, 0.75), True, "fine", "cpu", batch_size=3,
                              precision=precision) == len(records)
    differs = False
    for r in records:
        want, _ = stores["float32"].read_grids(r.id)
        got, _ = stores["bfloat16"].read_grids(r.id)
        for g, w in zip(got, want):
            assert g.dtype == np.float32 and torch.equal(torch.from_numpy(g).bfloat16().float(), torch.from_numpy(g))
            assert np.abs(g - w).max() <= 4 * U * np.abs(w).max(), r.id
            differs |= not np.array_equal(g, w)
        cams, classes = stores["bfloat16"].read(r.id)
        assert classes == r.labels and cams.dtype == np.float32 and cams.shape == (len(r.labels), r.height, r.width)
        assert cams.min() >= 0 and cams.max() <= 1
    assert differs


def test_the_sam_generator_under_bfloat16_autocast():
    """A tiny random SAM's mask logits within 8u of float32's, relative to the largest (image
    encoder, prompt encoder and two-way decoder: measured 5.0u); a mask pixel can change only
    where the float32 logit is within that error of 0; generate() gives the same records up to
    SAM's predicted IoU, within 8u."""
    from pipeline.sam.generator import FmaMaskGenerator, tiny_sam
    from pycocotools import mask as mask_utils

    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    image[20:70, 30:90] = (200, 40, 40)
    out = {}
    for amp in (False, True):
        gen = FmaMaskGenerator(tiny_sam(), points_per_side=4, crop_n_layers=0, pred_iou_thresh=0.0,
                               stability_score_thresh=0.0, min_mask_region_area=0, amp=amp)
        assert gen.precision.enabled == amp and gen.precision.dtype == torch.bfloat16
        records = gen.generate(image)
        with gen.precision.autocast():
            gen.predictor.set_image(image)
            point = gen.predictor.transform.apply_coords_torch(torch.tensor([[[60.0, 45.0]]]), image.shape[:2])
            logits, iou, _ = gen.predictor.predict_torch(point, torch.ones(1, 1, dtype=torch.int),
                                                         return_logits=True)
        assert logits.dtype == (torch.bfloat16 if amp else torch.float32)
        out[amp] = records, logits.float()
    (rec32, lo32), (rec16, lo16) = out[False], out[True]
    err = (lo16 - lo32).abs().max()
    assert 0 < err <= 8 * U * lo32.abs().max()
    assert torch.equal(lo16[lo32.abs() > err] > 0, lo32[lo32.abs() > err] > 0)
    assert [r["level"] for r in rec16] == [r["level"] for r in rec32] and rec32
    for a, b in zip(rec16, rec32):
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= 8 * U
        assert mask_utils.decode(a["segmentation"]).shape == image.shape[:2]
