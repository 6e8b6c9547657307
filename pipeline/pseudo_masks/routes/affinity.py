"""The affinity routes (affinity, affinity_crf): the CAMs propagated by a random
walk over the mask generator's patch attention, then labelled as the threshold
routes do (pipeline/pseudo_masks/threshold.py), affinity_crf with the dense CRF.
Pure numpy (no torch): the attention comes with the job from the parent process."""
from __future__ import annotations

from functools import partial

import numpy as np
from pydantic import Field

from pipeline.pseudo_masks.routes.threshold import CrfParams
from pipeline.pseudo_masks.threshold import crf_words, threshold_mask, threshold_words
from pipeline.registry import Route
from pipeline.section import Section


class AffinityCfg(Section):
    """Random walk over the mask generator's patch attention."""
    beta: float = Field(8.0, gt=0, description="affinity = symmetrised attention ** beta")
    iterations: int = Field(6, ge=1, description="random-walk steps on the patch grid")


class AffinityParams(Section):
    affinity: AffinityCfg = Field(default_factory=AffinityCfg)


def affinity_propagate(cams: np.ndarray, attn: np.ndarray, grid: tuple[int, int], patch: int,
                       cfg: AffinityCfg) -> np.ndarray:
    """Random walk of the CAMs over a label-free affinity (AffinityNet, Ahn &
    Kwak CVPR 2018) whose affinity is the mask generator's patch-to-patch
    attention instead of a trained AffinityNet (as attention-affinity methods
    such as AFA/ToCo do): A = sym(attn) ** beta, transition T = A with columns
    normalised to sum 1, scores v <- v T for ``iterations`` steps on the patch
    grid (patch means of the CAMs); the result is upsampled back (bilinear).
    Background then comes from the same threshold as the seeds, not from
    AffinityNet's (1 - max CAM) ** alpha channel.

    cams: (C, H, W); attn: (N, N) with N = h * w of the padded input's grid."""
    C, H, W = cams.shape
    gh, gw = grid
    if attn.shape != (gh * gw, gh * gw):
        raise ValueError(f"attention of shape {attn.shape} does not match the {gh}x{gw} patch grid")
    if gh * patch < H or gw * patch < W:
        raise ValueError(f"patch grid {gh}x{gw} (patch {patch}) does not cover the {W}x{H} image")
    padded = np.zeros((C, gh * patch, gw * patch), np.float32)
    padded[:, :H, :W] = cams
    v = padded.reshape(C, gh, patch, gw, patch).mean((2, 4)).reshape(C, -1)  # patch averages
    a = (attn + attn.T).astype(np.float64)
    # dividing each column by its max first leaves T unchanged (columns are
    # normalised anyway) but keeps attention ** beta (~(1/N) ** 8) from underflowing
    a = (a / np.maximum(a.max(0, keepdims=True), 1e-30)) ** cfg.beta
    t = a / a.sum(0, keepdims=True)
    for _ in range(cfg.iterations):
        v = v @ t
    v = v.reshape(C, gh, gw).astype(np.float32)
    # no re-normalisation: each step is a weighted average, so scores stay in
    # [0, 1] and the background threshold keeps its meaning (min-max of a
    # walk that has flattened the map would blow up rounding noise)
    return np.clip(_bilinear(v, gh * patch, gw * patch)[:, :H, :W], 0, 1)


def _bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """(C, h0, w0) -> (C, h, w), half-pixel centres (align_corners=False)."""
    def axis(n_out, n_in):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(np.float32)
    y0, y1, fy = axis(h, x.shape[1])
    x0, x1, fx = axis(w, x.shape[2])
    rows = x[:, y0] * (1 - fy)[None, :, None] + x[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def walked_mask(image, cams, classes, cfg, job, setup, crf: bool) -> np.ndarray:
    if job.attention is None:
        raise ValueError(f"pseudo_masks.method '{cfg.method}' needs the patch attention")
    attn, grid, patch = job.attention
    cams = affinity_propagate(cams, attn, grid, patch, cfg.affinity)
    return threshold_mask(image, cams, classes, cfg, crf=crf)


def walk_words(pm: dict) -> str:
    aff = pm.get("affinity") or {}
    return f"random walk beta {aff.get('beta')}, {aff.get('iterations')} steps"


ROUTES = (
    Route("affinity", partial(walked_mask, crf=False),
          lambda pm, inputs: f"{threshold_words(pm)}; attention {walk_words(pm)}",
          params=(AffinityParams,), attention=True),
    Route("affinity_crf", partial(walked_mask, crf=True),
          lambda pm, inputs: f"{threshold_words(pm)}; {walk_words(pm)}; {crf_words(pm)}",
          params=(AffinityParams, CrfParams), attention=True),
)
