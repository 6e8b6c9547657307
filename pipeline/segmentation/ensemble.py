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

The work of the ensemble stage (``run``): one further final model per
cfg.ensemble.routes entry, trained by train_segmentation's work
(pipeline/segmentation/final.py) with the same recipe on that route's pseudo
masks, then the blend with train_segmentation's model on the val split.

Artifact (pipeline/artifacts.py EnsembleArtifact):
  members/<route>/       a train_segmentation artifact of each further model (mmseg config,
                         lists, logs, model_final.pth, its own val_metrics.json and figures)
  predictions/<val>/     the blend's label PNGs
  val_metrics.json       the blend, scored like train_segmentation's model ("miou", "per_class_iou",
                         "pixel_acc", "label", "weights", "models"), plus "members": each model alone
                         (argmax of its own probabilities, single-scale) on the same images and metric code
  gallery.png            val image | blend | GT

Resume: a member whose model_final.pth exists is not trained again (final.run); an
interrupted member resumes from its last mmengine checkpoint; the blend is recomputed.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from pipeline.artifacts import EnsembleArtifact, SegmentationArtifact

log = logging.getLogger("wsss")


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


def score_members(models: dict[str, object], weights: Sequence[float], records, num_classes: int,
                  class_names, read_gt: Callable, write_pred: Optional[Callable] = None,
                  progress=None) -> dict[str, dict]:
    """Scores on ``records`` (id, image, mask) of each model alone (argmax of its own
    probabilities) and of the weighted blend ('ensemble'), one pass over the images;
    write_pred(id, labels) gets the blend's labels."""
    from pipeline.evaluation.metrics import Confusion
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


def _load(art: SegmentationArtifact, device: str):
    from mmengine.config import Config as MMConfig

    from pipeline.segmentation.train import load_model
    return load_model(MMConfig.fromfile(str(art.config)), art.model, device)


def run(cfg, inputs, out) -> dict:
    from pipeline.data.datasets import LabelTable, read_image, read_mask, write_mask
    from pipeline.evaluation.report import save_prediction_gallery
    from pipeline.segmentation import final
    from pipeline.utils import get_device, progress

    art, ens = EnsembleArtifact(out), cfg.ensemble
    val = LabelTable.from_artifact(inputs["prepare_data"], cfg.data.val_split)
    records = [r for r in val.records if r.mask]
    if not records:
        raise ValueError(f"ensemble: no image of val split '{cfg.data.val_split}' has a ground-truth mask")
    device = "cuda" if get_device(cfg.run.device).type == "cuda" else "cpu"
    members = {f"train_segmentation ({cfg.pseudo_masks.method})": SegmentationArtifact(inputs["train_segmentation"])}
    for route in ens.routes:
        member = art.member(route)
        member.path.mkdir(parents=True, exist_ok=True)
        log.info("ensemble: the final model of route '%s' (train_segmentation's recipe)", route)
        final.run(cfg, inputs, member.path, route=route)
        members[f"ensemble member ({route})"] = member
    models = {name: _load(m, device) for name, m in members.items()}
    pred_dir = art.predictions(val.split)
    pred_dir.mkdir(parents=True, exist_ok=True)
    res = score_members(models, ens.weights, records, len(val.classes), list(val.classes),
                        read_gt=lambda r: read_mask(r.mask),
                        write_pred=lambda i, m: write_mask(pred_dir / f"{i}.png", m, val.palette),
                        progress=lambda it: progress(it, f"ensemble ({len(models)} models) {val.split}",
                                                     total=len(records)))
    blend_scores = res.pop("ensemble")
    label = (f"ensemble of {len(models)} {cfg.train_segmentation.model} models (weights "
             f"{', '.join(f'{w:g}' for w in ens.weights)}: {', '.join(models)}); per-pixel class probabilities "
             "blended, single-scale test")
    metrics = {**{k: blend_scores[k] for k in ("miou", "per_class_iou", "pixel_acc")},
               "split": val.split, "num_images": len(records), "ground_truth": "real val masks",
               "weights": list(ens.weights), "models": list(models),
               "selected_on_ground_truth": cfg.train_segmentation.checkpoint_selection != "last", "label": label,
               "members": {k: {"miou": v["miou"], "per_class_iou": v["per_class_iou"], "pixel_acc": v["pixel_acc"]}
                           for k, v in res.items()}}
    art.val_metrics.write_text(json.dumps(metrics, indent=2))
    if ens.gallery_size:
        rows = [[read_image(r.image), blend([class_probabilities(m, r.image) for m in models.values()], ens.weights),
                 read_mask(r.mask)] for r in records[:ens.gallery_size]]
        save_prediction_gallery(art.gallery, rows, [r.id for r in records[:ens.gallery_size]], val.palette)
    return {"miou": metrics["miou"], **{f"miou {k}": v["miou"] for k, v in res.items()}}
