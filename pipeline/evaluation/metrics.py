"""Confusion-matrix metrics (ignore = 255) shared by every evaluation."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.classes import IGNORE


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, C) int64 confusion matrix (rows = ground truth, cols = prediction)
    and (C,) 'missed' counts of GT pixels predicted IGNORE.
    Pixels whose GT is IGNORE are skipped; a predicted IGNORE (an uncertain
    pseudo-label pixel) counts as no class, so it lowers recall."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    keep = gt != IGNORE
    gt, pred = gt[keep], pred[keep]
    if gt.size and gt.max() >= num_classes:
        raise ValueError(f"ground-truth label {gt.max()} >= num_classes {num_classes}")
    valid = pred < num_classes
    cm = np.bincount(num_classes * gt[valid] + pred[valid], minlength=num_classes ** 2)
    cm = cm.reshape(num_classes, num_classes)
    # ignored predictions: GT pixels that no class claimed (false negatives only)
    missed = np.bincount(gt[~valid], minlength=num_classes)
    return cm, missed


def seed_confusions(top: np.ndarray, fg_label: np.ndarray, gt: np.ndarray, thresholds: np.ndarray,
                    num_classes: int) -> np.ndarray:
    """(T, C, C) confusion matrices of the seeds ``where(top > t, fg_label, 0)``
    for every t of the ascending ``thresholds``, from one bincount instead of
    T: a pixel is foreground at t_i exactly when more than i thresholds lie
    below its top score. Compared in top's dtype, as ``top > t`` would be."""
    gt = gt.astype(np.int64).ravel()
    keep = gt != IGNORE
    gt, fg, top = gt[keep], fg_label.astype(np.int64).ravel()[keep], top.ravel()[keep]
    if gt.size and gt.max() >= num_classes:
        raise ValueError(f"ground-truth label {gt.max()} >= num_classes {num_classes}")
    n_t = len(thresholds)
    below = np.searchsorted(np.asarray(thresholds, dtype=top.dtype), top, side="left")  # #{t < top}
    hist = np.bincount((gt * num_classes + fg) * (n_t + 1) + below,
                       minlength=num_classes * num_classes * (n_t + 1)).reshape(num_classes, num_classes, n_t + 1)
    above = np.cumsum(hist[..., ::-1], -1)[..., ::-1]  # above[g, f, j]: pixels with >= j thresholds below
    cms = np.moveaxis(above[..., 1:], -1, 0).copy()    # at t_i: foreground iff >= i + 1 thresholds below
    cms[:, :, 0] += np.moveaxis(hist.sum(1).cumsum(-1)[:, :n_t], -1, 0)  # the rest is background
    return cms


def scores(cm: np.ndarray, missed: np.ndarray | None = None, class_names=None) -> dict:
    """mIoU over classes present in GT or prediction, per-class IoU, pixel accuracy."""
    tp = np.diag(cm).astype(np.float64)
    gt_total = cm.sum(1) + (missed if missed is not None else 0)
    pred_total = cm.sum(0)
    union = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / union
    present = union > 0
    names = class_names or [str(i) for i in range(len(tp))]
    total = gt_total.sum()
    return {
        "miou": float(np.nanmean(iou[present]) * 100) if present.any() else 0.0,
        "per_class_iou": {names[i]: (float(iou[i] * 100) if present[i] else None) for i in range(len(tp))},
        "pixel_acc": float(tp.sum() / total * 100) if total else 0.0,
    }


def class_precision_recall(tp: np.ndarray, pred_total: np.ndarray, gt_total: np.ndarray, class_names=None) -> dict:
    """Per-class precision tp / predicted and recall tp / ground truth, in percent, from the counts of
    one confusion matrix; None where the denominator is 0 (class never predicted / not in GT)."""
    names = class_names or [str(i) for i in range(len(tp))]
    ratio = lambda a, b: float(a / b * 100) if b else None  # noqa: E731
    return {"per_class_precision": {names[i]: ratio(tp[i], pred_total[i]) for i in range(len(tp))},
            "per_class_recall": {names[i]: ratio(tp[i], gt_total[i]) for i in range(len(tp))}}


def fg_precision_recall(cm: np.ndarray, missed: np.ndarray | None = None) -> dict:
    """Foreground (any class > 0) precision/recall, in percent."""
    fg_pred_fg_gt = cm[1:, 1:].sum()  # pixel predicted as some fg where GT is some fg
    pred_fg = cm[:, 1:].sum()
    gt_fg = cm[1:, :].sum() + (missed[1:].sum() if missed is not None else 0)
    return {"fg_precision": float(fg_pred_fg_gt / pred_fg * 100) if pred_fg else 0.0,
            "fg_recall": float(fg_pred_fg_gt / gt_fg * 100) if gt_fg else 0.0}


def evaluate_folders(pred_dir: Path, gt_dir: Path, num_classes: int, class_names=None) -> dict:
    """mIoU of every GT PNG's namesake in pred_dir; a missing prediction is an error."""
    from pipeline.data.datasets import read_mask
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gts = sorted(gt_dir.glob("*.png"))
    if not gts:
        raise FileNotFoundError(f"{gt_dir}: no ground-truth PNGs")
    acc = Confusion(num_classes)
    for g in gts:
        p = pred_dir / g.name
        if not p.exists():
            raise FileNotFoundError(f"{p}: prediction missing for ground truth {g}")
        try:
            acc.add(read_mask(p), read_mask(g))
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
    out = scores(acc.cm, acc.missed, class_names)
    out["num_images"] = len(gts)
    return out


class Confusion:
    """Running confusion matrix (and missed = GT pixels predicted IGNORE) over many images."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.cm = np.zeros((num_classes, num_classes), np.int64)
        self.missed = np.zeros(num_classes, np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        c, m = confusion(pred, gt, self.num_classes)
        self.cm += c
        self.missed += m

    def summary(self, class_names=None) -> dict:
        """scores() plus foreground and per-class precision/recall (a GT pixel predicted IGNORE
        is a miss: it lowers recall, and no class's precision)."""
        cm = self.cm.astype(np.float64)
        return (scores(self.cm, self.missed, class_names) | fg_precision_recall(self.cm, self.missed)
                | class_precision_recall(np.diag(cm), cm.sum(0), cm.sum(1) + self.missed, class_names))
