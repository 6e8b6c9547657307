"""evaluate: seed, pseudo-mask and final-model mIoU in one table.

On the images of data.eval_split (default train_split) that are in the CAM
export: seed mIoU at the fixed cfg.evaluate.bg_threshold and over the
threshold sweep of the official evaluation (0.40..0.59; the sweep picks its
best threshold with ground truth, and the report says so), pseudo-mask mIoU,
per-class IoU, foreground precision/recall, and how the training stages
chose the weights behind the CAMs (last epoch, or best epoch by seed mIoU
against GT: then the numbers use GT). The final segmentation model's
val numbers come from train_segmentation's val_metrics.json when present.
Scores use only the images with a ground-truth mask (a folder dataset may
have none: then only the per-class pixel shares and the gallery remain).
The report names the training stage whose mask generator made the CAMs
(export_cams.source: train_cam | match | refine), so ablations say what
they scored.

Every pseudo-mask route of the run (pseudo_masks.method, the one the final
model trains on, and pseudo_masks.extra_methods) is scored side by side:
report["pseudo_mask_routes"][method] = {miou, per_class_iou, fg_precision,
fg_recall}; report["pseudo_mask"] stays the trained route.

Writes report.json, report.md, per_class_iou.png (when there is GT) and
gallery.png (image | seed | pseudo mask | GT for a fixed sample).
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
VERSION = "5"  # 2: official sweep, checkpoint selection, GT optional, pixel shares; 3: final-model labels; 4: CAM source; 5: pseudo-mask routes
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
        if doc.get("validated") is False:  # no val ground truth (a folder dataset)
            return {"available": False, "reason": doc.get("reason", "not validated")}
        return {"available": True, "miou": float(doc["miou"]), "per_class_iou": doc.get("per_class_iou", {}),
                "source": str(p), "label": doc.get("label", "last iteration; single-scale test"),
                "selected_on_ground_truth": bool(doc.get("selected_on_ground_truth", False))}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p}: not a val_metrics.json with a 'miou' number ({e})") from None


def pixel_shares(mask_path, ids: list[str], names: list[str]) -> dict:
    """Share of all pixels per class (and uncertain, 255) over the masks of ``ids``."""
    counts = np.zeros(256, np.int64)
    for i in ids:
        counts += np.bincount(read_mask(mask_path(i)).ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    return {**{n: float(counts[c] / total) for c, n in enumerate(names)}, "uncertain (255)": float(counts[255] / total)}


def run(cfg: Config, inputs, out: Path) -> dict:
    from pipeline.plots import save_grid, save_per_class_bars

    ev, pm = cfg.evaluate, cfg.pseudo_masks
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
    gt_ids = [i for i in ids if table[i].mask]
    masks = Path(inputs["pseudo_masks"]) / "masks"
    mask_of = lambda i: masks / f"{i}.png"  # noqa: E731
    final = _final_model(inputs)

    report = {"eval_split": split, "num_images": len(ids), "num_images_with_gt": len(gt_ids),
              "cam_split": cfg.export_cams.split, "cam_source": cfg.export_cams.source,
              "selection": _selection(cfg),
              "pseudo_mask_pixel_shares": pixel_shares(mask_of, ids, names), "final_model": final}
    metrics = {}
    if gt_ids:
        sweep = evaluate_seeds(store, gt_ids, gt, [*ev.sweep, ev.bg_threshold], table.num_classes, names,
                               progress=lambda it, n: progress(it, f"evaluate seeds ({split})", total=n))
        fixed = sweep[float(ev.bg_threshold)]
        curve = {t: sweep[t]["miou"] for t in sorted(float(x) for x in ev.sweep)}
        best_t = max(curve, key=lambda t: (curve[t], -t))
        pseudo = evaluate_masks(mask_of, gt_ids, gt, table.num_classes, names)
        routes = {m: pseudo if m == pm.method else _route_scores(cfg, inputs, m, gt_ids, gt, table, names)
                  for m in pm.routes}
        report.update({
            "seed": {"bg_threshold": ev.bg_threshold, **fixed},
            "seed_sweep": {"uses_ground_truth": True, "note": SWEEP_NOTE, "best_threshold": best_t,
                           "best_miou": curve[best_t], "curve": curve, "at_best": sweep[best_t]},
            "pseudo_mask": pseudo, "trained_route": pm.method,
            "pseudo_mask_routes": {m: {k: r[k] for k in ("miou", "per_class_iou", "fg_precision", "fg_recall")}
                                   for m, r in routes.items()}})
        series = {f"seed (t={ev.bg_threshold})": fixed["per_class_iou"],
                  f"seed (best t={best_t}, GT-chosen)": sweep[best_t]["per_class_iou"]}
        series.update({f"pseudo mask ({m}{', trained on' if m == pm.method else ''})": r["per_class_iou"]
                       for m, r in routes.items()})
        if final["available"]:
            series["final model (val)"] = {c: final["per_class_iou"].get(c) for c in names}
        save_per_class_bars(out / "per_class_iou.png", series, f"per-class IoU, {split} ({len(gt_ids)} images)")
        metrics = {"seed_miou": fixed["miou"], "seed_best_miou_gt_sweep": curve[best_t],
                   "seed_best_threshold": best_t, "pseudo_mask_miou": pseudo["miou"],
                   **{f"pseudo_mask_miou_{m}": r["miou"] for m, r in routes.items()}}
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(_markdown(report))

    rows, labels = [], []
    for i in fixed_sample(ids, ev.gallery_size):
        cams, classes = store.read(i)
        rows.append([read_image(table[i].image), seed_labels(cams.astype(np.float32), classes, ev.bg_threshold),
                     read_mask(mask_of(i)), read_mask(table[i].mask) if table[i].mask else None])
        labels.append(i)
    if rows:
        save_grid(out / "gallery.png", rows, titles=["image", f"seed (t={ev.bg_threshold})", "pseudo mask",
                                                    "ground truth"], row_labels=labels, pal=table.palette)
    metrics["images_with_gt"] = len(gt_ids)
    metrics["uncertain_pixel_share"] = report["pseudo_mask_pixel_shares"]["uncertain (255)"]
    metrics["selection_uses_ground_truth"] = report["selection"]["uses_ground_truth"]
    if final["available"]:
        metrics["final_val_miou"] = final["miou"]
    metrics["cam_source"] = cfg.export_cams.source
    return metrics


def _route_scores(cfg: Config, inputs, method: str, gt_ids, gt, table, names) -> dict:
    from stages.pseudo_masks import route_dir
    d = route_dir(cfg, inputs["pseudo_masks"], method)
    return evaluate_masks(lambda i: d / f"{i}.png", gt_ids, gt, table.num_classes, names)


def _selection(cfg: Config) -> dict:
    """How train_cam, match and refine (whose S makes the CAMs) kept their weights."""
    from pipeline.seed_eval import selection_label
    stages = ("train_cam", "match", "refine")
    gt = [s for s in stages if getattr(cfg, s).select == "gt_miou"]
    note = (f"{', '.join(gt)} kept the epoch with the best seed mIoU against ground truth (the official "
            "protocol): every number here depends on ground truth" if gt else
            "every training stage kept its last epoch: no pixel label chose a checkpoint")
    if cfg.train_cam.init_checkpoint:
        note += "; the imported warm start may itself have been chosen on ground truth"
    uses_gt = bool(gt) or bool(cfg.train_cam.init_checkpoint)
    return {"uses_ground_truth": uses_gt, "note": note, **{s: selection_label(cfg, s) for s in stages}}


def _markdown(r: dict) -> str:
    final = r["final_model"]
    fm = f"{final['miou']:.2f}" if final["available"] else f"n/a ({final['reason']})"
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    how = f" ({final['label']})" if final["available"] else ""
    lines = [f"# Evaluation: {r['eval_split']} ({r['num_images']} images with CAMs, "
             f"{r['num_images_with_gt']} with ground truth)", "",
             f"CAMs from the mask generator of stage `{r['cam_source']}` ({SOURCES[r['cam_source']]}).", ""]
    if "seed" in r:
        sw = r["seed_sweep"]
        lines += [
            "| what | split | mIoU | fg precision | fg recall |", "|---|---|---|---|---|",
            f"| seed, bg threshold {r['seed']['bg_threshold']} | {r['eval_split']} | {r['seed']['miou']:.2f} | "
            f"{r['seed']['fg_precision']:.2f} | {r['seed']['fg_recall']:.2f} |",
            f"| seed, best threshold {sw['best_threshold']} (sweep, uses GT) | {r['eval_split']} | "
            f"{sw['best_miou']:.2f} | {sw['at_best']['fg_precision']:.2f} | {sw['at_best']['fg_recall']:.2f} |",
            f"| pseudo mask ({r.get('trained_route', '?')}, trained on) | {r['eval_split']} | "
            f"{r['pseudo_mask']['miou']:.2f} | {r['pseudo_mask']['fg_precision']:.2f} | "
            f"{r['pseudo_mask']['fg_recall']:.2f} |",
            *[f"| pseudo mask ({m}) | {r['eval_split']} | {x['miou']:.2f} | {x['fg_precision']:.2f} | "
              f"{x['fg_recall']:.2f} |" for m, x in r.get("pseudo_mask_routes", {}).items()
              if m != r.get("trained_route")],
            f"| final segmentation model{how} | val | {fm} | | |", "",
            f"Note: {sw['note']}.", "",
            "Threshold sweep: " + ", ".join(f"{t}: {m:.2f}" for t, m in sw["curve"].items()), "",
        ]
        extra = [m for m in r.get("pseudo_mask_routes", {}) if m != r.get("trained_route")]
        lines += ["## Per-class IoU", "", "| class | seed | pseudo mask | " + "".join(f"{m} | " for m in extra)
                  + "final (val) |", "|---" * (4 + len(extra)) + "|"]
        for c, v in r["seed"]["per_class_iou"].items():
            f = final.get("per_class_iou", {}).get(c) if final["available"] else None
            routes = "".join(f"{fmt(r['pseudo_mask_routes'][m]['per_class_iou'][c])} | " for m in extra)
            lines.append(f"| {c} | {fmt(v)} | {fmt(r['pseudo_mask']['per_class_iou'][c])} | {routes}{fmt(f)} |")
    else:
        lines += ["No ground-truth masks for this split: no seed or pseudo-mask scores; "
                  "look at gallery.png and the pixel shares below.", "", f"Final segmentation model{how} (val): {fm}"]
    lines += ["", "Checkpoint selection: " + "; ".join(f"{s}: {r['selection'][s]}" for s in ("train_cam", "match", "refine"))
              + f". Note: {r['selection']['note']}."]
    if final.get("selected_on_ground_truth"):
        lines += ["", "Note: the final model's checkpoint was selected by val mIoU: the number is chosen on the "
                  "ground truth it is reported on (as FMA-WSSS reports), not a held-out result."]
    lines += ["", "## Pseudo-mask pixel shares (% of all pixels)", "", "| class | share |", "|---|---|"]
    lines += [f"| {c} | {100 * v:.2f} |" for c, v in r["pseudo_mask_pixel_shares"].items()]
    return "\n".join(lines) + "\n"
