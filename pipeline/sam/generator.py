"""SAM automatic masks with FMA-WSSS's three changes, on Meta's segment-anything.

FmaMaskGenerator subclasses Meta's SamAutomaticMaskGenerator and keeps its
point grid, crops, cross-crop NMS and small-region clean-up. What differs is
FMA-WSSS's src/libs/sam/custom_sam/sam_auto.py (SamAuto):
- each mask carries its ``level``: the index of SAM's multimask output
  (0 sub-part, 1 part, 2 whole);
- per-level offsets added to the predicted IoU before the IoU filter
  (``iou_thresh_offsets``, official (0, 0, 0.1)) and before the per-crop box
  NMS (``nms_offsets``, official (0, 0, 1.0): whole masks win the NMS); the
  reported predicted_iou is SAM's own;
- per-level biases added to the stability score before its filter
  (``stability_score_bias``, official (0, 0, 0)); the reported score is unbiased;
- after the clean-up, the rock-sand-water filter (rsw_filter below).
The per-batch step is written on Meta's public helpers (segment_anything.utils.amg).

Per-image output (pipeline/sam/files.py), a file a user can read without this project:
  {"image_id": str, "height": int, "width": int,
   "annotations": [{"segmentation": {"size": [h, w], "counts": str} (COCO RLE,
                    pycocotools.mask.decode reads it), "level": 0|1|2,
                    "predicted_iou": float, "stability_score": float,
                    "bbox": [x, y, w, h], "area": int}, ...]}
in the rock-sand-water order (level 2 first). No 'category_id': the masks are
class-agnostic until pseudo_masks labels them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (MaskData, area_from_rle, batched_mask_to_box, box_xyxy_to_xywh,
                                        calculate_stability_score, coco_encode_rle, is_box_near_crop_edge,
                                        mask_to_rle_pytorch, rle_to_mask, uncrop_masks)

from pipeline.fileio import decoding
from pipeline.precision import Precision
from pipeline.weights import SAM_URLS, HubWeight, hub_cache_path, hub_download



class StepTimer:
    """Seconds spent in image encoding (set_image) and mask decoding (predict_torch)."""

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.totals = {"encode": 0.0, "decode": 0.0}

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            if self.sync:
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(*a, **k)
            if self.sync:
                torch.cuda.synchronize()
            self.totals[name] += time.perf_counter() - t
            return out
        return timed

    def split(self, total: float) -> dict:
        """encode / decode / post seconds, post = the rest of ``total`` (thresholds, RLE, NMS, clean-up, filter)."""
        return {**self.totals, "post": max(total - self.totals["encode"] - self.totals["decode"], 0.0)}

    def attach(self, predictor) -> None:
        predictor.set_image = self.wrap("encode", predictor.set_image)
        predictor.predict_torch = self.wrap("decode", predictor.predict_torch)


class FmaMaskGenerator(SamAutomaticMaskGenerator):
    def __init__(self, model, iou_thresh_offsets=(0.0, 0.0, 0.0), nms_offsets=(0.0, 0.0, 0.0),
                 stability_score_bias=(0.0, 0.0, 0.0), rsw_thresh: Optional[float] = None, amp: bool = False,
                 **kwargs):
        super().__init__(model, output_mode="coco_rle", **kwargs)
        dev = self.predictor.device
        self.iou_thresh_offsets = torch.as_tensor(iou_thresh_offsets, dtype=torch.float32, device=dev)
        self.nms_offsets = torch.as_tensor(nms_offsets, dtype=torch.float32, device=dev)
        self.stability_score_bias = torch.as_tensor(stability_score_bias, dtype=torch.float32, device=dev)
        if {tuple(t.shape) for t in (self.iou_thresh_offsets, self.nms_offsets, self.stability_score_bias)} != {(3,)}:
            raise ValueError("iou_thresh_offsets / nms_offsets / stability_score_bias need one value per level (3)")
        self.rsw_thresh = rsw_thresh
        self.precision = Precision.of(dev, amp, "bfloat16")  # CUDA and CPU autocast both have bfloat16
        self.timer = StepTimer(dev)
        self.timer.attach(self.predictor)

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict]:
        """Mask records of one HWC uint8 RGB image (see the module docstring)."""
        with self.precision.autocast():
            data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(data, self.min_mask_region_area,
                                                  max(self.box_nms_thresh, self.crop_nms_thresh))
        if self.rsw_thresh is not None and len(data["rles"]):
            masks = np.stack([rle_to_mask(r) for r in data["rles"]])
            data.filter(torch.as_tensor(rsw_filter(masks, data["level"], self.rsw_thresh)))
        records = [{"segmentation": coco_encode_rle(rle), "level": int(data["level"][i]),
                    "predicted_iou": float(data["iou_preds"][i]),
                    "stability_score": float(data["stability_score"][i]),
                    "bbox": [float(v) for v in box_xyxy_to_xywh(torch.as_tensor(data["boxes"][i])).tolist()],
                    "area": int(area_from_rle(rle))} for i, rle in enumerate(data["rles"])]
        return records

    def _process_crop(self, image, crop_box, crop_layer_idx, orig_size) -> MaskData:
        # Meta's per-crop NMS ranks by data["iou_preds"], which _process_batch
        # fills with the NMS-offset scores; SAM's own IoU comes back afterwards
        data = empty_crop_fix(super()._process_crop(image, crop_box, crop_layer_idx, orig_size))
        data["iou_preds"] = data["iou_raw"]
        del data["iou_raw"]
        return data

    def _process_batch(self, points, im_size, crop_box, orig_size) -> MaskData:
        """One batch of point prompts -> filtered masks as RLE, with level."""
        h, w = orig_size
        coords = torch.as_tensor(self.predictor.transform.apply_coords(points, im_size),
                                 device=self.predictor.device)
        labels = torch.ones(len(coords), dtype=torch.int, device=coords.device)
        logits, iou, _ = self.predictor.predict_torch(coords[:, None], labels[:, None], multimask_output=True,
                                                      return_logits=True)
        logits, iou = logits.float(), iou.float()
        n, k = iou.shape
        level = torch.arange(k, device=iou.device).expand(n, k)
        data = MaskData(masks=logits.flatten(0, 1), iou_raw=iou.flatten(0, 1),
                        iou_preds=(iou + self.nms_offsets[:k]).flatten(0, 1),  # the per-crop NMS score
                        iou_thresh=(iou + self.iou_thresh_offsets[:k]).flatten(0, 1),
                        level=level.flatten(0, 1), points=torch.as_tensor(np.repeat(points, k, axis=0)))
        del logits
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_thresh"] > self.pred_iou_thresh)
        del data["iou_thresh"]
        data["stability_score"] = calculate_stability_score(data["masks"], self.predictor.model.mask_threshold,
                                                            self.stability_score_offset)
        if self.stability_score_thresh > 0.0:  # sam_auto.py: (score + bias of the level) >= thresh
            bias = self.stability_score_bias[data["level"]]
            data.filter(data["stability_score"] + bias >= self.stability_score_thresh)
        data["masks"] = data["masks"] > self.predictor.model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, w, h])
        if near_edge.any():
            data.filter(~near_edge)
        data["rles"] = mask_to_rle_pytorch(uncrop_masks(data["masks"], crop_box, h, w))
        del data["masks"]
        return data


def empty_crop_fix(data: MaskData) -> MaskData:
    """A crop without masks gets crop_boxes of shape (0,) from Meta's code, and the
    cross-crop NMS then fails on an image where no crop found a mask: (0, 4)."""
    if len(data["rles"]) == 0:
        data["crop_boxes"] = torch.zeros((0, 4), dtype=torch.int64)
    return data


def rsw_filter(masks: np.ndarray, levels, thresh: float) -> np.ndarray:
    """Indices of the masks the rock-sand-water filter keeps, in the official
    output order (level 2, then 1, then 0; input order within a level).

    As sam_auto.py: the container starts with all level-2 masks; a level that
    finds the container empty is taken whole.
    A lower-level mask m is kept when max over kept c of |m & c| / |m| < thresh;
    a zero-area mask (0/0) is dropped, as the official NaN comparison does."""
    masks = np.asarray(masks, dtype=bool)
    levels = np.asarray(levels, dtype=np.int64).reshape(-1)
    if masks.ndim != 3 or len(masks) != len(levels):
        raise ValueError(f"masks must be (S, H, W) with S = len(levels) = {len(levels)}, got {masks.shape}")
    flat = masks.reshape(len(masks), masks.shape[1] * masks.shape[2])
    kept: list[int] = []
    for level in (2, 1, 0):
        idx = np.flatnonzero(levels == level)
        if not kept:
            kept.extend(idx.tolist())
            continue
        if len(idx) == 0:
            continue
        m = flat[idx].astype(np.float32)
        inter = m @ flat[kept].astype(np.float32).T  # (n, kept): exact integer counts below 2**24 pixels
        area = m.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = (inter / area[:, None]).max(1)
        kept.extend(idx[recall < thresh].tolist())  # NaN (zero area) compares False: dropped
    return np.asarray(kept, dtype=np.int64)


# ------------------------------------------------------------------ the model
def tiny_sam(seed: int = 0, img_size: int = 128):
    """A tiny random-initialised SAM from segment-anything's own classes (tests, smoke)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    dim, grid = 32, img_size // 16
    return Sam(image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                                             out_chans=dim),
               prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                            input_image_size=(img_size, img_size), mask_in_chans=8),
               mask_decoder=MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(
                   depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2), iou_head_hidden_dim=32)).eval()


def checkpoint_file(model_type: str, checkpoint: Optional[str]) -> Path:
    """Local path of the SAM weights: a file, or a URL downloaded into the torch
    hub cache (checkpoints/). Offline or missing: a clear error naming the
    config key, the URL and the file it expected."""
    src = checkpoint or SAM_URLS[model_type]
    if "://" not in src:
        if not Path(src).is_file():
            raise FileNotFoundError(f"sam.checkpoint: SAM weights file {src} does not exist")
        return Path(src)
    try:
        return hub_download(src)
    except Exception as e:
        path = hub_cache_path(src)
        raise RuntimeError(f"sam.checkpoint: cannot download {src} to {path} ({type(e).__name__}: {e}); "
                           f"offline, put the file at {path} or set sam.checkpoint to a local copy") from None


def hub_weights(sam) -> list[HubWeight]:
    """The hub weights a SamCfg loads: sam.checkpoint as a URL (default Meta's for sam.model_type),
    downloaded into torch.hub's cache; none for a local file or the tiny random SAM."""
    if sam.tiny or "://" not in (sam.checkpoint or "://"):
        return []
    url, model_type = sam.checkpoint or SAM_URLS[sam.model_type], sam.model_type
    return [HubWeight("sam.checkpoint", url, f"Meta's SAM {model_type} weights", url,
                      f"torch.hub's checkpoint cache ({hub_cache_path(url)})", "",
                      lambda: checkpoint_file(model_type, url))]


def load_sam(model_type: str, checkpoint: Optional[str], tiny: bool, device: torch.device):
    if tiny:
        return tiny_sam().to(device)
    from segment_anything import sam_model_registry

    path = checkpoint_file(model_type, checkpoint)
    model = sam_model_registry[model_type](checkpoint=None)
    with decoding(path, f"sam.checkpoint ({model_type} SAM state dict)",
                  fix="fetch it again (`wsss fetch weights`) or set sam.checkpoint to a good copy"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise RuntimeError(f"sam.checkpoint: {path} is no {model_type} SAM state dict ({e})") from None
    return model.eval().to(device)


def make_generator(cfg, device: torch.device) -> FmaMaskGenerator:
    """FmaMaskGenerator from a SamCfg (pipeline/config/pseudo_masks.py)."""
    model = load_sam(cfg.model_type, cfg.checkpoint, cfg.tiny, device)
    return FmaMaskGenerator(model, iou_thresh_offsets=cfg.iou_thresh_offsets, nms_offsets=cfg.nms_offsets,
                            stability_score_bias=cfg.stability_score_bias, rsw_thresh=cfg.rsw_thresh, amp=cfg.amp,
                            **meta_kwargs(cfg))


def meta_kwargs(cfg) -> dict:
    """The SamCfg fields Meta's SamAutomaticMaskGenerator takes."""
    return {k: getattr(cfg, k) for k in (
        "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset",
        "box_nms_thresh", "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio", "crop_n_points_downscale_factor",
        "min_mask_region_area")}
