"""The dense CRF (pydensecrf) over an image's seed labels: its parameters, a section of
pseudo_masks (the crf and affinity_crf routes) and of train_segmentation (post-processing of
the final model's predictions). A leaf (numpy, pydantic): the config and the routes read it.
Pure numpy + pydensecrf (no torch), so process-pool workers start fast."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from pipeline.section import NonNegative, Positive, Section


class CrfCfg(Section):
    """pydensecrf parameters; defaults = WeakTr's VOC CAM-CRF (tool/imutils.py)."""
    iterations: int = Field(10, ge=1)
    gauss_sxy: Positive = 4
    gauss_compat: NonNegative = 3
    bilateral_sxy: Positive = 83
    bilateral_srgb: Positive = 5
    bilateral_compat: NonNegative = 3
    gt_prob: float = Field(0.7, gt=0, lt=1, description="pydensecrf unary_from_labels: confidence in the seed labels")


def crf_index(image: np.ndarray, index: np.ndarray, n_labels: int, cfg: CrfCfg) -> np.ndarray:
    """Dense CRF over the image's own labels only (n_labels = 1 + present
    classes), as WeakTr's crf_inference_label: the unary comes from the hard
    seed labels (unary_from_labels, gt_prob, zero_unsure=False), then a
    Gaussian and a bilateral pairwise term."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    h, w = index.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image size {image.shape[1]}x{image.shape[0]} != seed size {w}x{h}")
    if n_labels < 2:
        return index
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(index, n_labels, gt_prob=cfg.gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=cfg.gauss_sxy, compat=cfg.gauss_compat)
    d.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb,
                           rgbim=np.array(image, dtype=np.uint8, order="C"), compat=cfg.bilateral_compat)
    q = np.asarray(d.inference(cfg.iterations)).reshape(n_labels, h, w)
    return q.argmax(0).astype(np.uint8)
