"""The threshold routes: ``argmax`` (argmax of [t, CAMs], the background threshold t only) and
``crf`` (the same seeds refined by a dense CRF over the image, WeakTr's CAM-CRF); the labelling
itself is pipeline/pseudo_masks/threshold.py."""
from __future__ import annotations

from pydantic import Field

from pipeline.crf import CrfCfg
from pipeline.pseudo_masks.threshold import crf_words, threshold_mask, threshold_words
from pipeline.registry import Route
from pipeline.section import Section


class CrfParams(Section):
    crf: CrfCfg = Field(default_factory=CrfCfg)


def argmax_mask(image, cams, classes, cfg, job, setup):
    return threshold_mask(image, cams, classes, cfg, crf=False)


def crf_mask(image, cams, classes, cfg, job, setup):
    return threshold_mask(image, cams, classes, cfg, crf=True)


ROUTES = (
    Route("argmax", argmax_mask, lambda pm, inputs: f"argmax of [t, CAMs], {threshold_words(pm)}"),
    Route("crf", crf_mask, lambda pm, inputs: f"{threshold_words(pm)}; {crf_words(pm)}", params=(CrfParams,)),
)
