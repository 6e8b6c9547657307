"""The work of the train_segmentation stage: an mmseg segmentation model trained on
the pseudo masks, validated on the REAL val masks; the final model's metrics,
figures, gallery and predictions. A folder dataset validates on the
val images that have a ground-truth mask; with none (or data.val_split null)
it trains without validation and val_metrics.json says so.

Inputs: prepare_data (label tables: image paths, val GT mask paths) and
pseudo_masks (the trained route's palette PNG per train image id, 255 = ignore), or
import_masks (the same layout) when import_masks.dir is set.

Artifact (pipeline/artifacts.py SegmentationArtifact):
  mmseg_config.py        generated mmseg config (runs with mmseg's tools/train.py, tools/test.py)
  lists/{train,val}.txt  '<image>\\t<mask>' lines the config's dataset reads
  work_dir/              mmengine work dir: logs, vis_data/scalars.json, val_history.json,
                         checkpoints while training (the last one only; removed when done)
  model_final.pth        weights + meta of the final model: the last iteration, or with
                         checkpoint_selection=best_val_miou the best val mIoU (selected on GT)
  val_metrics.json       {"miou", "per_class_iou", "pixel_acc", "macc", "iter", "label", ...} in
                         percent; "miou" is the reported number (after TTA / CRF when on),
                         "single_scale" the plain val result of the same checkpoint
  val_curve.png          val mIoU per validation, last and (if selected) best iteration marked
  gallery.png            val image | prediction | GT
  predictions/<split>/   with train_segmentation.predict_split: the final model's label PNGs of
                         that split and predictions_<split>_coco.json (pipeline/pseudo_masks/coco_export.py)
  per_class_iou.png      per-class IoU bars
  pretrained_converted.pth  deeplabv2 with a local weight file: the weights in model keys

Resume: an interrupted run leaves work_dir/last_checkpoint; the rerun (same
artifact dir) resumes from it through mmengine (``resume=True``).
run.nproc_per_node > 1 on CUDA: training runs under torchrun (mmengine's
pytorch launcher); on CPU the stage trains in one process (mmengine's launcher
binds each rank to a CUDA device).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from pipeline.artifacts import MaskArtifact, SegmentationArtifact, trained_masks

log = logging.getLogger("wsss")


def _write_list(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\t{m}\n" for i, m in pairs))



def data_lists(cfg, inputs: dict, out: Path, route: Optional[str] = None) -> tuple[Path, Optional[Path], list]:
    """Train list: dataset image -> pseudo mask (of the trained route or imported masks, or of
    ``route``); val list: image -> real GT mask (None when a folder dataset has no val ground truth)."""
    from pipeline.data.datasets import DataError, LabelTable
    train = LabelTable.from_artifact(inputs["prepare_data"], cfg.data.train_split)
    mask_dir = (trained_masks(inputs) if route is None
                else MaskArtifact(inputs["pseudo_masks"]).route(route, cfg.pseudo_masks.method))
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: pseudo-mask folder not found in the {mask_dir.parent.name} artifact")
    missing = [r.id for r in train.records if not (mask_dir / f"{r.id}.png").exists()]
    if missing:
        raise DataError(f"{mask_dir}: no pseudo mask for {len(missing)} of {len(train)} "
                        f"'{cfg.data.train_split}' images, e.g. {', '.join(missing[:5])}")
    art = SegmentationArtifact(out)
    train_list, val_list = art.list("train"), art.list("val")
    _write_list(train_list, [(r.image, str((mask_dir / f"{r.id}.png").resolve())) for r in train.records])
    if cfg.data.val_split is None:
        return train_list, None, []
    val = LabelTable.from_artifact(inputs["prepare_data"], cfg.data.val_split)
    records = val.records
    if cfg.data.dataset == "folder":  # GT is optional there: validate on the images that have it
        records = [r for r in records if r.mask]
        if not records:
            return train_list, None, []
    bad_val = [r.id for r in records if not r.mask or not Path(r.mask).exists()]
    if bad_val:
        raise DataError(f"labels_{cfg.data.val_split}.json: val images without a ground-truth mask "
                        f"file, e.g. {', '.join(bad_val[:5])}")
    _write_list(val_list, [(r.image, r.mask) for r in records])
    return train_list, val_list, records


def _pct(v):  # NaN (class in neither GT nor prediction) -> null
    return None if v is None or v != v else float(v)


def _scores(res: dict, classes) -> dict:
    return {"miou": float(res["mIoU"]), "pixel_acc": float(res["aAcc"]), "macc": float(res["mAcc"]),
            "per_class_iou": {c: _pct(res.get(f"IoU.{c}")) for c in classes},
            "per_class_precision": {c: _pct(res.get(f"Precision.{c}")) for c in classes},
            "per_class_recall": {c: _pct(res.get(f"Recall.{c}")) for c in classes}}


def final_metrics(history: list[dict], classes, iters: int, selection: str = "last") -> dict:
    """The val result of the final model: the last iteration's, or the best mIoU of the history."""
    last = history[-1] if history else None
    if not last or last["iter"] != iters:
        raise RuntimeError(f"no validation result for the final iteration {iters} (val_history: "
                           f"{[h['iter'] for h in history]})")
    # mmengine's save_best keeps the first of equal scores
    chosen = last if selection == "last" else max(history, key=lambda h: (h["mIoU"], -h["iter"]))
    return {**_scores(chosen, classes), "iter": int(chosen["iter"])}


def report_label(sec) -> str:
    """How the reported number was obtained; every report repeats it."""
    parts = [f"{sec.model}, checkpoint: " + ("last iteration" if sec.checkpoint_selection == "last"
                                             else "best val mIoU, selected on ground truth (val)")]
    parts.append(f"multi-scale {sec.tta_scales} + flip test" if sec.tta else "single-scale test")
    if sec.crf:
        parts.append("dense CRF on predictions")
    return "; ".join(parts)


def save_gallery(model, records, path: Path, n: int, pal=None) -> None:
    """The final model's predictions on the first ``n`` records, beside image and GT."""
    from pipeline.data.datasets import read_image, read_mask
    from pipeline.evaluation.report import save_prediction_gallery
    from pipeline.segmentation.train import predict
    rows = [[read_image(r.image), predict(model, r.image), read_mask(r.mask) if r.mask else None]
            for r in records[:n]]
    save_prediction_gallery(path, rows, [r.id for r in records[:n]], pal)


def per_image(cfg) -> tuple:
    """The final model's label PNGs of train_segmentation.predict_split (skipped when there)."""
    from pipeline.data.datasets import read_mask
    from pipeline.store import PerImage
    split = cfg.train_segmentation.predict_split
    return (PerImage(SegmentationArtifact(Path()).predictions(split).as_posix(), ".png", read_mask),) if split else ()


def write_predictions(model, table, out: Path) -> dict:
    """The final model's label PNGs of every image of ``table`` (skipping ones
    already written) and their COCO JSON."""
    from pipeline.data.datasets import read_mask, write_mask
    from pipeline.pseudo_masks.coco_export import export_coco
    from pipeline.segmentation.train import predict
    art = SegmentationArtifact(out)
    pred_dir = art.predictions(table.split)
    pred_dir.mkdir(parents=True, exist_ok=True)
    for r in table.records:
        if not (pred_dir / f"{r.id}.png").exists():
            write_mask(pred_dir / f"{r.id}.png", predict(model, r.image), table.palette)
    items = ((r.id, r.image, read_mask(pred_dir / f"{r.id}.png")) for r in table.records)
    return export_coco(art.predictions_coco(table.split), items, table.classes,
                       f"wsss final segmentation model predictions on split '{table.split}'")


def run(cfg, inputs, out, route: Optional[str] = None):
    """train_segmentation's work; with ``route`` the same recipe on that pseudo-mask route (the
    ensemble stage's further models)."""
    from pipeline.data.datasets import LabelTable
    from pipeline.evaluation.report import save_val_figures
    from pipeline.segmentation.mmseg_config import build_config
    from pipeline.segmentation.train import (best_checkpoint, export_weights, launch, load_model, test, train,
                                             val_history)
    from pipeline.segmentation.pretrained import convert_deeplabv2_checkpoint
    from pipeline.utils import get_device
    from pipeline.weights import resolve, segmentation_weights

    out = Path(out)
    art = SegmentationArtifact(out)
    sec = cfg.train_segmentation
    device = get_device(cfg.run.device).type
    nproc = cfg.run.nproc_per_node
    if nproc > 1 and device != "cuda":
        log.warning("train_segmentation: run.nproc_per_node=%d needs CUDA (mmengine binds each rank to a "
                    "GPU); training in one process on CPU", nproc)
        nproc = 1
    resolve(segmentation_weights(sec))  # hub weights into torch.hub's cache, where mmengine reads them
    train_list, val_list, val_records = data_lists(cfg, inputs, out, route)
    table = LabelTable.from_artifact(inputs["prepare_data"], cfg.data.train_split)
    work_dir = art.work_dir
    converted = None
    if sec.model == "deeplabv2" and sec.pretrained and not sec.tiny and Path(sec.pretrained).is_file():
        path = art.converted_pretrained
        info = convert_deeplabv2_checkpoint(sec.pretrained, path, len(table.classes),
                                            sec.pretrained_format)
        log.info("train_segmentation: %s weights from %s (classifier %s); dropped %d keys", info["layout"],
                 sec.pretrained, "kept" if info["has_head"] else "trained from scratch", len(info["dropped"]))
        converted = (path, info["has_head"])
    mm_cfg = build_config(sec, dataset=cfg.data.dataset, train_list=train_list, val_list=val_list,
                          work_dir=work_dir, seed=cfg.run.seed, num_workers=cfg.run.num_workers,
                          device=device, nproc=nproc, dist_backend=cfg.run.dist_backend,
                          converted_weights=converted, classes=table.class_set, tensorboard_dir=art.tensorboard)
    config_path = art.config
    mm_cfg.dump(str(config_path))

    final = art.model
    if not final.exists():  # a rerun after everything but the manifest was written skips training
        if nproc > 1:
            launch(config_path, nproc, art.torchrun_log)
        else:
            train(mm_cfg)
        export_weights(work_dir, final, best_checkpoint(work_dir) if sec.checkpoint_selection != "last" else None)

    if val_list is not None:
        classes = table.classes
        history = val_history(work_dir)
        metrics = final_metrics(history, classes, sec.iters, sec.checkpoint_selection)
        metrics["single_scale"] = {"miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"]}
        if sec.tta or sec.crf:  # the final model again, through mmengine's test loop with the options on
            res = test(mm_cfg, final, work_dir / "test", tta=sec.tta)
            metrics.update(_scores(res, classes))
        metrics.update(split=cfg.data.val_split, num_images=len(val_records), model=sec.model,
                       backbone="tiny" if sec.tiny else sec.backbone, ground_truth="real val masks",
                       checkpoint=final.name, checkpoint_selection=sec.checkpoint_selection,
                       selected_on_ground_truth=sec.checkpoint_selection != "last", tta=sec.tta,
                       crf=sec.crf is not None, label=report_label(sec))
        save_val_figures(out, history, metrics, sec.model, sec.checkpoint_selection)
        headline = {"miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"], "iters": metrics["iter"]}
    else:
        why = (f"no ground-truth masks for val split '{cfg.data.val_split}'" if cfg.data.val_split
               else "no val split (data.val_split is null)")
        metrics = {"validated": False, "reason": why, "label": report_label(sec),
                   "iter": sec.iters, "model": sec.model, "checkpoint": final.name}
        headline = {"iters": sec.iters, "validated": False}
    art.val_metrics.write_text(json.dumps(metrics, indent=2))
    model = None
    if sec.gallery_size or sec.predict_split:
        model = load_model(mm_cfg, final, device="cuda" if device == "cuda" else "cpu")
    if sec.gallery_size:
        records = val_records or table.records  # no val GT: show train images with their predictions
        save_gallery(model, records, art.gallery, sec.gallery_size, table.palette)
    if sec.predict_split:
        n = write_predictions(model, LabelTable.from_artifact(inputs["prepare_data"], sec.predict_split), out)
        headline["predicted_images"] = n["images"]
    # the training checkpoints (with optimizer state) were only needed to resume
    for ck in [*work_dir.glob("iter_*.pth"), *work_dir.glob("best_*.pth")]:
        ck.unlink()
    (work_dir / "last_checkpoint").unlink(missing_ok=True)
    return headline
