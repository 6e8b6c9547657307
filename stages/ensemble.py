"""ensemble: further final models, one per cfg.ensemble.routes entry, each trained
with train_segmentation's recipe (the same section) on that route's pseudo masks
(<pseudo_masks>/masks_<route>/), then blended with train_segmentation's model on
the val split: per-pixel class probabilities weighted by cfg.ensemble.weights
(train_segmentation's model first), argmax (pipeline/segmentation/ensemble.py).
Only in the DAG when ensemble.routes is set (evaluate then takes it as an input).

Artifact:
  members/<route>/       mmseg_config.py, lists/, work_dir/ (logs, val history), model_final.pth
  predictions/<val>/     the blend's label PNGs
  val_metrics.json       the blend, scored like train_segmentation's model ("miou", "per_class_iou",
                         "pixel_acc", "label", ...), plus "members": each model alone (argmax of its own
                         probabilities, single-scale) on the same images with the same metric code
  gallery.png            val image | blend | GT

Resume: a member whose model_final.pth exists is not trained again; an interrupted
member resumes from its last mmengine checkpoint; predictions are rewritten (cheap
beside training).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from stages.contract import Stage

log = logging.getLogger("wsss")


def _train_member(cfg, inputs, out: Path, route: str, val_pairs) -> Path:
    """train_segmentation's recipe on one route's pseudo masks in ``out``; returns its model_final.pth."""
    from pipeline.data.datasets import LabelTable
    from pipeline.segmentation.ensemble import write_lists
    from pipeline.segmentation.mmseg_config import build_config
    from pipeline.segmentation.train import best_checkpoint, export_weights, launch, train
    from pipeline.segmentation.weights import convert_deeplabv2_checkpoint
    from pipeline.utils import get_device

    sec = cfg.train_segmentation
    device = get_device(cfg.run.device).type
    nproc = cfg.run.nproc_per_node if device == "cuda" else 1
    table = LabelTable.from_artifact(inputs["prepare_data"], cfg.data.train_split)
    mask_dir = Path(inputs["pseudo_masks"]) / f"masks_{route}"  # an extra route (validated in the config)
    train_list, val_list = write_lists([(r.id, r.image, mask_dir / f"{r.id}.png") for r in table.records],
                                       val_pairs, out / "lists")
    converted = None
    if sec.model == "deeplabv2" and sec.pretrained and not sec.tiny and Path(sec.pretrained).is_file():
        info = convert_deeplabv2_checkpoint(sec.pretrained, out / "pretrained_converted.pth", len(table.classes),
                                            sec.pretrained_format)
        converted = (out / "pretrained_converted.pth", info["has_head"])
    mm_cfg = build_config(sec, dataset=cfg.data.dataset, train_list=train_list, val_list=val_list,
                          work_dir=out / "work_dir", seed=cfg.run.seed, num_workers=cfg.run.num_workers,
                          device=device, nproc=nproc, dist_backend=cfg.run.dist_backend,
                          converted_weights=converted, classes=table.class_set)
    mm_cfg.dump(str(out / "mmseg_config.py"))
    final = out / "model_final.pth"
    if not final.exists():
        log.info("ensemble: training the final model of route '%s'", route)
        if nproc > 1:
            launch(out / "mmseg_config.py", nproc, out / "torchrun.log")
        else:
            train(mm_cfg)
        selected = best_checkpoint(out / "work_dir") if sec.checkpoint_selection != "last" else None
        export_weights(out / "work_dir", final, selected)
        for ck in (out / "work_dir").glob("*.pth"):  # resume state only
            ck.unlink()
        (out / "work_dir" / "last_checkpoint").unlink(missing_ok=True)
    return final


def run(cfg, inputs, out):
    from mmengine.config import Config as MMConfig

    from pipeline.data.datasets import LabelTable, read_image, read_mask, write_mask
    from pipeline.report import save_prediction_gallery
    from pipeline.segmentation.ensemble import blend, class_probabilities, score_members
    from pipeline.segmentation.train import load_model
    from pipeline.utils import get_device, progress
    from pipeline.weights import preflight

    out = Path(out)
    ens = cfg.ensemble
    preflight(cfg, ["ensemble"])
    val = LabelTable.from_artifact(inputs["prepare_data"], cfg.data.val_split)
    records = [r for r in val.records if r.mask]
    if not records:
        raise ValueError(f"ensemble: no image of val split '{cfg.data.val_split}' has a ground-truth mask")
    device = "cuda" if get_device(cfg.run.device).type == "cuda" else "cpu"
    main = Path(inputs["train_segmentation"])
    models = {f"train_segmentation ({cfg.pseudo_masks.method})":
              load_model(MMConfig.fromfile(str(main / "mmseg_config.py")), main / "model_final.pth", device)}
    for route in ens.routes:
        d = out / "members" / route
        final = _train_member(cfg, inputs, d, route, [(r.image, r.mask) for r in records])
        models[f"ensemble member ({route})"] = load_model(MMConfig.fromfile(str(d / "mmseg_config.py")), final,
                                                          device)
    pred_dir = out / "predictions" / val.split
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
    (out / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
    if ens.gallery_size:
        rows = [[read_image(r.image), blend([class_probabilities(m, r.image) for m in models.values()], ens.weights),
                 read_mask(r.mask)] for r in records[:ens.gallery_size]]
        save_prediction_gallery(out / "gallery.png", rows, [r.id for r in records[:ens.gallery_size]], val.palette)
    return {"miou": metrics["miou"], **{f"miou {k}": v["miou"] for k, v in res.items()}}


STAGE = Stage(name="ensemble", inputs=("prepare_data", "pseudo_masks", "train_segmentation"),
              # the members use train_segmentation's recipe; pseudo_masks.method names the main model's route
              sections=("ensemble", "data", "train_segmentation", "run.seed", "pseudo_masks.method"), run=run,
              version="1")
