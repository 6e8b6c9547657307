"""evaluate: seed, pseudo-mask and final-model mIoU in one table.

On the images of data.eval_split (default train_split) that are in the CAM
export: seed mIoU at the fixed cfg.evaluate.bg_threshold and over the
threshold sweep of the official evaluation (the sweep picks its best
threshold with ground truth, and the report says so), pseudo-mask mIoU,
per-class IoU, foreground precision/recall. The final segmentation model's
val numbers come from train_segmentation's val_metrics.json when present.
The report names the training stage whose mask generator made the CAMs
(export_cams.source: train_cam | match | refine), so ablations say what
they scored.

Writes report.json, report.md, per_class_iou.png and gallery.png
(image | seed | pseudo mask | GT for a fixed sample).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.cam_store import CamStore, fixed_sample, store_path
from pipeline.config import Config
from pipeline.data.datasets import LabelTable, read_image, read_mask
from pipeline.evaluation import evaluate_masks, evaluate_seeds
from pipeline.refine_masks import seed_labels
from pipeline.store import write_json_atomic
from pipeline.utils import progress

NAME = "evaluate"
INPUTS = ('prepare_data', 'export_cams', 'pseudo_masks', 'train_segmentation')
SECTIONS = ('evaluate',)
VERSION = "2"  # 2: the report states the CAM source
log = logging.getLogger("wsss")
SOURCES = {"train_cam": "classification warm start", "match": "L_match only (phase 1)",
           "refine": "full SemPLeS (phase 3)"}
SWEEP_NOTE = ("the sweep chooses the background threshold that maximises mIoU against the ground "
              "truth (as the official evaluation.py does): an upper bound, not a label-free number")


def _final_model(inputs) -> dict:
    d = inputs.get("train_segmentation")
    p = Path(d) / "val_metrics.json" if d else None
    if p is None or not p.exists():
        return {"available": False, "reason": f"{p or 'train_segmentation artifact'} not found"}
    try:
        doc = json.loads(p.read_text())
        return {"available": True, "miou": float(doc["miou"]), "per_class_iou": doc.get("per_class_iou", {}),
                "source": str(p)}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p}: not a val_metrics.json with a 'miou' number ({e})") from None


def run(cfg: Config, inputs, out: Path) -> dict:
    from pipeline.plots import save_grid, save_per_class_bars

    ev = cfg.evaluate
    split = cfg.data.eval_split or cfg.data.train_split
    table = LabelTable.from_artifact(inputs["prepare_data"], split)
    store = CamStore(store_path(inputs["export_cams"], cfg.export_cams.split))
    exported = set(store.ids())
    ids = [i for i in table.ids() if i in exported]
    if not ids:
        raise ValueError(f"no image of eval split '{split}' is in the CAM export of split "
                         f"'{cfg.export_cams.split}' ({store.path})")
    names = list(table.classes)
    gt = lambda i: table[i].mask  # noqa: E731
    masks = Path(inputs["pseudo_masks"]) / "masks"

    sweep = evaluate_seeds(store, ids, gt, [*ev.sweep, ev.bg_threshold], table.num_classes, names,
                           progress=lambda it, n: progress(it, f"evaluate seeds ({split})", total=n))
    fixed = sweep[float(ev.bg_threshold)]
    curve = {t: sweep[t]["miou"] for t in sorted(float(x) for x in ev.sweep)}
    best_t = max(curve, key=lambda t: (curve[t], -t))
    pseudo = evaluate_masks(lambda i: masks / f"{i}.png", ids, gt, table.num_classes, names)
    final = _final_model(inputs)

    report = {
        "eval_split": split, "num_images": len(ids), "cam_split": cfg.export_cams.split,
        "cam_source": cfg.export_cams.source,
        "seed": {"bg_threshold": ev.bg_threshold, **fixed},
        "seed_sweep": {"uses_ground_truth": True, "note": SWEEP_NOTE, "best_threshold": best_t,
                       "best_miou": curve[best_t], "curve": curve, "at_best": sweep[best_t]},
        "pseudo_mask": pseudo,
        "final_model": final,
    }
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(_markdown(report))

    series = {f"seed (t={ev.bg_threshold})": fixed["per_class_iou"],
              f"seed (best t={best_t}, GT-chosen)": sweep[best_t]["per_class_iou"],
              "pseudo mask": pseudo["per_class_iou"]}
    if final["available"]:
        series["final model (val)"] = {c: final["per_class_iou"].get(c) for c in names}
    save_per_class_bars(out / "per_class_iou.png", series, f"per-class IoU, {split} ({len(ids)} images)")

    rows, labels = [], []
    for i in fixed_sample(ids, ev.gallery_size):
        cams, classes = store.read(i)
        rows.append([read_image(table[i].image), seed_labels(cams.astype(np.float32), classes, ev.bg_threshold),
                     read_mask(masks / f"{i}.png"), read_mask(table[i].mask)])
        labels.append(i)
    if rows:
        save_grid(out / "gallery.png", rows, titles=["image", f"seed (t={ev.bg_threshold})", "pseudo mask",
                                                    "ground truth"], row_labels=labels)
    metrics = {"seed_miou": fixed["miou"], "seed_best_miou_gt_sweep": curve[best_t],
               "seed_best_threshold": best_t, "pseudo_mask_miou": pseudo["miou"]}
    if final["available"]:
        metrics["final_val_miou"] = final["miou"]
    metrics["cam_source"] = cfg.export_cams.source
    return metrics


def _markdown(r: dict) -> str:
    final = r["final_model"]
    fm = f"{final['miou']:.2f}" if final["available"] else f"n/a ({final['reason']})"
    sw = r["seed_sweep"]
    lines = [
        f"# Evaluation: {r['eval_split']} ({r['num_images']} images with CAMs)", "",
        f"CAMs from the mask generator of stage `{r['cam_source']}` ({SOURCES[r['cam_source']]}).", "",
        "| what | split | mIoU | fg precision | fg recall |", "|---|---|---|---|---|",
        f"| seed, bg threshold {r['seed']['bg_threshold']} | {r['eval_split']} | {r['seed']['miou']:.2f} | "
        f"{r['seed']['fg_precision']:.2f} | {r['seed']['fg_recall']:.2f} |",
        f"| seed, best threshold {sw['best_threshold']} (sweep, uses GT) | {r['eval_split']} | "
        f"{sw['best_miou']:.2f} | {sw['at_best']['fg_precision']:.2f} | {sw['at_best']['fg_recall']:.2f} |",
        f"| pseudo mask | {r['eval_split']} | {r['pseudo_mask']['miou']:.2f} | "
        f"{r['pseudo_mask']['fg_precision']:.2f} | {r['pseudo_mask']['fg_recall']:.2f} |",
        f"| final segmentation model | val | {fm} | | |", "",
        f"Note: {sw['note']}.", "",
        "Threshold sweep: " + ", ".join(f"{t}: {m:.2f}" for t, m in sw["curve"].items()), "",
        "## Per-class IoU", "", "| class | seed | pseudo mask | final (val) |", "|---|---|---|---|",
    ]
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    for c, v in r["seed"]["per_class_iou"].items():
        f = final.get("per_class_iou", {}).get(c) if final["available"] else None
        lines.append(f"| {c} | {fmt(v)} | {fmt(r['pseudo_mask']['per_class_iou'][c])} | {fmt(f)} |")
    return "\n".join(lines) + "\n"
