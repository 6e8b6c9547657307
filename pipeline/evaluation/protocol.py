"""The protocol card of an evaluate report: how every number of it was made, in one place.

Read from the manifests of the artifacts that made the numbers (their resolved config
sections), so the card describes those artifacts, not the config file of the moment:
split and image count, CAM source, scales and flip, the seed threshold rules (fixed / the
official early-stopping sweep / the sweep's GT maximum), the parameters of every pseudo-mask
route (CRF, SAM), how 255 counts, what ground truth chose, subset or full split, and the final
model's test-time augmentation and checkpoint selection.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

IGNORE_RULE = ("ground-truth 255 pixels are left out of every score; a predicted 255 (an uncertain pseudo-mask "
               "pixel) is claimed by no class: it is a miss for the ground-truth class (lowers its recall and IoU) "
               "and counts in no class's precision")


class Protocol(BaseModel):
    model_config = ConfigDict(extra="allow")
    eval_split: str
    num_images: int
    num_images_with_gt: int
    subset: str                       # full split, or how it was cut (data.max_images)
    cam_source: str
    cam_split: str
    cam_scales: list[float]
    cam_flip: bool
    cam: str                          # fine / coarse
    seed_threshold: str               # the fixed rule
    sweep: str                        # the sweep and its two GT-based readings
    pseudo_mask_routes: dict[str, str]  # route -> its parameters in words
    ignore_255: str = IGNORE_RULE
    ground_truth_chose: list[str]     # every choice made with ground truth (empty: none)
    final_model: str                  # split, checkpoint selection, TTA / CRF


def manifest_config(artifact: Optional[str | Path]) -> dict:
    """The resolved config sections an artifact's manifest records ({} when there is none)."""
    if not artifact:
        return {}
    p = Path(artifact) / "manifest.json"
    return json.loads(p.read_text()).get("config", {}) if p.exists() else {}


def route_words(method: str, pm: dict, sam: dict) -> str:
    bands = (f"; uncertain band {pm.get('low_threshold')}..{pm.get('high_threshold')} -> 255"
             if pm.get("low_threshold") is not None else "")
    t = f"background threshold {pm.get('bg_threshold')}{bands}"
    crf = pm.get("crf") or {}
    crf_words = "dense CRF " + ", ".join(f"{k} {v}" for k, v in crf.items())
    aff = pm.get("affinity") or {}
    words = {"argmax": f"argmax of [t, CAMs], {t}",
             "crf": f"{t}; {crf_words}",
             "affinity": f"{t}; attention random walk beta {aff.get('beta')}, {aff.get('iterations')} steps",
             "affinity_crf": f"{t}; random walk beta {aff.get('beta')}, {aff.get('iterations')} steps; {crf_words}",
             "sam": (f"SAM {sam.get('model_type')}{' (tiny random)' if sam.get('tiny') else ''}: "
                     f"{sam.get('points_per_side')} points/side, pred IoU {sam.get('pred_iou_thresh')}, stability "
                     f"{sam.get('stability_score_thresh')}, box NMS {sam.get('box_nms_thresh')}, "
                     f"{sam.get('crop_n_layers')} crop layers, min region {sam.get('min_mask_region_area')}, "
                     f"rock-sand-water {sam.get('rsw_thresh')}; seeding background (1 - max) ** {pm.get('sam_p')}, "
                     "no 255, no CRF")}
    return words.get(method, method)


def build_protocol(*, eval_split: str, num_images: int, num_images_with_gt: int, inputs: dict,
                   bg_threshold: float, sweep: list[float], routes: list[str], selection_gt: list[str],
                   final_label: Optional[str], final_available: bool, official_t=None, best_t=None) -> Protocol:
    """``inputs``: evaluate's input artifact dirs; ``selection_gt``: training stages that kept
    their epoch by seed mIoU against GT (or an imported warm start)."""
    data = manifest_config(inputs.get("prepare_data")).get("data", {})
    cams = manifest_config(inputs.get("export_cams")).get("export_cams", {})
    pm_cfg = manifest_config(inputs.get("pseudo_masks"))
    pm = pm_cfg.get("pseudo_masks", {})
    pm_manifest = Path(inputs["pseudo_masks"]) / "manifest.json" if inputs.get("pseudo_masks") else None
    sam = {}
    if pm_manifest and pm_manifest.exists():
        sam_key = json.loads(pm_manifest.read_text()).get("inputs", {}).get("sam_masks")
        if sam_key:
            sam = manifest_config(Path(inputs["pseudo_masks"]).parent / sam_key).get("sam", {})
    seg = manifest_config(inputs.get("train_segmentation")).get("train_segmentation", {})
    cap = data.get("max_images")
    subset = f"first {cap} images of each split (data.max_images)" if cap else "full split"
    ts = sorted(float(t) for t in sweep)
    step = round(ts[1] - ts[0], 4) if len(ts) > 1 else None
    gt_chose = []
    if num_images_with_gt:
        gt_chose.append(f"seed sweep: the official early-stopping threshold ({official_t}) and the global "
                        f"maximum ({best_t}) are read off mIoU against ground truth")
    gt_chose += [f"{s}: kept the epoch with the best seed mIoU against ground truth" for s in selection_gt]
    if seg.get("checkpoint_selection") == "best_val_miou":
        gt_chose.append("final model: checkpoint with the best val mIoU (selected on the split it is scored on)")
    if seg:
        tta = (f"multi-scale {seg.get('tta_scales')} + flip test" if seg.get("tta") else "single-scale test, no flip")
        final = (f"{seg.get('model')} on split '{data.get('val_split')}'; checkpoint "
                 f"{seg.get('checkpoint_selection')}; {tta}; CRF {'on' if seg.get('crf') else 'off'}")
    else:
        final = "no train_segmentation artifact"
    if not final_available:
        final += " (not scored: no val ground truth)"
    return Protocol(
        eval_split=eval_split, num_images=num_images, num_images_with_gt=num_images_with_gt, subset=subset,
        cam_source=cams.get("source", "?"), cam_split=cams.get("split", "?"), cam_scales=cams.get("scales", []),
        cam_flip=bool(cams.get("flip")), cam=cams.get("cam", "?"),
        seed_threshold=f"fixed background threshold {bg_threshold} (evaluate.bg_threshold), chosen without labels",
        sweep=(f"thresholds {ts[0]}..{ts[-1]}" + (f" step {step}" if step else "") + ": the official reading "
               "(ascending, stop at the first that does not improve) and the global maximum; both use ground truth")
        if ts else "no sweep",
        pseudo_mask_routes={m: route_words(m, pm, sam) for m in routes},
        ground_truth_chose=gt_chose, final_model=final + (f" ({final_label})" if final_label else ""))


def protocol_markdown(p: Protocol) -> list[str]:
    rows = [("eval split", f"{p.eval_split}: {p.num_images} images with CAMs, {p.num_images_with_gt} with ground "
                           f"truth; {p.subset}"),
            ("CAMs", f"mask generator of `{p.cam_source}`, {p.cam} CAM, split {p.cam_split}, scales {p.cam_scales}"
                     f"{' + flip' if p.cam_flip else ', no flip'}"),
            ("seed threshold", p.seed_threshold), ("threshold sweep", p.sweep),
            *((f"pseudo masks: {m}", w) for m, w in p.pseudo_mask_routes.items()),
            ("255", p.ignore_255),
            ("ground truth chose", "; ".join(p.ground_truth_chose) or "nothing"),
            ("final model", p.final_model)]
    return ["## Protocol", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
