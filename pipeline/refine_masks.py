"""CAM seeds -> pseudo masks: background threshold, dense CRF, attention
affinity random walk. Pure numpy + pydensecrf (no torch), so process-pool
workers start fast.

Conventions: ``cams`` is (C_present, H, W) in [0, 1] for the class ids in
``classes``; a label map is (H, W) uint8 of class ids (0 = background,
255 = uncertain).
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from pipeline.cam_store import CamStore
from pipeline.config import AffinityCfg, CrfCfg, PseudoMasksCfg
from pipeline.data.classes import IGNORE
from pipeline.data.datasets import read_image, write_mask


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


def pseudo_mask(image: np.ndarray, cams: np.ndarray, classes: Sequence[int], cfg: PseudoMasksCfg,
                attn: Optional[np.ndarray] = None, grid: Optional[tuple[int, int]] = None,
                patch: Optional[int] = None) -> np.ndarray:
    """One image's pseudo mask by cfg.method. With low/high thresholds and
    ignore_uncertain, the method runs at both thresholds and pixels whose
    labels differ (neither confidently background nor foreground) -> 255."""
    if cfg.method in ("affinity", "affinity_crf"):
        if attn is None:
            raise ValueError(f"pseudo_masks.method '{cfg.method}' needs the patch attention")
        cams = affinity_propagate(cams, attn, grid, patch, cfg.affinity)
    n_labels = len(classes) + 1

    def label(t: float) -> np.ndarray:
        idx = seed_index(cams, t)
        if cfg.method in ("crf", "affinity_crf"):
            idx = crf_index(image, idx, n_labels, cfg.crf)
        return idx

    keys = keys_of(classes)
    if cfg.ignore_uncertain and cfg.low_threshold is not None:
        lo, hi = label(cfg.low_threshold), label(cfg.high_threshold)
        return np.where(lo == hi, keys[hi], IGNORE).astype(np.uint8)
    return keys[label(cfg.bg_threshold)]


# ------------------------------------------------------------ process pool
# Workers import this module only (numpy, pydensecrf, zarr: no torch), so they start fast; the sam
# route's workers import torch on their first image (its seeding is the official torch float32 maths).
_W: dict = {}


def sam_pseudo_mask(path: Path, cams: np.ndarray, classes: Sequence[int], p: float) -> np.ndarray:
    """FMA-WSSS's SAM seeding of one image from its sam_masks file (pipeline/sam_seeding.py)."""
    from pipeline.sam_files import read_masks_json
    from pipeline.sam_seeding import seed_masks

    masks, levels, doc = read_masks_json(path)
    if (doc["height"], doc["width"]) != cams.shape[1:]:
        raise ValueError(f"{path}: masks are {doc['width']}x{doc['height']} but the CAMs "
                         f"{cams.shape[2]}x{cams.shape[1]}")
    return seed_masks(cams.astype(np.float32), classes, masks, levels, p)


def _init(cam_path: str, cfg_json: str, mask_dir: str, pal: Optional[list] = None,
          sam_dir: Optional[str] = None) -> None:
    _W["sam_dir"] = None if sam_dir is None else Path(sam_dir)
    _W["store"] = CamStore(cam_path)
    _W["cfg"] = PseudoMasksCfg.model_validate_json(cfg_json)
    _W["dir"] = Path(mask_dir)
    _W["pal"] = None if pal is None else np.asarray(pal, np.uint8)


def _work(job: tuple) -> str:
    image_id, image_path, attn, grid, patch = job
    cams, classes = _W["store"].read(image_id)
    image = read_image(image_path)
    if cams.shape[1:] != image.shape[:2]:
        raise ValueError(f"image '{image_id}': CAMs are {cams.shape[2]}x{cams.shape[1]} but {image_path} "
                         f"is {image.shape[1]}x{image.shape[0]}")
    try:
        if _W["cfg"].method == "sam":
            mask = sam_pseudo_mask(_W["sam_dir"] / f"{image_id}.json", cams, classes, _W["cfg"].sam_p)
        else:
            mask = pseudo_mask(image, cams.astype(np.float32), classes, _W["cfg"], attn, grid, patch)
    except Exception as e:
        raise RuntimeError(f"image '{image_id}': {e}") from e
    write_mask(_W["dir"] / f"{image_id}.png", mask, _W["pal"])
    return image_id


def _context():
    """forkserver: workers fork from a clean single-threaded server (safe beside
    torch / Prefect threads, unlike fork) that has this module preloaded, so
    they start in milliseconds; spawn where forkserver does not exist."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _pool_map(n: int, init: tuple, jobs: Iterator[tuple]) -> Iterator[str]:
    """_work over jobs in n worker processes, at most 2n jobs in flight so
    lazily computed inputs do not pile up; a failing worker raises here
    instead of hanging the pool."""
    with ProcessPoolExecutor(n, mp_context=_context(), initializer=_init, initargs=init) as ex:
        pending = set()
        for job in jobs:
            pending.add(ex.submit(_work, job))
            if len(pending) >= 2 * n:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        for f in as_completed(pending):
            yield f.result()


def write_masks(jobs: Iterable[tuple], init: tuple, n: int) -> Iterator[str]:
    """Write the pseudo mask of every job (id, image path, attention, grid,
    patch) with n processes; init = (CAM store path, PseudoMasksCfg json,
    mask dir[, PNG palette as a list[, sam_masks dir (method sam)]]). Yields image ids as they finish."""
    if n > 1 and mp.current_process().daemon:
        # e.g. a Dask worker (daemon by default) may not start processes; the
        # flow already spreads shards over workers, so run this shard inline
        n = 1
    if n <= 1:
        _init(*init)
        return map(_work, jobs)
    return _pool_map(n, init, jobs)
