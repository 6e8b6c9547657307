"""FMA-WSSS's CAA (pipeline/cams/caa.py) against a written-out copy of the official maths:
HAL-42/FMA-WSSS src/libs/seeding/aff/caller.py att_cam, tools.py merge_att / att2aff /
get_aff_mask / aff_cam, utils.py scoremap2bbox, src/utils/norm.py min_max_norm, and the
attention FMA stores (src/tasks/infer_cam/run.py: heads averaged by nn.MultiheadAttention,
merge_att of the last 8 layers, float16)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.cams.caa import box_mask, refine
from pipeline.models.mask_generator import merged_attention
from pipeline.config import CaaCfg


# ---------------------------------------------------------------- the official maths, written out
def ref_scoremap2bbox(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    height, width = scoremap.shape
    scoremap_image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    _, thr = cv2.threshold(src=scoremap_image, thresh=int(threshold * np.max(scoremap_image)), maxval=255,
                           type=cv2.THRESH_BINARY)
    contours = cv2.findContours(image=thr, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.asarray([[0, 0, 0, 0]])
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        x0, y0, x1, y1 = x, y, x + w, y + h
        boxes.append([x0, y0, min(x1, width - 1), min(y1, height - 1)])
    return np.asarray(boxes)


def ref_score(cam: torch.Tensor) -> torch.Tensor:
    """cam2score_cuda(cam, cam.shape[1:], resize_first=True): no resize, min_max_norm(thresh=0.)."""
    arr = torch.maximum(cam, torch.tensor(0., dtype=cam.dtype))
    lo, hi = arr.amin(dim=(1, 2), keepdim=True), arr.amax(dim=(1, 2), keepdim=True)
    return (arr - lo) / (hi - lo + 1e-7)


def ref_att_cam(att: np.ndarray, cam: np.ndarray, n_iter: int, thresh: float, n_iters: int, aff_at: str):
    """att (hw, hw) as aff_cam/run.py loads it (float16 file -> float32), cam (P, h, w) float32.
    Everything after the score in float64."""
    P, H, W = cam.shape
    score = ref_score(torch.from_numpy(cam)).numpy()                  # float32, as on the GPU
    aff = att.astype(np.float64)
    for _ in range(n_iter):                                           # att2aff 'sink-horn'
        aff = aff / aff.sum(0, keepdims=True)
        aff = aff / aff.sum(1, keepdims=True)
    aff = (aff + aff.T) / 2
    mask = np.zeros((P, H, W))
    for s, m in zip(score, mask):                                     # get_aff_mask 'thresh-bbox'
        for x0, y0, x1, y1 in ref_scoremap2bbox(s, thresh):
            m[y0:y1, x0:x1] = 1
    mask = mask.reshape(P, H * W)
    in_b = mask.reshape(P, H * W, 1) * mask.reshape(P, 1, -1)         # to_in_bbox = 'in_bbox'
    out_b = (1 - mask.reshape(P, H * W, 1)) * mask.reshape(P, 1, -1)  # to_out_bbox = 'in_bbox'
    aff = np.linalg.matrix_power(aff, n_iters)[None] * (in_b + out_b)  # aff_cam
    x = (cam if aff_at == "cam" else score).astype(np.float64).reshape(P, H * W, 1)
    return (aff @ x).reshape(P, H, W), mask.reshape(P, H, W)


def ref_merged_attention(maps: np.ndarray, heads: int, n_cls: int, last_n: int) -> np.ndarray:
    """maps (heads * L, T, T), channel = head * L + layer (the mask generator's stacking):
    nn.MultiheadAttention's head average per layer, merge_att over the last layers without
    the class tokens, stored as float16."""
    L = maps.shape[0] // heads
    per_layer = np.stack([np.mean([maps[h * L + l] for h in range(heads)], 0) for l in range(L)])
    return per_layer[-last_n:, n_cls:, n_cls:].mean(0).astype(np.float16).astype(np.float32)


# ---------------------------------------------------------------- tests
def _softmax_att(rng, n, peaked=4.0):
    logits = rng.normal(size=(n, n)) * peaked
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_refine_equals_the_official_att_cam(seed):
    rng = np.random.default_rng(seed)
    h, w, P = int(rng.integers(3, 11)), int(rng.integers(3, 11)), int(rng.integers(1, 4))
    n = h * w
    cam = (rng.random((P, h, w)) ** 3).astype(np.float32)
    cam[:, : h // 2] *= 0.1                                          # several blobs, some at the border
    att = _softmax_att(rng, n)
    for cfg in (CaaCfg(), CaaCfg(box_thresh=0.4, at="score"), CaaCfg(sinkhorn_iters=3, power=1, box_thresh=0.7),
                CaaCfg(sinkhorn_iters=0, power=3, box_thresh=0.2)):
        want, mask = ref_att_cam(att, cam, cfg.sinkhorn_iters, cfg.box_thresh, cfg.power, cfg.at)
        got = refine(torch.from_numpy(cam)[None], torch.from_numpy(att)[None], cfg)[0].numpy()
        # float32 vs float64: each of the 2 x sinkhorn + power + 1 steps sums <= n terms of one sign,
        # relative error <= n 2^-24 each; the bound is taken on the largest |value|
        tol = (2 * cfg.sinkhorn_iters + cfg.power + 1) * n * 2.0 ** -24 * max(np.abs(want).max(), 1e-30)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        # a wrong Sinkhorn order (rows first) or boxes left out are far outside it
        if cfg.sinkhorn_iters and 0 < mask.mean() < 1:
            wrong, _ = ref_att_cam(att.T.copy(), cam, cfg.sinkhorn_iters, cfg.box_thresh, cfg.power, cfg.at)
            assert np.abs(got - wrong).max() > 10 * tol
            nobox = refine(torch.from_numpy(cam)[None], torch.from_numpy(att)[None],
                           cfg.model_copy(update={"box_thresh": 0.0}))[0].numpy()
            assert np.abs(nobox - want).max() > 10 * tol


def test_boxes_of_several_blobs_a_border_blob_and_an_all_zero_cam():
    s = np.zeros((10, 12), np.float32)
    s[1:3, 1:4] = 1.0       # blob 1
    s[5:8, 6:9] = 0.8       # blob 2 (0.8 * 255 = 204 > int(0.5 * 255) = 127)
    s[4, 4] = 0.3           # below the threshold: no box
    m = box_mask(s, 0.5)
    expect = np.zeros_like(s)
    expect[1:3, 1:4] = 1
    expect[5:8, 6:9] = 1
    assert np.array_equal(m, expect)
    # a blob touching the right and bottom borders: the official clip to W-1 / H-1 drops the last column and row
    s = np.zeros((6, 7), np.float32)
    s[3:6, 4:7] = 1.0
    m = box_mask(s, 0.5)
    expect = np.zeros_like(s)
    expect[3:5, 4:6] = 1
    assert np.array_equal(m, expect)
    # a ring: RETR_TREE's inner contour (the hole) lies inside the outer box
    s = np.zeros((9, 9), np.float32)
    s[1:8, 1:8] = 1
    s[3:6, 3:6] = 0
    expect = np.zeros_like(s)
    expect[1:8, 1:8] = 1
    assert np.array_equal(box_mask(s, 0.5), expect)
    # the threshold is int(t * max of the uint8 map) and strict (THRESH_BINARY: > thresh)
    s = np.array([[0.5, 0.2, 1.0, 0.0]], np.float32)  # uint8 127, 51, 255, 0; t 0.5 -> 127: 127 is not above
    assert box_mask(np.vstack([s, s * 0]), 0.5).tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    # all zero: no contour, no box ([[0, 0, 0, 0]] in the official), so the class refines to zero
    assert not box_mask(np.zeros((5, 5), np.float32), 0.5).any()
    cam = np.zeros((2, 4, 4), np.float32)
    cam[1, 1:3, 1:3] = 1.0
    att = _softmax_att(np.random.default_rng(0), 16)
    out = refine(torch.from_numpy(cam)[None], torch.from_numpy(att)[None], CaaCfg())[0].numpy()
    assert not out[0].any() and out[1].max() > 0
    want, _ = ref_att_cam(att, cam, 1, 0.5, 2, "cam")
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_merged_attention_averages_heads_then_the_last_layers_without_class_tokens():
    rng = np.random.default_rng(3)
    heads, L, K, n = 3, 5, 4, 6
    maps = rng.random((2, heads * L, K + n, K + n)).astype(np.float32)
    got = merged_attention(torch.from_numpy(maps), heads, K, 2).numpy()
    for b in range(2):
        # float32 means of <= 3 and 2 terms, then float16 rounding: equal up to one float16 step
        np.testing.assert_allclose(got[b], ref_merged_attention(maps[b], heads, K, 2), rtol=2 ** -10, atol=0)
    assert torch.equal(torch.from_numpy(got), torch.from_numpy(got).half().float())  # FMA's float16 file
    # the head-major layout matters: a layer-major reading gives other numbers
    wrong = maps.reshape(2, L, heads, K + n, K + n).mean(2)[:, -2:, K:, K:].mean(1)
    assert np.abs(got - wrong).max() > 1e-2


def test_the_mask_generator_hands_out_the_attention_caa_needs(smoke_cfg):
    from pipeline.models.mask_generator import build_mask_generator
    torch.manual_seed(0)
    model = build_mask_generator(smoke_cfg.mask_generator, 20, load_weights=False).eval()
    x = torch.randn(1, 3, 64, 80)
    maps = []
    for blk in model.vit.blocks:  # the softmax maps, as the model keeps them
        blk.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(i[0].detach()))
    with torch.no_grad():
        out = model(x, caa_layers=3)
    per_layer = torch.stack(maps, 1)[0].mean(1)  # (L, T, T): heads averaged
    want = per_layer[-3:, 20:, 20:].mean(0).half().float()
    assert out["caa_attn"].shape == (1, 20, 20)  # 4 x 5 patches
    torch.testing.assert_close(out["caa_attn"][0], want, rtol=2 ** -10, atol=0)
    assert "caa_attn" not in model(x)


def test_export_with_caa_refines_every_forward_and_needs_a_vit(tmp_path):
    from pipeline.cams.inference import infer_cams, infer_cams_batch
    from pipeline.cams.caa import refine as caa_refine
    from pipeline.config import load_config
    from pipeline.models.mask_generator import build_mask_generator, normalize_numpy

    cfg = load_config("configs/voc-smoke.yaml", overrides={"run": {"work_dir": str(tmp_path)}})
    torch.manual_seed(0)
    model = build_mask_generator(cfg.mask_generator, 20, load_weights=False).eval()
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    caa = CaaCfg(enabled=True)
    raw = infer_cams(model, image, [3, 7], (1.0,), flip=False)
    got = infer_cams(model, image, [3, 7], (1.0,), flip=False, caa=caa)
    # by hand: one forward, CAA on the grid of the two classes, bilinear to the image, min-max
    with torch.no_grad():
        out = model(normalize_numpy(image)[None], caa_layers=caa.last_n_layers)
        grid = caa_refine(out["fine"][:, [2, 6]], out["caa_attn"], caa)
        up = torch.nn.functional.interpolate(grid, size=(50, 70), mode="bilinear", align_corners=False)[0]
    flat = up.flatten(1)
    want = ((up - flat.min(1).values[:, None, None]) / (flat.max(1).values - flat.min(1).values + 1e-8)[:, None, None])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    assert np.abs(got - raw).max() > 1e-2
    # the batched export path gives the same CAA CAMs
    scaled = [torch.from_numpy(image)[None]]
    batch = infer_cams_batch(model, scaled, [[3, 7]], (50, 70), flip=True, caa=caa)[0].numpy()
    np.testing.assert_allclose(batch, infer_cams(model, image, [3, 7], (1.0,), flip=True, caa=caa), atol=5e-4)
    cnn = build_mask_generator(cfg.mask_generator.model_copy(update={"arch": "cnn", "backbone": "resnet18"}), 20,
                               load_weights=False).eval()
    with pytest.raises(ValueError, match="CAA needs the attention of a ViT"):
        infer_cams(cnn, image, [3], (1.0,), caa=caa)
