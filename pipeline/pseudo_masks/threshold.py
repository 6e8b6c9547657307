"""CAM seeds -> labels by a background threshold, optionally refined by a dense CRF: the
seed labelling every route and the evaluation share, the labelling of the threshold and
affinity routes (pipeline/pseudo_masks/routes/) and the CRF the final model may use too.
Pure numpy + pydensecrf (no torch), so process-pool workers start fast.

Conventions: ``cams`` is (C_present, H, W) in [0, 1] for the class ids in
``classes``; a label map is (H, W) uint8 of class ids (0 = background,
255 = uncertain).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from pydantic import Field

from pipeline.data.classes import IGNORE
from pipeline.section import NonNegative, Positive, Section

if TYPE_CHECKING:
    from pipeline.config import PseudoMasksCfg


class CrfCfg(Section):
    """pydensecrf parameters; defaults = WeakTr's VOC CAM-CRF (tool/imutils.py)."""
    iterations: int = Field(10, ge=1)
    gauss_sxy: Positive = 4
    gauss_compat: NonNegative = 3
    bilateral_sxy: Positive = 83
    bilateral_srgb: Positive = 5
    bilateral_compat: NonNegative = 3
    gt_prob: float = Field(0.7, gt=0, lt=1, description="pydensecrf unary_from_labels: confidence in the seed labels")


def keys_of(classes: Sequence[int]) -> np.ndarray:
    """Index -> class id lookup of a seed with a background channel in front."""
    return np.array([0, *classes], dtype=np.uint8)


def seed_index(cams: np.ndarray, bg_threshold: float) -> np.ndarray:
    """Index map (0 = background, k = classes[k-1]) of argmax over [t, cams]:
    the official evaluation pads a constant background score t in front, so
    background wins ties (a pixel is foreground only if its CAM exceeds t)."""
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], np.uint8)
    best = cams.argmax(0)
    fg = np.take_along_axis(cams, best[None], 0)[0] > bg_threshold
    return np.where(fg, best + 1, 0).astype(np.uint8)


def seed_labels(cams: np.ndarray, classes: Sequence[int], bg_threshold: float) -> np.ndarray:
    return keys_of(classes)[seed_index(cams, bg_threshold)]


def crf_index(image: np.ndarray, index: np.ndarray, n_labels: int, cfg: CrfCfg) -> np.ndarray:
    """Dense CRF over the image's own labels only (n_labels = 1 + present
    classes), as WeakTr's crf_inference_label: the unary comes from the hard
    seed labels (unary_from_labels, gt_prob, zero_unsure=False), then a
    Gaussian and a bilateral pairwise term."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    h, w = index.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image size {image.shape[1]}x{image.shape[0]} != seed size {w}x{h}")
    if n_labels < 2:
        return index
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(index, n_labels, gt_prob=cfg.gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=cfg.gauss_sxy, compat=cfg.gauss_compat)
    d.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb,
                           rgbim=np.array(image, dtype=np.uint8, order="C"), compat=cfg.bilateral_compat)
    q = np.asarray(d.inference(cfg.iterations)).reshape(n_labels, h, w)
    return q.argmax(0).astype(np.uint8)


def threshold_mask(image: np.ndarray, cams: np.ndarray, classes: Sequence[int], cfg: PseudoMasksCfg,
                   crf: bool) -> np.ndarray:
    """One image's pseudo mask from ``cams`` at cfg.bg_threshold, with a dense CRF if ``crf``.
    With low/high thresholds and ignore_uncertain, the labelling runs at both thresholds and
    pixels whose labels differ (neither confidently background nor foreground) -> 255."""
    n_labels = len(classes) + 1

    def label(t: float) -> np.ndarray:
        idx = seed_index(cams, t)
        if crf:
            idx = crf_index(image, idx, n_labels, cfg.crf)
        return idx

    keys = keys_of(classes)
    if cfg.ignore_uncertain and cfg.low_threshold is not None:
        lo, hi = label(cfg.low_threshold), label(cfg.high_threshold)
        return np.where(lo == hi, keys[hi], IGNORE).astype(np.uint8)
    return keys[label(cfg.bg_threshold)]


def threshold_words(pm: dict) -> str:
    """The thresholds of a pseudo_masks section in words (protocol card)."""
    bands = (f"; uncertain band {pm.get('low_threshold')}..{pm.get('high_threshold')} -> 255"
             if pm.get("low_threshold") is not None else "")
    return f"background threshold {pm.get('bg_threshold')}{bands}"


def crf_words(pm: dict) -> str:
    return "dense CRF " + ", ".join(f"{k} {v}" for k, v in (pm.get("crf") or {}).items())
