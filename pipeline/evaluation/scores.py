"""Seed and pseudo-mask evaluation against ground truth, as the official
evaluation.py measures them: a seed is argmax over [t, CAMs of the present
classes] (background wins ties), scored by a confusion matrix over all images
(ignore = 255 skipped), mIoU = mean IoU of the classes present in GT or
prediction."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from pipeline.cams.store import CamStore
from pipeline.data.datasets import read_mask
from pipeline.evaluation.metrics import Confusion, seed_confusions
from pipeline.pseudo_masks.threshold import keys_of


def sweep_seeds(items: Iterable[tuple[str, np.ndarray, Sequence[int], np.ndarray]], thresholds: Iterable[float],
                num_classes: int, class_names=None) -> dict[float, dict]:
    """items: (image id, CAMs (C_present, H, W), their class ids, GT mask).
    Scores of the seeds of all items at every background threshold, in one
    pass: {threshold: scores + fg precision/recall}."""
    meters = _seed_meters(thresholds, num_classes)
    for image_id, cams, classes, gt in items:
        _add_seeds(meters, image_id, cams, classes, gt, num_classes)
    return {t: m.summary(class_names) for t, m in meters.items()}


def _seed_meters(thresholds: Iterable[float], num_classes: int) -> dict[float, Confusion]:
    return {t: Confusion(num_classes) for t in sorted(set(float(t) for t in thresholds))}


def _add_seeds(meters: dict[float, Confusion], image_id: str, cams: np.ndarray, classes: Sequence[int],
               gt: np.ndarray, num_classes: int) -> None:
    if gt.shape != cams.shape[1:]:
        raise ValueError(f"image '{image_id}': CAMs are {cams.shape[2]}x{cams.shape[1]}, "
                         f"ground truth is {gt.shape[1]}x{gt.shape[0]}")
    cams = cams.astype(np.float32)
    best = cams.argmax(0)
    top = np.take_along_axis(cams, best[None], 0)[0]
    cms = seed_confusions(top, keys_of(classes)[best + 1], gt, np.array(list(meters)), num_classes)
    for cm, meter in zip(cms, meters.values()):
        meter.cm += cm


def _add_mask(meter: Confusion, path: Path, image_id: str, gt: np.ndarray) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: pseudo mask missing for image '{image_id}'")
    try:
        meter.add(read_mask(path), gt)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def score_images(ids: Sequence[str], gt_path: Callable[[str], str | Path], num_classes: int, class_names=None,
                 store: Optional[CamStore] = None, thresholds: Iterable[float] = (),
                 masks: Optional[dict[str, Callable[[str], str | Path]]] = None,
                 progress=lambda it, n: it) -> tuple[dict[float, dict], dict[str, dict]]:
    """One pass over the images, each ground-truth mask decoded once and every source scored
    against it: the seeds of ``store`` at every background threshold, and the label PNGs of
    each of ``masks`` (name -> the PNG of an image; 255 = uncertain counts as missed, a
    missing PNG is an error). Returns ({threshold: scores} ({} without a store),
    {name: scores})."""
    seeds = _seed_meters(thresholds, num_classes) if store is not None else {}
    masks = masks or {}
    meters = {name: Confusion(num_classes) for name in masks}
    for image_id in progress(ids, len(ids)):
        gt = read_mask(gt_path(image_id))
        if seeds:
            cams, classes = store.read(image_id)
            _add_seeds(seeds, image_id, cams, classes, gt, num_classes)
        for name, path in masks.items():
            _add_mask(meters[name], Path(path(image_id)), image_id, gt)
    return ({t: m.summary(class_names) for t, m in seeds.items()},
            {name: m.summary(class_names) for name, m in meters.items()})


def official_threshold(curve: dict[float, float]) -> tuple[float | None, float]:
    """The threshold the official sweep reports (SemPLeS / WeakTr evaluation.py whole_eval):
    thresholds in ascending order, each kept while its mIoU beats the best so far (which starts
    at 0), the loop stopping at the first that does not. Returns (threshold, mIoU); (None, 0.0)
    when the first threshold scores 0 (the official loop then reports threshold 0.0)."""
    best_t, best = None, 0.0
    for t in sorted(curve):
        if curve[t] > best:
            best_t, best = t, curve[t]
        else:
            break
    return best_t, best


def best_threshold(curve: dict[float, float]) -> tuple[float, float]:
    """The global maximum of the sweep (ties: the lower threshold); (threshold, mIoU)."""
    t = max(curve, key=lambda t: (curve[t], -t))
    return t, curve[t]


def evaluate_seeds(store: CamStore, ids: Sequence[str], gt_path: Callable[[str], str | Path],
                   thresholds: Iterable[float], num_classes: int, class_names=None,
                   progress=lambda it, n: it) -> dict[float, dict]:
    """Score the seeds of every image at every background threshold in one
    pass over the store: {threshold: scores + fg precision/recall}."""
    return score_images(ids, gt_path, num_classes, class_names, store, thresholds, progress=progress)[0]


def evaluate_masks(mask_path: Callable[[str], str | Path], ids: Sequence[str],
                   gt_path: Callable[[str], str | Path], num_classes: int, class_names=None) -> dict:
    """Scores of label PNGs (255 = uncertain counts as missed) against GT; a missing PNG is an error."""
    return score_images(ids, gt_path, num_classes, class_names, masks={"masks": mask_path})[1]["masks"]
