"""SAM seeding in float32, pinned against a written-out copy of the official maths
(HAL-42/FMA-WSSS src/tasks/anns_seed/run.py l. 90-98: CAM cast to float32;
src/libs/seeding/seed_anns/score_cw.py gather_norm_bg_argmax with norm_first=True,
gather 'mean', bg 'pow', priority ('level_bigger', 'conf_bigger'); seed_anns/utils.py
gather_anns / sort_anns / scatter_anns; score.py cam2score_cuda / cat_bg_score_cuda /
idx2seed_cuda; utils/norm.py min_max_norm). The comparison is exact (labels equal): the
same float32 operations in the same order give the same numbers."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.pseudo_masks.routes.sam import seed_masks


def official_seed(cam: np.ndarray, fg0: np.ndarray, masks: np.ndarray, levels, p: float) -> np.ndarray:
    """The official function, step by step (fg0: 0-based class indices as the official fg_cls)."""
    cam = torch.as_tensor(cam, dtype=torch.float32)                         # run.py: dtype=torch.float32
    fg_cls = torch.as_tensor(fg0, dtype=torch.uint8)
    m = torch.as_tensor(masks, dtype=torch.bool)                            # stack_data: bool masks
    areas = torch.as_tensor(masks.sum((1, 2)), dtype=torch.int32)           # stack_data: int32 areas
    fg_score = torch.maximum(cam, torch.tensor(0, dtype=cam.dtype))         # norm_first=True: relu
    anns_arr = fg_score[:, None, :, :] * m[None, :, :, :]                   # gather_anns
    g = (torch.sum(anns_arr, dim=(2, 3)) / areas[None, :])[:, None, :]      # 'mean', keep_2d
    g = torch.maximum(g, torch.tensor(0., dtype=g.dtype))                   # min_max_norm(thresh=0.)
    lo, hi = g.amin(dim=(1, 2), keepdim=True), g.amax(dim=(1, 2), keepdim=True)
    s = (g - lo) / (hi - lo + 1e-7)
    bg = torch.pow(1 - torch.amax(s, dim=0, keepdim=True), p)               # cat_bg_score_cuda 'pow'
    scores = torch.cat((bg, s), dim=0)
    idx = torch.argmax(scores, dim=0)
    cls_lb = torch.nn.functional.pad(fg_cls + 1, (1, 0), mode="constant", value=0)
    seed = cls_lb[idx][0].tolist()
    conf = torch.gather(scores, dim=0, index=idx[None, ...])[0][0].tolist()
    anns = [{"level": int(l), "conf": c, "seed": v, "mask": m[i]} for i, (l, c, v) in
            enumerate(zip(levels, conf, seed))]
    out = torch.zeros(masks.shape[1:], dtype=torch.uint8)
    for a in sorted(anns, key=lambda a: [a["level"], a["conf"]]):           # sort_anns, scatter_anns
        out[a["mask"]] = a["seed"]
    return out.numpy()


def near_tie_case(rng: np.random.Generator):
    """A random image with the near-ties of real CAMs: a class constant over the image,
    two classes with equal CAMs (one mask the top mask of both), CAMs rounded to the
    float16 of the CAM store, masks that repeat or nest."""
    h, w = rng.integers(4, 24, size=2)
    n_cls, n_masks = int(rng.integers(1, 5)), int(rng.integers(1, 12))
    cam = rng.random((n_cls, h, w))
    kind = rng.integers(0, 4)
    if kind == 0:
        cam[rng.integers(n_cls)] = rng.random()                      # constant class
    elif kind == 1 and n_cls > 1:
        cam[1] = cam[0]                                              # two classes, one CAM
    elif kind == 2:
        cam = np.round(cam * 4) / 4                                  # few distinct values
    cam = cam.astype(np.float16)                                     # the store's precision
    masks = np.zeros((n_masks, h, w), bool)
    for k in range(n_masks):
        if k and rng.random() < 0.2:
            masks[k] = masks[rng.integers(k)]                        # a repeated mask
            continue
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        masks[k, y0:rng.integers(y0 + 1, h + 1), x0:rng.integers(x0 + 1, w + 1)] = True
    levels = rng.integers(0, 3, n_masks)
    fg = np.sort(rng.choice(20, n_cls, replace=False)) + 1
    p = float(rng.choice([0.6, 0.7, 1.0, 0.5]))
    return cam, fg, masks, levels, p


def test_float32_seeding_equals_the_official_maths_on_1200_near_tie_cases():
    rng = np.random.default_rng(0)
    differs64 = 0
    for _ in range(1200):
        cam, fg, masks, levels, p = near_tie_case(rng)
        ref = official_seed(cam.astype(np.float32), fg - 1, masks, levels, p)
        out = seed_masks(cam, fg, masks, levels, p)
        assert np.array_equal(out, ref)
        # the same maths in float64 decides some of these ties otherwise: the cases are real near-ties
        differs64 += not np.array_equal(official_seed_f64(cam, fg - 1, masks, levels, p), ref)
    assert differs64 >= 10


def official_seed_f64(cam, fg0, masks, levels, p):
    """The official maths fed a float64 CAM (what the float32 cast changes)."""
    cam = torch.as_tensor(cam, dtype=torch.float64)
    m = torch.as_tensor(masks)
    g = (torch.sum(torch.relu(cam)[:, None] * m[None], dim=(2, 3)) / m.sum((1, 2))[None])[:, None]
    s = (g - g.amin((1, 2), keepdim=True)) / (g.amax((1, 2), keepdim=True) - g.amin((1, 2), keepdim=True) + 1e-7)
    scores = torch.cat((torch.pow(1 - s.amax(0, keepdim=True), p), s))
    idx = scores.argmax(0)[0]
    conf = scores.gather(0, idx[None, None])[0, 0].tolist()
    lab = np.concatenate([[0], fg0 + 1])[idx.numpy()]
    out = np.zeros(masks.shape[1:], np.uint8)
    for j in sorted(range(len(levels)), key=lambda j: [int(levels[j]), conf[j]]):
        out[masks[j]] = lab[j]
    return out


def test_chunked_gather_gives_the_same_labels_on_a_large_image():
    # 300 x 240 = 72,000 pixels per (class, mask): above torch's 32,768-element grain, so the
    # sums run multi-threaded; chunks of 2 masks must give the unchunked numbers bit for bit
    rng = np.random.default_rng(1)
    h, w = 240, 300
    cam = rng.random((3, h, w)).astype(np.float16)
    cam[2] = np.float16(0.37)
    masks = np.zeros((9, h, w), bool)
    for k in range(9):
        y0, x0 = rng.integers(0, h - 10), rng.integers(0, w - 10)
        masks[k, y0:y0 + rng.integers(5, 120), x0:x0 + rng.integers(5, 150)] = True
    levels = rng.integers(0, 3, 9)
    ref = official_seed(cam.astype(np.float32), np.array([0, 4, 9]), masks, levels, 0.7)
    for max_bytes in (1, 1 << 30):
        assert np.array_equal(seed_masks(cam, [1, 5, 10], masks, levels, 0.7, max_bytes=max_bytes), ref)
