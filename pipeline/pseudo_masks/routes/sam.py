"""FMA-WSSS's SAM-based seeding: label SAM's masks from the CAMs.

Official code (HAL-42/FMA-WSSS): src/tasks/anns_seed/run.py (the CAM cast to
float32, l. 90-98), src/libs/seeding/seed_anns/score_cw.py
(gather_norm_bg_argmax, norm_first=True), seed_anns/utils.py (gather_anns,
sort_anns, scatter_anns), src/libs/seeding/score.py (cam2score_cuda,
cat_bg_score_cuda), src/utils/norm.py (min_max_norm), and the generator's
rock-sand-water filter in src/libs/sam/custom_sam/sam_auto.py.
This is the pseudo-mask route ``sam``: it labels the masks of the sam_masks stage
(pipeline/sam/). The same maths, in float32 torch operations as the official ones:

- g[c, k] = sum(relu(cam_c) * M_k) / area_k (the "mean" gather over the
  (C, S, H, W) product, summed over (H, W));
- s[c, k] = (g[c, k] - min_k g[c]) / (max_k g[c] - min_k g[c] + 1e-7), the
  min-max ACROSS the image's masks (norm.py's eps), after a second relu;
- b[k] = (1 - max_c s[c, k]) ** p (the 'pow' background method);
- label = argmax over [b; s] (background first, so ties go to background),
  conf = the winning score;
- masks painted in stable ascending (level, conf) order, later ones on top:
  whole > part > sub-part, and the more confident mask wins within a level.
  Pixels no mask covers stay 0 (background); no 255, no CRF.

float32 matters on near-ties: a class whose CAM is (nearly) constant over the
image has masks means that differ by rounding only, and the 1e-7 eps of the
min-max does not swamp a float32 rounding difference (it does a float64 one).
The sums are torch's CPU float32 sums; the official ran them on CUDA, whose
summation order differs, so such exact ties are decided by rounding there too.

The official pipeline min-max normalises the CAM over pixels before the
gather as well (norm_first); the min-max across masks cancels that positive
affine map (up to its eps), so it is not repeated here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.artifacts import SamArtifact
from pipeline.registry import Route
from pipeline.sam.files import read_masks_json
from pipeline.section import Section

EPS = 1e-7  # src/utils/norm.py min_max_norm
GATHER_BYTES = 1 << 28  # the (C, S, H, W) float32 product is formed this many bytes at a time


def _gather(cam, masks, areas, max_bytes: int):
    """(C, S) float32 means of cam (C, H, W) over masks (S, H, W) bool, as gather_anns:
    the product (C, S, H, W) summed over (H, W), in chunks of masks. A chunk has at
    least two masks (or is all of them): with one output value torch may split the
    sum itself across threads, with more it splits over the outputs only, so every
    mean is the same float32 number whatever the chunk."""
    import torch

    C, S = cam.shape[0], masks.shape[0]
    per_mask = 4 * C * cam.shape[1] * cam.shape[2]
    step = max(2, max_bytes // max(per_mask, 1))
    sums = [torch.sum(cam[:, None] * masks[None, i:i + step], dim=(2, 3)) for i in range(0, S, step)]
    return torch.cat(sums, 1) / areas[None]


def seed_masks(cam: np.ndarray, fg_classes, masks: np.ndarray, levels, p: float,
               max_bytes: int = GATHER_BYTES) -> np.ndarray:
    """(H, W) uint8 labels (0 = background, else fg_classes[i]).

    cam (P, H, W) at image size for the image's present classes (cast to
    float32, as the official loader does), fg_classes (P,) their dataset label
    ids, masks (S, H, W) bool, levels (S,) int, p the background exponent. Masks
    of zero area paint nothing and take no part in the normalisation (the
    official mean would divide by zero)."""
    import torch

    cam = np.asarray(cam)
    masks = np.asarray(masks, dtype=bool)
    fg = np.asarray(fg_classes, dtype=np.int64).reshape(-1)
    levels = np.asarray(levels, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != len(fg):
        raise ValueError(f"cam must be (P, H, W) with P = len(fg_classes) = {len(fg)}, got {cam.shape}")
    if masks.ndim != 3 or masks.shape[1:] != cam.shape[1:] or len(levels) != len(masks):
        raise ValueError(f"masks must be (S, H, W) = (S, {cam.shape[1]}, {cam.shape[2]}) with S = len(levels) "
                         f"= {len(levels)}, got {masks.shape}")
    if len(fg) and not ((fg >= 1) & (fg <= 255)).all():
        raise ValueError(f"fg_classes must be label ids in 1..255, got {fg.tolist()}")
    out = np.zeros(cam.shape[1:], dtype=np.uint8)
    area = masks.sum((1, 2))
    keep = np.flatnonzero(area > 0)
    if len(keep) == 0 or len(fg) == 0:
        return out
    cam_t = torch.as_tensor(np.ascontiguousarray(cam), dtype=torch.float32)
    zero = torch.tensor(0, dtype=torch.float32)
    g = _gather(torch.maximum(cam_t, zero), torch.from_numpy(masks[keep]),
                torch.from_numpy(area[keep]), max_bytes)[:, None]  # (P, 1, S'), score_cw.py norm_first=True
    g = torch.maximum(g, zero)  # min_max_norm(thresh=0.)
    lo, hi = g.amin(dim=(1, 2), keepdim=True), g.amax(dim=(1, 2), keepdim=True)
    s = (g - lo) / (hi - lo + EPS)
    b = torch.pow(1 - torch.amax(s, dim=0, keepdim=True), p)
    scores = torch.cat((b, s), dim=0)  # (1 + P, 1, S'): background first
    idx = torch.argmax(scores, dim=0)  # first maximum: ties go to background
    conf = torch.gather(scores, 0, idx[None])[0, 0].numpy()
    labels = np.concatenate([[0], fg])[idx[0].numpy()]
    order = np.lexsort((conf, levels[keep]))  # stable, ascending level, then conf (sort_anns)
    for j in order:
        out[masks[keep[j]]] = labels[j]
    return out


def sam_pseudo_mask(path: Path, cams: np.ndarray, classes, p: float) -> np.ndarray:
    """The seeding of one image from its sam_masks file."""
    masks, levels, doc = read_masks_json(path)
    if (doc["height"], doc["width"]) != cams.shape[1:]:
        raise ValueError(f"{path}: masks are {doc['width']}x{doc['height']} but the CAMs "
                         f"{cams.shape[2]}x{cams.shape[1]}")
    return seed_masks(cams, classes, masks, levels, p)


class SamParams(Section):
    sam_p: float = Field(0.7, gt=0, description="sam route: background score (1 - max fg score) ** sam_p; "
                         "FMA-WSSS VOC: 0.6 on coarse, 0.7 on fine CAMs (export_cams.cam: fine)")


def sam_mask(image, cams, classes, cfg, job, setup) -> np.ndarray:
    path = SamArtifact(setup.inputs["sam_masks"]).image(setup.split, job.image_id)  # sam.split = the CAMs' split
    return sam_pseudo_mask(path, cams, classes, cfg.sam_p)


def sam_words(pm: dict, inputs: dict) -> str:
    sam = inputs.get("sam_masks", {}).get("sam", {})
    return (f"SAM {sam.get('model_type')}{' (tiny random)' if sam.get('tiny') else ''}: "
            f"{sam.get('points_per_side')} points/side, pred IoU {sam.get('pred_iou_thresh')}, stability "
            f"{sam.get('stability_score_thresh')}, box NMS {sam.get('box_nms_thresh')}, "
            f"{sam.get('crop_n_layers')} crop layers, min region {sam.get('min_mask_region_area')}, "
            f"rock-sand-water {sam.get('rsw_thresh')}; seeding background (1 - max) ** {pm.get('sam_p')}, "
            "no 255, no CRF")


ROUTE = Route("sam", sam_mask, sam_words, params=(SamParams,), inputs=("sam_masks",))
