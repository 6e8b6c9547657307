"""CAM seeds -> labels by a background threshold, optionally refined by a dense CRF: the
seed labelling every route and the evaluation share, the labelling of the threshold and
affinity routes (pipeline/pseudo_masks/routes/), with the dense CRF of pipeline/crf.py.
Pure numpy + pydensecrf (no torch), so process-pool workers start fast.

Conventions: ``cams`` is (C_present, H, W) in [0, 1] for the class ids in
``classes``; a label map is (H, W) uint8 of class ids (0 = background,
255 = uncertain).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from pipeline.crf import crf_index
from pipeline.data.classes import IGNORE

if TYPE_CHECKING:
    from pipeline.config import PseudoMasksCfg


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
