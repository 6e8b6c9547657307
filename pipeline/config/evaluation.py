"""Evaluation sections: checks (the image checks) and evaluate."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Fraction, Section


class ChecksCfg(Section):
    """Image checks of `wsss data check` and of every run once prepare_data is done
    (pipeline/data/image_checks.py). No stage declares this section, so it is part of no
    artifact key: it decides whether a run may go on, never what a stage computes."""
    min_patches: int = Field(1, ge=1, description="patches of the mask generator the shorter image side must "
                             "give at the smallest export_cams scale (fewer: no CAM grid, the export fails)")
    small_images: Literal["error", "warn"] = Field("error", description="an image below min_patches: refuse "
                                                   "the run (error) or log a warning")
    export_memory_gb: float = Field(32.0, gt=0, description="budget for one image's CAM forward with its flip at "
                                    "the largest export_cams scale (estimated from the attention maps the "
                                    "mask generator keeps, float32)")
    large_images: Literal["error", "warn"] = Field("error", description="an image over export_memory_gb: refuse "
                                                   "the run (error; resize the image) or log a warning")


# the official seed sweep: SemPLeS/WeakTr evaluation.py --start 40 (--end 60), thresholds range(40, 60) / 100
OFFICIAL_SWEEP = tuple(round(0.01 * i, 2) for i in range(40, 60))


class EvaluateCfg(Section):
    bg_threshold: float = Field(0.43, ge=0, le=1, description="the fixed seed threshold = the pseudo masks' "
                                "(VOC: WeakTr docs/Training.md --t 43)")
    sweep: list[Fraction] = Field(default_factory=lambda: list(OFFICIAL_SWEEP), min_length=1,
                               description="background thresholds of the seed sweep (picks its best with GT)")
    gallery_size: int = Field(8, ge=0)
