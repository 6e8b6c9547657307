"""`wsss export-model`: the final model as a folder mmsegmentation alone loads.

``config.py`` (mmseg config: model, test and TTA pipelines, nothing of this project),
``model.pth`` (weights + ``meta.dataset_meta`` classes and palette, which mmseg's init_model
reads), ``classes.txt`` (one class a line, label id = line number - 1, background first) and
``classes.json`` (names and palette)::

    from mmseg.apis import init_model, inference_model
    model = init_model("DIR/config.py", "DIR/model.pth", device="cpu")
    label = inference_model(model, "image.jpg").pred_sem_seg.data[0]

What the training config has and mmseg has not is replaced by mmseg's own parts:
- the data sets, metrics, hooks, optimiser and ``custom_imports`` of this project are dropped
  (training only);
- ``IgnoreAwareMask2FormerHead`` -> mmseg's ``Mask2FormerHead``: the subclass changes only the
  loss targets, inference is the parent's (``mmdet.models`` stays imported, as in mmseg's own
  Mask2Former configs);
- ``DeepLabV2Head`` (four dilated 3x3 convs, rates r_i, summed) -> mmseg's ``FCNHead`` with one
  conv of kernel 2 max(r)/g + 1 at dilation g = gcd(r) (every tap of every branch lands on one
  tap of it; the biases add up) and an identity 1x1 classifier: the same function up to float
  summation order.
"""
from __future__ import annotations

import copy
import json
import math
from functools import reduce
from pathlib import Path

import torch

from pipeline.artifacts import SegmentationArtifact
from pipeline.fileio import torch_save_atomic

DROP = ("train_dataloader", "val_dataloader", "test_dataloader", "val_evaluator", "test_evaluator", "optim_wrapper",
        "param_scheduler", "train_cfg", "val_cfg", "test_cfg", "default_hooks", "custom_hooks", "custom_imports",
        "work_dir", "load_from", "resume", "env_cfg", "randomness", "vis_backends", "visualizer", "log_processor",
        "log_level", "launcher")


class ExportError(RuntimeError):
    pass


def deeplabv2_as_fcn(head: dict, state: dict, prefix: str = "decode_head.") -> tuple[dict, dict]:
    """DeepLabV2Head config + weights -> an equivalent mmseg FCNHead config + weights."""
    rates = list(head.get("dilations", (6, 12, 18, 24)))
    g = reduce(math.gcd, rates)
    half = max(rates) // g
    w0 = state[f"{prefix}classifiers.0.weight"]
    out_c, in_c = w0.shape[:2]
    weight = torch.zeros(out_c, in_c, 2 * half + 1, 2 * half + 1, dtype=w0.dtype)
    bias = torch.zeros(out_c, dtype=w0.dtype)
    for i, r in enumerate(rates):
        w, s = state.pop(f"{prefix}classifiers.{i}.weight"), r // g
        for ky in range(3):
            for kx in range(3):
                weight[:, :, half + (ky - 1) * s, half + (kx - 1) * s] += w[:, :, ky, kx]
        bias += state.pop(f"{prefix}classifiers.{i}.bias")
    state[f"{prefix}convs.0.conv.weight"], state[f"{prefix}convs.0.conv.bias"] = weight, bias
    state[f"{prefix}conv_seg.weight"] = torch.eye(out_c, dtype=w0.dtype)[:, :, None, None]
    state[f"{prefix}conv_seg.bias"] = torch.zeros(out_c, dtype=w0.dtype)
    fcn = dict(type="FCNHead", in_channels=head["in_channels"], in_index=head.get("in_index", -1),
               channels=out_c, num_convs=1, kernel_size=2 * half + 1, dilation=g, concat_input=False,
               dropout_ratio=0.0, num_classes=head["num_classes"], norm_cfg=None, act_cfg=None,
               align_corners=head.get("align_corners", False), init_cfg=None,
               loss_decode=head.get("loss_decode", dict(type="CrossEntropyLoss")))
    return fcn, state


def export_model(seg_dir: Path, out: Path) -> dict:
    """Write the self-contained folder of the train_segmentation artifact ``seg_dir``."""
    from mmengine.config import Config as MMConfig
    seg_dir, out = Path(seg_dir), Path(out)
    art = SegmentationArtifact(seg_dir)
    for f in (art.config, art.model):
        if not f.exists():
            raise ExportError(f"{f}: missing; is {seg_dir} a finished train_segmentation artifact?")
    cfg = MMConfig.fromfile(str(art.config), import_custom_modules=False)
    meta = cfg.train_dataloader.dataset.metainfo
    d = copy.deepcopy(cfg.to_dict())
    for k in DROP:
        d.pop(k, None)
    ckpt = torch.load(art.model, map_location="cpu", weights_only=False)
    state = dict(ckpt["state_dict"])
    model = d["model"]
    for part in ("backbone", "decode_head", "auxiliary_head"):
        if isinstance(model.get(part), dict):
            model[part].pop("init_cfg", None)  # the weights come from model.pth
    head = model["decode_head"]
    if head["type"] == "IgnoreAwareMask2FormerHead":
        head["type"] = "Mask2FormerHead"
        d["custom_imports"] = dict(imports=["mmdet.models"], allow_failed_imports=False)
    elif head["type"] == "DeepLabV2Head":
        model["decode_head"], state = deeplabv2_as_fcn(head, state)
    model.pop("auxiliary_head", None)  # training only (its weights are dropped too)
    state = {k: v for k, v in state.items() if not k.startswith("auxiliary_head.")}
    model["train_cfg"] = None
    left = [t for t in json.dumps(d, default=str).split('"type": "')[1:] if t.startswith(("Wsss", "IgnoreAware",
                                                                                          "DeepLabV2", "Crf"))]
    if left:
        raise ExportError(f"exported config still names project modules: {[t.split(chr(34))[0] for t in left]}")
    out.mkdir(parents=True, exist_ok=True)
    MMConfig(d).dump(str(out / "config.py"))
    classes, palette = list(meta["classes"]), [list(map(int, c)) for c in meta["palette"]]
    # plain values only: mmengine's load_checkpoint goes through torch.load(weights_only=True) on torch >= 2.6
    plain = {k: v for k, v in ckpt.get("meta", {}).items() if isinstance(v, (str, int, float, bool))}
    torch_save_atomic({"meta": {**plain, "dataset_meta": {"classes": classes, "palette": palette}},
                       "state_dict": state}, out / "model.pth")
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (out / "classes.json").write_text(json.dumps({"classes": classes, "palette": palette}, indent=1))
    return {"out": str(out), "model": head["type"], "classes": len(classes)}
