"""Import an official WeakTr / SemPLeS checkpoint (e.g. WeakTr's released
checkpoint_best_mIoU.pth) into the mask generator.

Official layout (WeakTr models.py, SemPLeS models123.py; DeiT-S): ``cls_token``
(1, K, 384), ``pos_embed`` (1, K + 196, 384) with the K class positions first,
``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
``norm.*``, ``head.*`` (3x3 conv, K outputs) and ``adaptive_attention_fusion.*``:
``fc.0/fc.2`` for WeakTr's map fusion, ``attn_head_ffn.*`` + ``attn_feat_ffn.*`` for
SemPLeS' feature fusion. WeakTr's released checkpoint carries the map fusion, so
the SemPLeS phases start their feature fusion freshly initialised, as the official
``load_state_dict(..., strict=False)`` leaves it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pipeline.store import sha256_file

FIELD = "train_cam.init_checkpoint"
FUSION_PREFIX = "adaptive_attention_fusion."


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an official checkpoint ({'model': state_dict, ...} or a bare state dict),
    loaded with weights_only=True (a pickle cannot run code); DDP's 'module.' prefix dropped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{FIELD}: {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{FIELD}: {path} is not a tensor-only torch checkpoint ({e})") from None
    sd = ck.get("model", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{FIELD}: {path} holds no state dict (expected {{'model': state_dict}} or a state dict)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def fusion_kind(sd: dict, path: str | Path = "") -> str:
    if FUSION_PREFIX + "fc.0.weight" in sd:
        return "maps"
    if FUSION_PREFIX + "attn_head_ffn.0.weight" in sd:
        return "features"
    raise ValueError(f"{FIELD}: {path} has no adaptive_attention_fusion weights (not a WeakTr/SemPLeS checkpoint)")


def to_mask_generator_keys(sd: dict, path: str | Path = "") -> dict[str, torch.Tensor]:
    """Official names -> ViTMaskGenerator names; unknown official keys are an error."""
    for key in ("cls_token", "pos_embed", "head.weight"):
        if key not in sd:
            raise ValueError(f"{FIELD}: {path} lacks '{key}'")
    k = sd["cls_token"].shape[1]
    pos = sd["pos_embed"]
    out = {"cls_tokens": sd["cls_token"], "cls_pos": pos[:, :k], "patch_pos": pos[:, k:]}
    unknown = []
    for name, v in sd.items():
        if name in ("cls_token", "pos_embed"):
            continue
        if name.startswith(("patch_embed.", "blocks.", "norm.")):
            out["vit." + name] = v
        elif name.startswith("head."):
            out[name] = v
        elif name.startswith(FUSION_PREFIX):
            out["fusion." + name[len(FUSION_PREFIX):]] = v
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{FIELD}: {path} has keys the mask generator does not know: {unknown[:8]}")
    return out


def import_weaktr_checkpoint(model: nn.Module, path: str | Path, sd: dict | None = None) -> dict:
    """Load an official checkpoint into ``model`` (built with the checkpoint's fusion kind);
    any missing, extra or mis-shaped key is an error naming it. ``sd``: the checkpoint's
    state dict when the caller has read it already. Returns metrics."""
    path = Path(path)
    sd = read_official_state_dict(path) if sd is None else sd
    kind = fusion_kind(sd, path)
    if getattr(model.fusion, "kind", None) != kind:
        raise ValueError(f"{FIELD}: {path} has a '{kind}' attention fusion, the model a '{model.fusion.kind}' one")
    ours = to_mask_generator_keys(sd, path)
    target = model.state_dict()
    missing = sorted(set(target) - set(ours))
    extra = sorted(set(ours) - set(target))
    shapes = [f"{n} {tuple(ours[n].shape)} vs {tuple(target[n].shape)}"
              for n in sorted(set(ours) & set(target)) if ours[n].shape != target[n].shape]
    if missing or extra or shapes:
        hint = (" (class count: data classes; fusion shapes: mask_generator.fusion_reduction / feat_reduction; "
                "width/depth: mask_generator.backbone)")
        raise ValueError(f"{FIELD}: {path} does not fit the mask generator{hint}: "
                         f"missing {missing[:8]}, extra {extra[:8]}, mis-shaped {shapes[:8]}")
    model.load_state_dict(ours)
    return {"imported_from": str(path), "sha256": sha256_file(path), "fusion": kind, "tensors": len(sd)}
