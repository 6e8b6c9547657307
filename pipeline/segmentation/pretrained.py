"""Pretrained ResNet-101 weights for DeepLab-v2, converted to this project's
mmseg model keys (``backbone.*`` of mmseg's ResNet, ``decode_head.classifiers.i.*``
of ``DeepLabV2Head``).

Layouts recognised (after unwrapping ``state_dict``/``model`` and ``module.``):
- caffe-converted DeepLab-v2 (isht7/pytorch-deeplab-resnet ``MS_Deeplab``, e.g.
  ``MS_DeepLab_resnet_pretrained_COCO_init.pth`` that many WSSS code bases start
  from): ``Scale.conv1.weight``, ``Scale.layer1.0.conv1.weight``, ...,
  ``Scale.layer5.conv2d_list.{0..3}.{weight,bias}``. The ResNet part has
  torchvision's names (stride in the 1x1 conv: caffe style); the four
  classifiers are DeepLabV2Head's, kept only if their class count matches.
- torchvision-like ResNet (``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.*``):
  ImageNet weights; ``fc`` is dropped.
- already converted (``backbone.*``): kept.
Anything else (e.g. kazuto1011/deeplab-pytorch's ``layer2.block1.reduce.conv``
names) is refused with the keys it saw.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from pipeline.fileio import atomic_write

RESNET_KEY = re.compile(r"^(conv1|bn1|layer[1-4])\.")
CLASSIFIER_KEY = re.compile(r"^layer5\.conv2d_list\.(\d+)\.(weight|bias)$")


def _unwrap(obj, path: Path) -> dict:
    for k in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(k), dict):
            obj = obj[k]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: not a (non-empty) state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def convert_deeplabv2_state_dict(sd: dict, num_classes: int, source: str = "checkpoint") -> tuple[dict, dict]:
    """-> (state dict with model keys, info: layout, has_head, dropped keys)."""
    if all(k.startswith(("backbone.", "decode_head.")) for k in sd):
        return dict(sd), {"layout": "mmseg", "has_head": any(k.startswith("decode_head.") for k in sd),
                          "dropped": []}
    caffe = any(k.startswith("Scale.") for k in sd)
    out, dropped = {}, []
    for key, value in sd.items():
        name = key[len("Scale."):] if caffe and key.startswith("Scale.") else key
        if RESNET_KEY.match(name):
            out[f"backbone.{name}"] = value
        elif caffe and (m := CLASSIFIER_KEY.match(name)):
            out[f"decode_head.classifiers.{m[1]}.{m[2]}"] = value
        else:
            dropped.append(key)
    if not any(k.startswith("backbone.layer4.") for k in out):
        raise ValueError(f"{source}: unrecognised weight layout (expected Scale.layer1.0.conv1.weight, "
                         f"layer1.0.conv1.weight or backbone.*), first keys: {list(sd)[:5]}")
    head = [k for k in out if k.startswith("decode_head.")]
    n_head_cls = {out[k].shape[0] for k in head}
    if head and n_head_cls != {num_classes}:  # e.g. a 21-class head for COCO (81): train it from scratch
        dropped += head
        for k in head:
            del out[k]
    layout = "caffe DeepLab-v2 (Scale.*)" if caffe else "torchvision ResNet"
    return out, {"layout": layout, "has_head": any(k.startswith("decode_head.") for k in out),
                 "dropped": dropped}


def convert_deeplabv2_checkpoint(src: str | Path, dst: Path, num_classes: int, pretrained_format: str) -> dict:
    """Write ``dst`` ({"state_dict": model keys}) from the checkpoint ``src``; returns the info.
    Caffe-converted weights need caffe input (BGR, mean only) and caffe-style strides: refuse them
    unless ``pretrained_format`` says so, rather than train from badly scaled features."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"train_segmentation.pretrained: {src} not found")
    from pipeline.fileio import decoding
    with decoding(src, "train_segmentation.pretrained checkpoint",
                  fix="fetch it again (`wsss fetch weights`) or set train_segmentation.pretrained to a good copy"):
        sd = torch.load(src, map_location="cpu", weights_only=False)
    sd = _unwrap(sd, src)
    out, info = convert_deeplabv2_state_dict(sd, num_classes, str(src))
    if info["layout"].startswith("caffe") != (pretrained_format == "caffe"):
        raise ValueError(f"{src}: {info['layout']} weights, but train_segmentation.pretrained_format is "
                         f"'{pretrained_format}'; set it to "
                         f"'{'caffe' if info['layout'].startswith('caffe') else 'pytorch'}'")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst) as tmp:
        torch.save({"state_dict": out, "meta": {"converted_from": str(src.resolve()), **info}}, tmp)
    return info
