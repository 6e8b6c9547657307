"""Import an official WeakTr / SemPLeS checkpoint (e.g. WeakTr's released
checkpoint_best_mIoU.pth) into the mask generator.

Official layout (WeakTr models.py, SemPLeS models.py / models123.py; DeiT-S): ``cls_token``
(1, K, 384), ``pos_embed`` (1, K + 196, 384) with the K class positions first,
``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
``norm.*``, ``head.*`` (3x3 conv, K outputs) and ``adaptive_attention_fusion.*`` in one of
two layouts, told apart by their keys:
  - WeakTr V1 (2023-03): ``fc.0/fc.2``, the map fusion (mask_generator fusion 'maps');
  - WeakTr V2 / HEAD and SemPLeS: ``attn_head_ffn.*`` + ``attn_feat_ffn.*``, the feature
    fusion the SemPLeS phases use ('features').
The phases then load the imported warm start as every other: a V2 import keeps its trained
fusion, a V1 import's map fusion cannot serve them and they start a fresh feature fusion.

COCO: the official model has one class token / head row per COCO category id 1..90 (10 ids
unused). Imported into the 80-class model, rows are picked by category id
(pipeline.data.classes.COCO_CATEGORY_IDS). The 10 unused tokens are dropped, so their share
of every attention softmax goes to the other tokens: the imported CAMs are close to, not
identical with, the official 90-token forward (docs/reference/fidelity.md).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pipeline.fileio import decoding, sha256_file

FIELD = "train_cam.init_checkpoint"
FUSION_PREFIX = "adaptive_attention_fusion."


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an official checkpoint ({'model': state_dict, ...} or a bare state dict),
    loaded with weights_only=True (a pickle cannot run code); DDP's 'module.' prefix dropped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{FIELD}: {path} does not exist")
    with decoding(path, f"{FIELD} (a tensor-only torch checkpoint)",
                  fix=f"fetch it again (`wsss fetch weights`) or set {FIELD} to a good copy"):
        ck = torch.load(path, map_location="cpu", weights_only=True)
    sd = ck.get("model", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{FIELD}: {path} holds no state dict (expected {{'model': state_dict}} or a state dict)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


V1_KEYS = ("fc.0.weight", "fc.2.weight")
V2_KEYS = ("attn_head_ffn.0.weight", "attn_head_ffn.2.weight", "attn_feat_ffn.0.weight",
           "attn_feat_ffn.0.bias", "attn_feat_ffn.1.weight", "attn_feat_ffn.1.bias")


def fusion_kind(sd: dict, path: str | Path = "") -> str:
    """'maps' for a WeakTr V1 checkpoint (fc.*), 'features' for WeakTr V2/HEAD and SemPLeS
    (attn_head_ffn.* + attn_feat_ffn.*); any other fusion layout is an error naming its keys."""
    found = sorted(k[len(FUSION_PREFIX):] for k in sd if k.startswith(FUSION_PREFIX))
    if found == sorted(V1_KEYS):
        return "maps"
    if found == sorted(V2_KEYS):
        return "features"
    raise ValueError(f"{FIELD}: {path}: unknown attention-fusion layout, {FUSION_PREFIX}* keys {found} "
                     f"(WeakTr V1 has {list(V1_KEYS)}, WeakTr V2/HEAD and SemPLeS {list(V2_KEYS)})")


def select_coco_rows(sd: dict, num_classes: int, path: str | Path = "") -> dict:
    """An official COCO state dict with 90 class rows (category ids 1..90) -> one with the
    rows of ``num_classes`` = 80 classes, picked by category id. Anything else is returned as is."""
    from pipeline.data.classes import COCO_CATEGORY_IDS
    k = sd["cls_token"].shape[1] if "cls_token" in sd else None
    if k != 90 or num_classes != len(COCO_CATEGORY_IDS):
        return sd
    rows = torch.tensor([c - 1 for c in COCO_CATEGORY_IDS])
    out = dict(sd)
    out["cls_token"] = sd["cls_token"][:, rows]
    out["pos_embed"] = torch.cat([sd["pos_embed"][:, rows], sd["pos_embed"][:, k:]], 1)
    for name in ("head.weight", "head.bias"):
        if name in sd:
            out[name] = sd[name][rows]
    return out


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
    rows = sd["cls_token"].shape[1] if "cls_token" in sd else None
    sd = select_coco_rows(sd, model.num_classes, path)
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
    return {"imported_from": str(path), "sha256": sha256_file(path), "fusion": kind,
            "layout": "WeakTr V1" if kind == "maps" else "WeakTr V2 / SemPLeS", "tensors": len(sd),
            "class_rows": rows, **({"rows_selected_by": "COCO category id"} if rows != model.num_classes else {})}
