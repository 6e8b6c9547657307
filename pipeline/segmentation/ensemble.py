"""Ensemble of final segmentation models: the per-pixel class probabilities of
N trained models blended with weights, then argmax.

As the SemPLeS authors' FMA-WSSS fork (ProjectDisR/FMA-WSSS ensemble.py,
2024-02-15..17): mask[c] = a * prob_1[c] + (1 - a) * prob_2[c], argmax over c,
with a = 0.85 for FMA's own Mask2Former and 0.15 for the one trained on SemPLeS's
pseudo masks (a swept 1.0, 0.9, 0.8, 0.7, 0.85 in its history), VOC and COCO,
single-scale ('best,ss'). Here N models with weights w_i: p = sum_i w_i p_i.
The fork's 'prob' files (written by code it does not publish) hold the
probabilities of some classes only (those of 'fg_cls'), the others counting 0;
here every model gives every class its probability:
- a decode-head model (DeepLab): softmax over classes of mmseg's seg_logits;
- Mask2Former: mmseg's seg_logits are already sum_q softmax(class_q) * sigmoid(mask_q)
  (no 'no object' column), non-negative; divided by their sum over classes.
Ties go to the lower class id (numpy / torch argmax), as in the fork.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch


def class_probabilities(model, image_path: str) -> torch.Tensor:
    """(C, H, W) float32 per-pixel class probabilities of one image at its original size."""
    from mmseg.apis import inference_model
    from mmseg.models.decode_heads import Mask2FormerHead
    with torch.no_grad():
        res = inference_model(model, image_path)
    logits = res.seg_logits.data.float()
    if isinstance(getattr(model, "decode_head", None), Mask2FormerHead):
        p = logits.clamp_min(0)
        return p / p.sum(0, keepdim=True).clamp_min(1e-12)
    return logits.softmax(0)


def blend(probs: Sequence[torch.Tensor], weights: Sequence[float]) -> np.ndarray:
    """(H, W) uint8 argmax of sum_i weights[i] * probs[i]."""
    if len(probs) != len(weights):
        raise ValueError(f"{len(probs)} models but {len(weights)} weights")
    total = sum(float(w) * p for w, p in zip(weights, probs))
    return total.argmax(0).cpu().numpy().astype(np.uint8)


def write_lists(train: Sequence[tuple[str, str, Path]], val: Sequence[tuple[str, str]], out: Path
                ) -> tuple[Path, Optional[Path]]:
    """mmseg list files: train (id, image, pseudo-mask PNG) -> lists/train.txt, val (image, GT) -> lists/val.txt."""
    out.mkdir(parents=True, exist_ok=True)
    missing = [i for i, _, m in train if not m.exists()]
    if missing:
        raise FileNotFoundError(f"{train[0][2].parent}: no pseudo mask for {len(missing)} of {len(train)} "
                                f"images, e.g. {', '.join(missing[:5])}")
    (out / "train.txt").write_text("".join(f"{img}\t{m.resolve()}\n" for _, img, m in train))
    if not val:
        return out / "train.txt", None
    (out / "val.txt").write_text("".join(f"{img}\t{m}\n" for img, m in val))
    return out / "train.txt", out / "val.txt"


def score_members(models: dict[str, object], weights: Sequence[float], records, num_classes: int,
                  class_names, read_gt: Callable, write_pred: Optional[Callable] = None,
                  progress=None) -> dict[str, dict]:
    """Scores on ``records`` (id, image, mask) of each model alone (argmax of its own
    probabilities) and of the weighted blend ('ensemble'), one pass over the images;
    write_pred(id, labels) gets the blend's labels."""
    from pipeline.metrics import Confusion
    meters = {name: Confusion(num_classes) for name in [*models, "ensemble"]}
    steps = progress(records) if progress else records
    for r in steps:
        probs = [class_probabilities(m, r.image) for m in models.values()]
        gt = read_gt(r)
        for name, p in zip(models, probs):
            meters[name].add(p.argmax(0).cpu().numpy().astype(np.uint8), gt)
        labels = blend(probs, weights)
        meters["ensemble"].add(labels, gt)
        if write_pred:
            write_pred(r.id, labels)
    return {name: m.summary(class_names) for name, m in meters.items()}
