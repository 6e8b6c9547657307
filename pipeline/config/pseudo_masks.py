"""Pseudo-mask sections: sam, pseudo_masks (with the parameters of its routes) and import_masks."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from pipeline.config.base import Fraction, NonNegative, Section
from pipeline.registry import ROUTE_NAMES, ROUTE_PARAMS, check_not_shadowed


class ImportMasksCfg(Section):
    """Pseudo masks made by another code base (stage import_masks): with ``dir`` set,
    train_segmentation trains on them and evaluate scores them instead of pseudo_masks' route."""
    dir: Optional[Path] = Field(None, description="folder of <image id>.png label maps of data.train_split "
                                "(palette or greyscale class ids, 255 = ignore); None = masks of pseudo_masks")
    hash: Literal["stat", "full"] = Field("stat", description="the key covers names + sizes + mtimes (stat) "
                                          "or the sha256 (full) of the PNGs")
    gallery_size: int = Field(8, ge=0, description="image | mask pictures of a fixed sample")


class SamCfg(Section):
    """SAM automatic masks with FMA-WSSS's changes (pipeline/sam/generator.py). Official values:
    FMA-WSSS configs/sam_auto_seg/patterns/mask_gen_ini.py, pattern 'l2_nmsf_s1_rsw3' (the one
    configs/VOC/sams/cfg.py selects), on SAM ViT-H."""
    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"  # FMA: sam_vit_h_4b8939.pth
    checkpoint: Optional[str] = Field(None, description="local file or URL of the SAM weights; None = Meta's "
                                      "official URL for model_type (downloaded into the torch hub cache)")
    split: str = Field("train", description="the split whose masks are made; must equal export_cams.split")
    tiny: bool = Field(False, description="tiny random-initialised SAM (segment-anything's classes): tests, smoke")
    points_per_side: int = Field(32, ge=1)          # mask_gen_ini.py points_per_side = 32
    pred_iou_thresh: Fraction = 0.86                # pred_iou_thresh = 0.86
    stability_score_thresh: Fraction = 0.92         # stability_score_thresh = 0.92
    stability_score_offset: NonNegative = 1.0       # stability_score_offset = 1.0
    box_nms_thresh: Fraction = 0.7                  # box_nms_thresh = 0.7
    crop_n_layers: int = Field(1, ge=0)             # crop_n_layers = 1
    crop_nms_thresh: Fraction = 0.7                 # crop_nms_thresh = 0.7
    crop_overlap_ratio: Annotated[float, Field(ge=0, lt=1)] = 512 / 1500  # crop_overlap_ratio = 512 / 1500
    crop_n_points_downscale_factor: int = Field(2, ge=1)  # crop_n_points_downscale_factor = 2
    min_mask_region_area: int = Field(100, ge=0)    # min_mask_region_area = 100 (needs opencv)
    iou_thresh_offsets: tuple[float, float, float] = (0.0, 0.0, 0.1)  # score_thresh_offset (sub-part, part, whole)
    nms_offsets: tuple[float, float, float] = (0.0, 0.0, 1.0)  # score_nms_offset: whole masks win the NMS
    # stability_score_bias (sam_auto.py SamAuto.__init__ / _process_batch): added per level to the stability
    # score before its threshold; mask_gen_ini.py l2_nmsf_s1_rsw3 = (0.0, 0.0, 0.0)
    stability_score_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rsw_thresh: Optional[float] = Field(0.3, ge=0, le=1, description="rock_sand_water_thresh = 0.3; None = no filter")
    gallery_size: int = Field(8, ge=0, description="mask overlays of a fixed sample of images")
    # throughput only (the same masks): in THROUGHPUT, part of no artifact key
    points_per_batch: int = Field(64, ge=1, description="point prompts per mask-decoder call")
    amp: bool = Field(False, description="bfloat16 autocast on CUDA (off: unmeasured whether masks "
                      "stay within SAM's own tolerance)")
    images_in_flight: int = Field(2, ge=1, description="images read ahead (JPEG decode) and files written "
                                  "behind (JSON + rename) while SAM works on the current one")


PseudoMaskMethod = Literal[ROUTE_NAMES]  # the registered routes (pipeline/pseudo_masks/routes/)


class PseudoMasksCfg(*ROUTE_PARAMS, Section):
    """The fields below, and those of every route's parameter models (ROUTE_PARAMS: crf, affinity, sam_p)."""
    method: PseudoMaskMethod = Field("crf", description="the route the final model trains on (<out>/masks/)")
    extra_methods: list[PseudoMaskMethod] = Field(default_factory=list, description="further routes written to "
                                                  "<out>/masks_<method>/ and scored by evaluate beside it")
    bg_threshold: float = Field(0.43, ge=0, le=1, description="VOC: WeakTr docs/Training.md, CRF "
                                "post-processing `evaluation.py ... --t 43` (COCO 0.42)")
    low_threshold: Optional[float] = Field(None, ge=0, le=1, description="uncertain band lower bg threshold")
    high_threshold: Optional[float] = Field(None, ge=0, le=1, description="uncertain band upper bg threshold")
    ignore_uncertain: bool = True
    gallery_size: int = Field(8, ge=0, description="seed | pseudo mask pictures of a fixed sample")
    coco_json: bool = Field(False, description="also write the masks as COCO JSON (one RLE per class per image)")

    @model_validator(mode="after")
    def _check_band(self):
        lo, hi = self.low_threshold, self.high_threshold
        if (lo is None) != (hi is None):
            raise ValueError("low_threshold and high_threshold must be set together")
        if lo is not None and not 0 <= lo <= hi <= 1:
            raise ValueError(f"need 0 <= low_threshold <= high_threshold <= 1, got {lo}, {hi}")
        if self.method in self.extra_methods or len(set(self.extra_methods)) != len(self.extra_methods):
            raise ValueError(f"extra_methods {self.extra_methods} repeats a route (method is '{self.method}')")
        return self

    @property
    def routes(self) -> list[str]:
        return [self.method, *self.extra_methods]


check_not_shadowed(PseudoMasksCfg, ROUTE_PARAMS)
