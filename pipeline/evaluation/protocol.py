"""The protocol card of an evaluate report: how every number of it was made, in one place.

Read from the manifests of the artifacts that made the numbers (their resolved config
sections), so the card describes those artifacts, not the config file of the moment:
split and image count, CAM source, scales and flip, the seed threshold rules (fixed / the
official early-stopping sweep / the sweep's GT maximum), the parameters of every pseudo-mask
route (in its record's words), how 255 counts, what ground truth chose, subset or full split,
and the final model's test-time augmentation and checkpoint selection.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

from pipeline.registry import ROUTES

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


def route_words(method: str, pm: dict, inputs: dict) -> str:
    """A route's parameters in words, as its record describes them (``inputs``: the config
    sections of the artifacts of the route's further input stages)."""
    if method not in ROUTES:  # a report of a route since removed
        return method
    return ROUTES[method].describe(pm, inputs)


def route_inputs(pm_dir: Optional[str | Path], routes: list[str]) -> dict:
    """{stage: its artifact's config sections} of the further inputs of ``routes``, found through
    the pseudo_masks artifact's manifest (the keys it was made from)."""
    manifest = Path(pm_dir) / "manifest.json" if pm_dir else None
    if not (manifest and manifest.exists()):
        return {}
    keys = json.loads(manifest.read_text()).get("inputs", {})
    stages = {s for m in routes if m in ROUTES for s in ROUTES[m].inputs}
    return {s: manifest_config(Path(pm_dir).parent / keys[s]) for s in sorted(stages) if keys.get(s)}


def build_protocol(*, eval_split: str, num_images: int, num_images_with_gt: int, inputs: dict,
                   bg_threshold: float, sweep: list[float], routes: list[str], selection_gt: list[str],
                   final_label: Optional[str], final_available: bool, official_t=None, best_t=None) -> Protocol:
    """``inputs``: evaluate's input artifact dirs; ``selection_gt``: training stages that kept
    their epoch by seed mIoU against GT (or an imported warm start)."""
    data = manifest_config(inputs.get("prepare_data")).get("data", {})
    cams = manifest_config(inputs.get("export_cams")).get("export_cams", {})
    pm = manifest_config(inputs.get("pseudo_masks")).get("pseudo_masks", {})
    further = route_inputs(inputs.get("pseudo_masks"), routes)
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
        pseudo_mask_routes={m: route_words(m, pm, further) for m in routes},
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
