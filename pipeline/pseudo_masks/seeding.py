"""FMA-WSSS's SAM-based seeding: label SAM's masks from the CAMs.

Official code (HAL-42/FMA-WSSS): src/libs/seeding/seed_anns/score_cw.py
(gather_norm_bg_argmax), src/libs/seeding/score.py, src/utils/norm.py.
The same maths, written with numpy. This is the pseudo-mask route ``sam``: it
labels the masks of the sam_masks stage (pipeline/sam/).

- g[c, k] = mean of relu(cam_c) over mask k (the "mean" gather);
- s[c, k] = (g[c, k] - min_k g[c]) / (max_k g[c] - min_k g[c] + 1e-7), the
  min-max ACROSS the image's masks (norm.py's eps);
- b[k] = (1 - max_c s[c, k]) ** p (the 'pow' background method);
- label = argmax over [b; s] (background first, so ties go to background),
  conf = the winning score;
- masks painted in stable ascending (level, conf) order, later ones on top:
  whole > part > sub-part, and the more confident mask wins within a level.
  Pixels no mask covers stay 0 (background); no 255, no CRF.

The official pipeline min-max normalises the CAM over pixels before the
gather as well (norm_first); the min-max across masks cancels that positive
affine map (up to its eps), so it is not repeated here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.artifacts import SamArtifact
from pipeline.sam.files import read_masks_json

EPS = 1e-7  # src/utils/norm.py min_max_norm


def seed_masks(cam: np.ndarray, fg_classes, masks: np.ndarray, levels, p: float) -> np.ndarray:
    """(H, W) uint8 labels (0 = background, else fg_classes[i]).

    cam (P, H, W) float at image size for the image's present classes,
    fg_classes (P,) their dataset label ids, masks (S, H, W) bool, levels (S,)
    int, p the background exponent. Masks of zero area paint nothing and take
    no part in the normalisation (the official mean would divide by zero)."""
    cam = np.asarray(cam, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    fg = np.asarray(fg_classes, dtype=np.int64).reshape(-1)
    levels = np.asarray(levels, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != len(fg):
        raise ValueError(f"cam must be (P, H, W) with P = len(fg_classes) = {len(fg)}, got {cam.shape}")
    if masks.ndim != 3 or masks.shape[1:] != cam.shape[1:] or len(levels) != len(masks):
        raise ValueError(f"masks must be (S, H, W) = (S, {cam.shape[1]}, {cam.shape[2]}) with S = len(levels) "
                         f"= {len(levels)}, got {masks.shape}")
    if len(fg) and not ((fg >= 1) & (fg <= 255)).all():
        raise ValueError(f"fg_classes must be label ids in 1..255, got {fg.tolist()}")
    out = np.zeros(cam.shape[1:], dtype=np.uint8)
    area = masks.sum((1, 2))
    keep = np.flatnonzero(area > 0)
    if len(keep) == 0 or len(fg) == 0:
        return out
    flat = masks[keep].reshape(len(keep), -1).astype(np.float64)  # len(keep) > 0 here
    g = np.maximum(cam, 0).reshape(len(fg), -1) @ flat.T / area[keep]  # (P, S')
    lo, hi = g.min(1, keepdims=True), g.max(1, keepdims=True)
    s = (g - lo) / (hi - lo + EPS)
    b = (1.0 - s.max(0)) ** p
    scores = np.concatenate([b[None], s], 0)  # (1 + P, S'): background first
    idx = scores.argmax(0)  # first maximum: ties go to background
    conf = scores[idx, np.arange(len(keep))]
    labels = np.concatenate([[0], fg])[idx]
    order = np.lexsort((conf, levels[keep]))  # stable, ascending level, then conf
    for j in order:
        out[masks[keep[j]]] = labels[j]
    return out


def sam_pseudo_mask(path: Path, cams: np.ndarray, classes, p: float) -> np.ndarray:
    """The seeding of one image from its sam_masks file."""
    masks, levels, doc = read_masks_json(path)
    if (doc["height"], doc["width"]) != cams.shape[1:]:
        raise ValueError(f"{path}: masks are {doc['width']}x{doc['height']} but the CAMs "
                         f"{cams.shape[2]}x{cams.shape[1]}")
    return seed_masks(cams, classes, masks, levels, p)


def route_mask(image, cams, classes, cfg, job, setup) -> np.ndarray:
    path = SamArtifact(setup.inputs["sam_masks"]).image(setup.split, job.image_id)  # sam.split = the CAMs' split
    return sam_pseudo_mask(path, cams, classes, cfg.sam_p)
