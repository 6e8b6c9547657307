"""Segmentation sections: train_segmentation (the final model) and ensemble."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from pipeline.config.base import NonNegative, Positive, Section
from pipeline.config.pseudo_masks import PseudoMaskMethod
from pipeline.crf import CrfCfg


class TrainSegmentationCfg(Section):
    """mmsegmentation model trained on the pseudo masks (pipeline/segmentation)."""
    model: Literal["deeplabv3plus", "deeplabv2", "mask2former"] = "deeplabv3plus"
    backbone: Literal["resnet18", "resnet50", "resnet101", "swin_t", "swin_s", "swin_b", "swin_l"] = "resnet101"
    depth: Optional[Literal[18, 34, 50, 101, 152]] = Field(None, description="ResNet depth override (mmseg ResNet)")
    # local checkpoint file, or a hub name mmengine can load (open-mmlab://resnet101_v1c, an http URL)
    pretrained: Optional[str] = None
    crop_size: int = Field(512, ge=32)
    batch_size: int = Field(16, ge=1, description="total over all processes")
    iters: int = Field(40000, ge=1)
    optimizer: Optional[Literal["sgd", "adamw"]] = Field(None,
                                                         description="None: SGD for DeepLab, AdamW for Mask2Former")
    lr: Positive = 0.01
    weight_decay: NonNegative = 5e-4
    amp: bool = Field(False, description="mixed precision (CUDA only)")
    # in THROUGHPUT, part of no artifact key: the pure-PyTorch fallback computes the same, slower
    require_compiled_ops: bool = Field(False, description="refuse to start (preflight) when the model would call "
                                       "a compiled mmcv op this install lacks (mmcv-lite on CUDA) instead of "
                                       "running mmcv's slower pure-PyTorch version")
    val_interval: int = Field(4000, ge=1)
    checkpoint_interval: int = Field(4000, ge=1)
    log_interval: int = Field(50, ge=1)
    gallery_size: int = Field(8, ge=0)
    tiny: bool = Field(False, description="small random-initialised variant (tests, smoke)")
    # the papers' protocols, each switchable
    checkpoint_selection: Literal["last", "best_val_miou"] = Field(
        "last", description="final model: the last iteration, or the val checkpoint with the best mIoU "
        "(mmengine save_best='mIoU'; FMA-WSSS reports this; numbers are then selected on val ground truth)")
    frozen_bn: Optional[bool] = Field(None, description="BatchNorm in eval mode, no grad; None: on for deeplabv2")
    head_lr_mult: Optional[float] = Field(None, gt=0, description="decode_head lr multiplier; None: 10 for "
                                          "deeplabv2 (DeepLab-v2's classifier x10), 1 otherwise")
    pretrained_format: Literal["pytorch", "caffe"] = Field(
        "pytorch", description="what the pretrained weights expect. pytorch: RGB input, ImageNet mean/std, "
        "ResNet stride in the 3x3 conv; caffe (caffe-converted DeepLab-v2 ResNet-101, keys Scale.*): "
        "BGR 0-255 minus mean, stride in the first 1x1 conv")
    tta: bool = Field(False, description="multi-scale + flip test of the final model (mmseg SegTTAModel)")
    tta_scales: list[Positive] = Field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], min_length=1)
    crf: Optional[CrfCfg] = Field(None, description="dense CRF on the final model's predictions; None = off")
    predict_split: Optional[str] = Field(None, description="split whose predictions the final model writes "
                                         "(PNGs + COCO JSON); None = none")


class EnsembleCfg(Section):
    """Further final models blended with train_segmentation's at evaluation time (stage ensemble,
    pipeline/segmentation/ensemble.py): the SemPLeS authors' FMA-WSSS fork, ensemble.py (2024-02-15..17)."""
    routes: list[PseudoMaskMethod] = Field(default_factory=list, description="one more final model per route, "
                                           "trained with train_segmentation's recipe on that route's pseudo "
                                           "masks (a route of pseudo_masks.extra_methods); empty = no ensemble")
    weights: list[NonNegative] = Field(default_factory=lambda: [0.85, 0.15], min_length=1, description="blend weights: "
                                 "train_segmentation's model first, then one per route (the fork's ensemble.py "
                                 "a = 0.85 / 1 - a, swept 1.0..0.7)")
    gallery_size: int = Field(4, ge=0, description="val image | blend | GT rows")

    @model_validator(mode="after")
    def _check_weights(self):
        if self.routes:
            if len(self.weights) != 1 + len(self.routes):
                raise ValueError(f"ensemble.weights: {len(self.weights)} weights for {1 + len(self.routes)} models "
                                 "(train_segmentation's, then one per ensemble.routes entry)")
            if min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError(f"ensemble.weights: {self.weights}: need non-negative weights, not all zero")
            if len(set(self.routes)) != len(self.routes):
                raise ValueError(f"ensemble.routes: {self.routes} names a route twice")
        return self
