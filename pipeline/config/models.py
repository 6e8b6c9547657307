"""Sections of the models: mask_generator (S) and clip (the vision-language model)."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from pipeline.config.base import Section, _is_hub_tag


class MaskGeneratorCfg(Section):
    """WeakTr/SemPLeS S: DeiT-S with one class token per class (models.py, models123.py)."""
    arch: Literal["vit", "cnn"] = "vit"
    backbone: str = "deit_small_patch16_224"
    pretrained: Union[bool, str] = True  # True = timm's ImageNet weights, str = local file
    img_size: int = Field(224, ge=1)
    drop_path_rate: float = Field(0.1, ge=0, lt=1)  # main*.py --drop-path default
    # Attention fusion (AAF). features: heads weighted from their pooled attention features
    # (SemPLeS AAF.py, WeakTr AAF.py since V2; every phase and the official warm start); maps: from
    # their pooled attention maps (WeakTr V1, train_cam.recipe weaktr_v1). The stages set `fusion`.
    # reduction/pool are the official commands' --reduction/--pool-type.
    fusion: Literal["maps", "features"] = "maps"
    fusion_reduction: float = Field(8, gt=0, description="head FFN reduction (VOC 8, COCO 4)")
    fusion_pool: Literal["max", "avg"] = Field("max", description="pooling of maps/features (VOC max, COCO avg)")
    feat_reduction: int = Field(8, ge=1, description="feature FFN reduction of the features fusion (official 8)")
    final_norm: bool = Field(False, description="LayerNorm after the last block (official: none, "
                             "forward_features returns the last block's output)")
    input_remainder: Literal["crop", "pad"] = Field(
        "crop", description="an input side that is no multiple of the patch size: crop the remainder, as the "
                            "official stride-16 patch embedding does (the CAM grid then spans the whole image), "
                            "or pad it")


class ClipCfg(Section):
    # engine*.py: clip.load('ViT-B/32'): OpenAI's weights, trained with QuickGELU
    model: str = "ViT-B-32-quickgelu"
    pretrained: Optional[str] = "openai"  # hub tag or local checkpoint path (then set quick_gelu)
    allow_random_init: bool = False
    factory: Optional[str] = Field(None, description="'module:function' returning a VL model")
    template: str = "a photo of {}."
    image_size: int = Field(224, ge=1)
    # OpenAI's CLIP weights were trained with QuickGELU; open_clip builds plain GELU for
    # 'ViT-B-32' even with pretrained='openai'. None = from the model name ('-quickgelu').
    quick_gelu: Optional[bool] = None
    class_names: Literal["official", "label"] = Field(
        "official", description="text prompt names: the official code's list (clip_utils.py category_dict, "
                                "VOC 'player' for person) or the label names")
    input_norm: Literal["official", "clip"] = Field(
        "official", description="official: masked S inputs (ImageNet-normalised) go to CLIP as they are; "
                                "clip: renormalised with CLIP's own mean/std")

    @model_validator(mode="after")
    def _check_activation(self):
        named_quick = self.model.endswith("-quickgelu")
        if self.factory is None and self.pretrained == "openai" and not named_quick and not self.quick_gelu:
            raise ValueError(f"clip.model: OpenAI weights need QuickGELU; use '{self.model}-quickgelu' "
                             "or set clip.quick_gelu: true")
        if (self.factory is None and isinstance(self.pretrained, str) and not _is_hub_tag(self.pretrained)
                and not named_quick and self.quick_gelu is None):
            raise ValueError("clip.quick_gelu: say whether the local checkpoint was trained with QuickGELU "
                             "(true for OpenAI's weights) or GELU (false)")
        return self
