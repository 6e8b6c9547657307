"""The work of the evaluate stage: seed, pseudo-mask and final-model mIoU in one table.

On the images of data.eval_split (default train_split) that are in the CAM
export: seed mIoU at the fixed cfg.evaluate.bg_threshold and over the
threshold sweep of the official evaluation (0.40..0.59), reported twice: as the
official loop reports it (it stops at the first threshold that does not improve)
and the sweep's global maximum; both pick a threshold with ground truth, and the
report says so. Then pseudo-mask mIoU,
per-class IoU, foreground precision/recall, and how the training stages
chose the weights behind the CAMs (last epoch, or best epoch by seed mIoU
against GT: then the numbers use GT). The final segmentation model's
val numbers come from train_segmentation's val_metrics.json when present, and,
with ensemble.routes, those of the ensemble stage (each model alone and the blend).
Scores use only the images with a ground-truth mask (a folder dataset may
have none: then only the per-class pixel shares and the gallery remain).
The report names the training stage whose mask generator made the CAMs
(export_cams.source: train_cam | match | refine), so ablations say what
they scored; imported CAMs (export_cams.source: import) are labelled
"imported: <folder>, <format>" and get the same tables. With imported pseudo
masks (import_masks.dir) those are the trained route ("imported"); the seeds
are then scored only if the CAMs are imported too (otherwise the run makes none).

Every pseudo-mask route of the run (pseudo_masks.method, the one the final
model trains on, and pseudo_masks.extra_methods) is scored side by side:
report["pseudo_mask_routes"][method] = {miou, per_class_iou, fg_precision,
fg_recall}; report["pseudo_mask"] stays the trained route.

Writes (pipeline/artifacts.py EvalArtifact) report.json, report.md, per_class_iou.png
(when there is GT) and gallery.png (image | seed | pseudo mask | GT for a fixed sample).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.artifacts import (EnsembleArtifact, EvalArtifact, ImportedCamArtifact, ImportedMaskArtifact,
                                MaskArtifact, SegmentationArtifact, cam_artifact,
                                trained_masks)
from pipeline.cams.store import CamStore, fixed_sample
from pipeline.config import Config, phase_sections
from pipeline.data.datasets import LabelTable, read_image, read_mask
from pipeline.evaluation.report import (UNCERTAIN, EnsembleScores, EvalReport, FinalModel, Scores, SeedScores,
                                        SeedSweep, Selection, report_markdown, save_eval_gallery, save_report_bars,
                                        selection_label)
from pipeline.evaluation.protocol import build_protocol
from pipeline.evaluation.scores import best_threshold, official_threshold, score_images
from pipeline.pseudo_masks.threshold import seed_labels
from pipeline.resources import upstream_costs
from pipeline.utils import progress

log = logging.getLogger("wsss")
OFFICIAL_RULE = ("thresholds ascending; stop at the first whose mIoU does not beat the best so far "
                 "(SemPLeS/WeakTr evaluation.py whole_eval)")
SWEEP_NOTE = ("the sweep chooses the background threshold that maximises mIoU against the ground "
              "truth (as the official evaluation.py does): an upper bound, not a label-free number")


def _final_model(inputs) -> FinalModel:
    d = inputs.get("train_segmentation")
    p = SegmentationArtifact(d).val_metrics if d else None
    if p is None or not p.exists():
        return FinalModel(available=False, reason=f"{p or 'train_segmentation artifact'} not found")
    try:
        doc = json.loads(p.read_text())
        if doc.get("validated") is False:  # no val ground truth (a folder dataset)
            return FinalModel(available=False, reason=doc.get("reason", "not validated"))
        return FinalModel(available=True, miou=float(doc["miou"]), per_class_iou=doc.get("per_class_iou", {}),
                          per_class_precision=doc.get("per_class_precision"),
                          per_class_recall=doc.get("per_class_recall"),
                          source=str(p), label=doc.get("label", "last iteration; single-scale test"),
                          selected_on_ground_truth=bool(doc.get("selected_on_ground_truth", False)))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p}: not a val_metrics.json with a 'miou' number ({e})") from None


def _ensemble(inputs) -> Optional[EnsembleScores]:
    """The ensemble stage's val_metrics.json as EnsembleScores (None when the run has no ensemble)."""
    d = inputs.get("ensemble")
    if not d:
        return None
    p = EnsembleArtifact(d).val_metrics
    try:
        doc = json.loads(p.read_text())
        return EnsembleScores(miou=doc["miou"], per_class_iou=doc["per_class_iou"], label=doc["label"],
                              weights=doc["weights"], members={k: v["miou"] for k, v in doc["members"].items()},
                              source=str(p))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p}: not an ensemble val_metrics.json ({type(e).__name__}: {e})") from None


def pixel_shares(mask_path, ids: list[str], names: list[str]) -> dict:
    """Share of all pixels per class (and uncertain, 255) over the masks of ``ids``."""
    counts = np.zeros(256, np.int64)
    for i in ids:
        counts += np.bincount(read_mask(mask_path(i)).ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    return {**{n: float(counts[c] / total) for c, n in enumerate(names)}, UNCERTAIN: float(counts[255] / total)}


def _label(path: Path) -> str:
    return json.loads(Path(path).read_text())["label"]


def run(cfg: Config, inputs, out: Path) -> dict:
    ev, pm, art = cfg.evaluate, cfg.pseudo_masks, EvalArtifact(out)
    split = cfg.data.eval_split or cfg.data.train_split
    table = LabelTable.from_artifact(inputs["prepare_data"], split)
    cams, masks = cam_artifact(inputs), trained_masks(inputs)
    mask_of = lambda i: masks / f"{i}.png"  # noqa: E731
    store = CamStore(cams.store(cfg.export_cams.split)) if cams else None
    if store is not None:
        exported = set(store.ids())
        ids = [i for i in table.ids() if i in exported]
        if not ids:
            raise ValueError(f"no image of eval split '{split}' is in the CAM export of split "
                             f"'{cfg.export_cams.split}' ({store.path})")
    else:
        ids = [i for i in table.ids() if mask_of(i).exists()]
        if not ids:
            raise ValueError(f"no image of eval split '{split}' has an imported pseudo mask ({masks})")
    names = list(table.classes)
    gt = lambda i: table[i].mask  # noqa: E731
    gt_ids = [i for i in ids if table[i].mask]
    imported_masks = "import_masks" in inputs
    trained = "imported" if imported_masks else pm.method
    routes = [trained] if imported_masks else pm.routes
    if "import_cams" in inputs:
        cam_source = _label(ImportedCamArtifact(inputs["import_cams"]).source)
    else:
        cam_source = cfg.export_cams.source if store is not None else "none (imported pseudo masks, no CAMs)"

    report = EvalReport(eval_split=split, num_images=len(ids), num_images_with_gt=len(gt_ids),
                        cam_split=cfg.export_cams.split, cam_source=cam_source,
                        mask_source=_label(ImportedMaskArtifact(inputs["import_masks"]).source)
                        if imported_masks else None,
                        selection=_selection(cfg, own_cams="export_cams" in inputs),
                        pseudo_mask_pixel_shares=pixel_shares(mask_of, ids, names), final_model=_final_model(inputs),
                        ensemble=_ensemble(inputs))
    if gt_ids:
        # one pass: each GT mask decoded once, the seeds and every route scored against it
        sweep, by_route = score_images(
            gt_ids, gt, table.num_classes, names, store, [*ev.sweep, ev.bg_threshold],
            {m: mask_of if m == trained else _route_png(cfg, inputs, m) for m in routes},
            progress=lambda it, n: progress(it, f"evaluate ({split})", total=n))
        if store is not None:
            curve = {t: sweep[t]["miou"] for t in sorted(float(x) for x in ev.sweep)}
            best_t, _ = best_threshold(curve)
            official_t, official_miou = official_threshold(curve)
            report.seed = SeedScores(bg_threshold=ev.bg_threshold, **sweep[float(ev.bg_threshold)])
            report.seed_sweep = SeedSweep(uses_ground_truth=True, note=SWEEP_NOTE, best_threshold=best_t,
                                          best_miou=curve[best_t], curve=curve, at_best=Scores(**sweep[best_t]),
                                          official_threshold=official_t, official_miou=official_miou,
                                          official_rule=OFFICIAL_RULE)
        report.pseudo_mask = Scores(**by_route[trained])
        report.trained_route = trained
        report.pseudo_mask_routes = {m: Scores(**by_route[m]) for m in routes}
        save_report_bars(art.per_class_chart, report)
    sweep_of = report.seed_sweep
    report.protocol = build_protocol(
        eval_split=split, num_images=len(ids), num_images_with_gt=len(gt_ids), inputs=inputs,
        bg_threshold=ev.bg_threshold, sweep=list(ev.sweep), routes=list(pm.routes),
        selection_gt=[n for n, s in phase_sections(cfg, cams_only=True).items() if s.selects_on_gt()]
        + [f"{n} (imported warm start: may itself be chosen on ground truth)"
           for n, s in phase_sections(cfg, cams_only=True).items() if s.imported_from()],
        final_label=report.final_model.label, final_available=report.final_model.available,
        official_t=sweep_of.official_threshold if sweep_of else None,
        best_t=sweep_of.best_threshold if sweep_of else None)
    report.stage_costs = upstream_costs(Path(inputs["prepare_data"]).parent, [Path(d).name for d in inputs.values()])
    report.save(art.report)
    art.markdown.write_text(report_markdown(report))

    rows, labels = [], []
    for i in fixed_sample(ids, ev.gallery_size):
        seed = None
        if store is not None:
            c, classes = store.read(i)
            seed = seed_labels(c.astype(np.float32), classes, ev.bg_threshold)
        rows.append([read_image(table[i].image), seed, read_mask(mask_of(i)),
                     read_mask(table[i].mask) if table[i].mask else None])
        labels.append(i)
    save_eval_gallery(art.gallery, rows, labels, ev.bg_threshold, table.palette)
    return _metrics(report)


def _metrics(r: EvalReport) -> dict:
    """The manifest's headline numbers of a report."""
    metrics = {}
    if r.seed and r.seed_sweep:
        metrics = {"seed_miou": r.seed.miou, "seed_best_miou_gt_sweep": r.seed_sweep.best_miou,
                   "seed_best_threshold": r.seed_sweep.best_threshold,
                   "seed_official_miou_gt_sweep": r.seed_sweep.official_miou,
                   "seed_official_threshold": r.seed_sweep.official_threshold}
    if r.pseudo_mask:
        metrics["pseudo_mask_miou"] = r.pseudo_mask.miou
        metrics |= {f"pseudo_mask_miou_{k}": v.miou for k, v in (r.pseudo_mask_routes or {}).items()}
    metrics["images_with_gt"] = r.num_images_with_gt
    metrics["uncertain_pixel_share"] = r.pseudo_mask_pixel_shares[UNCERTAIN]
    metrics["selection_uses_ground_truth"] = r.selection.uses_ground_truth
    if r.final_model.available:
        metrics["final_val_miou"] = r.final_model.miou
    if r.ensemble:
        metrics["ensemble_val_miou"] = r.ensemble.miou
    metrics["cam_source"] = r.cam_source
    return metrics


def _route_png(cfg: Config, inputs, method: str):
    """The PNG of an image in a route of the pipeline's own pseudo_masks artifact."""
    d = MaskArtifact(inputs["pseudo_masks"]).route(method, cfg.pseudo_masks.method)
    return lambda i: d / f"{i}.png"


def _selection(cfg: Config, own_cams: bool = True) -> Selection:
    """How the phases whose S makes CAMs (phase_sections) kept their weights; unknown for
    imported CAMs or masks (another method chose its own checkpoint)."""
    phases = phase_sections(cfg, cams_only=True)
    stages = list(phases)
    if not own_cams:
        return Selection(uses_ground_truth=None, note="the CAMs / pseudo masks are imported: how their method "
                         "chose its checkpoint is not known here", **{s: "n/a (imported)" for s in stages})
    gt = [n for n, s in phases.items() if s.selects_on_gt()]
    note = (f"{', '.join(gt)} kept the epoch with the best seed mIoU against ground truth (the official "
            "protocol): every number here depends on ground truth" if gt else
            "every training stage kept its last epoch: no pixel label chose a checkpoint")
    imported = any(s.imported_from() for s in phases.values())
    if imported:
        note += "; the imported warm start may itself have been chosen on ground truth"
    uses_gt = bool(gt) or imported
    return Selection(uses_ground_truth=uses_gt, note=note, **{s: selection_label(cfg, s) for s in stages})
