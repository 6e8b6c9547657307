"""Mask generator S: WeakTr-style ViT (one class token per foreground class)
or a CLIMS-style CNN with a 1x1 class head. Both are built on timm backbones.

Public API (used by the training stages and by export_cams):
    build_mask_generator(cfg, num_classes_fg) -> nn.Module
    save_mask_generator(model, path, cfg, num_classes_fg)
    load_mask_generator(path, device) -> model in eval mode
    model(x) -> dict: cls_logits, patch_logits, attn_logits (B, K) for the warm
        start; coarse (B, K, h, w); fine (B, K, h, w); patch_attn (B, N, N)
    model.cams(x) -> (B, K, h, w) raw fine CAMs on the patch grid
    model.patch_attention(x) -> ((B, N, N) fused patch-to-patch attention, (h, w));
        rows are not normalised (class tokens take part of the mass, as in WeakTr)
    model.cams_and_attention(x) -> (cams, patch_attn, (h, w)) in one pass

Channel k of every CAM/logit tensor is label id k + 1 (0 = background is not
predicted). Inputs are RGB in [0, 1] normalised with MEAN / STD below (use
``normalize``); any H, W works (the remainder past a multiple of the patch size is
cropped, as the official stride-16 patch embedding does, or padded with
mask_generator.input_remainder: pad; position embeddings are interpolated).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import MaskGeneratorCfg
from pipeline.fileio import decoding, torch_save_atomic

# The one image normalisation of S (DeiT / ImageNet statistics).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "wsss.mask_generator/1"


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] (or uint8 0..255) -> S's normalised input."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    mean = torch.tensor(MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def normalize_numpy(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float tensor normalised for S."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    return normalize(t[None])[0]


def _create_timm(cfg: MaskGeneratorCfg, load_weights: bool, **kwargs) -> nn.Module:
    """timm model with hub weights (pretrained=True), a local file (str) or none."""
    pre = cfg.pretrained if load_weights else False
    if isinstance(pre, str):
        path = Path(pre)
        if not path.exists():
            raise FileNotFoundError(f"mask_generator.pretrained: {path} does not exist")
        return timm.create_model(cfg.backbone, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    try:
        return timm.create_model(cfg.backbone, pretrained=bool(pre), **kwargs)
    except Exception as e:
        if isinstance(e, RuntimeError) and "Unknown model" in str(e):
            raise ValueError(f"mask_generator.backbone: unknown timm model '{cfg.backbone}'") from None
        if not pre:
            raise
        # the hub download failed (offline: huggingface_hub's LocalEntryNotFoundError): one paragraph
        from pipeline.weights import explain, timm_weight
        raise explain(timm_weight(cfg.backbone), e) from None


class MapFusion(nn.Module):
    """WeakTr V1's attention fusion (AAF.py, 2023-03; train_cam.recipe weaktr_v1): a
    squeeze-excitation over the per-head attention maps, each pooled over (T, T); weights in (0, 1)."""

    kind = "maps"

    def __init__(self, channels: int, reduction: float = 8, pool: str = "max"):
        super().__init__()
        hidden = int(channels / reduction)
        self.pool = pool
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def weights(self, maps: torch.Tensor, feats: Optional[torch.Tensor]) -> torch.Tensor:
        pooled = maps.amax(dim=(2, 3)) if self.pool == "max" else maps.mean(dim=(2, 3))
        return self.fc(pooled)


class FeatureFusion(nn.Module):
    """The official attention fusion at HEAD (SemPLeS AAF.py and WeakTr AAF.py since V2,
    class AAF; warm start and every phase): each head's attention *features* (B, C, T, D)
    pooled over tokens, a linear FFN D -> D/r -> 1 per head, then a squeeze-excitation FFN
    over the C heads with a sigmoid."""

    kind = "features"

    def __init__(self, channels: int, reduction: float = 8, pool: str = "max", head_dim: int = 64,
                 feat_reduction: int = 8):
        super().__init__()
        hidden, feat_hidden = int(channels / reduction), int(head_dim / feat_reduction)
        self.pool = pool
        self.attn_head_ffn = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                           nn.Linear(hidden, channels, bias=False), nn.Sigmoid())
        self.attn_feat_ffn = nn.Sequential(nn.Linear(head_dim, feat_hidden), nn.Linear(feat_hidden, 1))

    def weights(self, maps: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        pooled = feats.amax(dim=2) if self.pool == "max" else feats.mean(dim=2)  # (B, C, D)
        return self.attn_head_ffn(self.attn_feat_ffn(pooled).squeeze(-1))


def build_fusion(cfg: MaskGeneratorCfg, channels: int, head_dim: int) -> nn.Module:
    if cfg.fusion == "maps":
        return MapFusion(channels, cfg.fusion_reduction, cfg.fusion_pool)
    return FeatureFusion(channels, cfg.fusion_reduction, cfg.fusion_pool, head_dim, cfg.feat_reduction)


def merged_attention(maps: torch.Tensor, heads: int, n_tokens: int, last_n_layers: int) -> torch.Tensor:
    """FMA-WSSS CAA's attention (pipeline/cams/caa.py): (B, heads * L, T, T) softmax maps,
    channel = head * L + layer -> (B, N, N): heads averaged, then the last n layers, the first
    ``n_tokens`` (class) tokens dropped; float16 rounding as FMA stores it (infer_cam/run.py
    saves merge_att(...).to(float16))."""
    B, C, T, _ = maps.shape
    last = maps.view(B, heads, C // heads, T, T)[:, :, -last_n_layers:, n_tokens:, n_tokens:]
    return last.float().mean(1).mean(1).half().float()  # heads, then layers


class ViTMaskGenerator(nn.Module):
    """WeakTr: K class tokens, a 3x3 conv head on the patch tokens (coarse CAM),
    fused class-to-patch attention x ReLU(coarse CAM), refined by the fused
    patch-to-patch attention (fine CAM). Attention maps and features enter the
    fusion detached, as in the official code.

    Two switches set by the training stages (``set_recipe``):
      detach_tokens: patch tokens are detached before the head, so only the head and
        the fusion learn and the backbone runs without autograd (SemPLeS phases 1/3,
        models123.py);
      detach_coarse: the fine CAM uses the detached coarse CAM, so the fine-CAM loss
        trains only the fusion (WeakTr warm start, models.py)."""

    arch = "vit"

    def __init__(self, cfg: MaskGeneratorCfg, num_classes_fg: int, load_weights: bool = True):
        super().__init__()
        try:
            vit = _create_timm(cfg, load_weights, num_classes=0, global_pool="",
                               drop_path_rate=cfg.drop_path_rate, img_size=cfg.img_size)
        except TypeError:  # e.g. a CNN does not take img_size
            vit = None
        if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
            raise ValueError(f"mask_generator.backbone: '{cfg.backbone}' is not a timm ViT "
                             "(use arch: cnn for convolutional backbones)")
        if getattr(vit, "reg_token", None) is not None or vit.cls_token is None or vit.pos_embed is None:
            raise ValueError(f"mask_generator.backbone: '{cfg.backbone}' needs a class token, learned "
                             "position embeddings and no register tokens")
        K, D = num_classes_fg, vit.embed_dim
        self.num_classes = K
        self.patch_size = vit.patch_embed.patch_size[0]
        self.grid = tuple(vit.patch_embed.grid_size)
        self.num_heads = vit.blocks[0].attn.num_heads
        # WeakTr starts every class token (and its position) from the pretrained one.
        pos = vit.pos_embed.detach()
        cls_pos = torch.zeros(1, 1, D) if vit.no_embed_class else pos[:, :1]
        patch_pos = pos if vit.no_embed_class else pos[:, 1:]
        self.cls_tokens = nn.Parameter(vit.cls_token.detach().repeat(1, K, 1).clone())
        self.cls_pos = nn.Parameter(cls_pos.repeat(1, K, 1).clone())
        self.patch_pos = nn.Parameter(patch_pos.clone())
        vit.cls_token, vit.pos_embed = None, None  # replaced by the K-token versions above
        vit.patch_embed.strict_img_size = False
        self.vit = vit
        self.final_norm = cfg.final_norm
        self.pad_input = cfg.input_remainder == "pad"
        self._maps: list[torch.Tensor] = []
        self._feats: list[torch.Tensor] = []
        for blk in vit.blocks:
            blk.attn.fused_attn = False  # the attention matrix must be materialised
            blk.attn.attn_drop.register_forward_hook(self._keep_map)
            blk.attn.register_forward_hook(self._keep_feat)
        self.fusion = build_fusion(cfg, len(vit.blocks) * self.num_heads, D // self.num_heads)
        # a conv head with PyTorch's default init (WeakTr's _init_weights skips convs)
        self.head = nn.Conv2d(D, K, kernel_size=3, padding=1)
        self.detach_tokens = False
        self.detach_coarse = False

    def set_recipe(self, detach_tokens: bool, detach_coarse: bool) -> "ViTMaskGenerator":
        self.detach_tokens, self.detach_coarse = detach_tokens, detach_coarse
        return self

    def backbone_parameters(self):
        """Everything but the head and the fusion (frozen when detach_tokens)."""
        skip = {id(p) for p in [*self.head.parameters(), *self.fusion.parameters()]}
        return [p for p in self.parameters() if id(p) not in skip]

    def _keep_map(self, module, inputs, output):
        self._maps.append(inputs[0].detach())  # softmax attention before dropout (B, H, T, T)

    def _keep_feat(self, module, inputs, output):
        if self.fusion.kind == "features":
            self._feats.append(output.detach())  # attention output after proj (B, T, C)

    def _fit_to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Crop the remainder to a multiple of the patch size (official) or pad it."""
        p = self.patch_size
        if not self.pad_input:
            return x[..., : x.shape[2] // p * p, : x.shape[3] // p * p]
        ph, pw = (-x.shape[2]) % p, (-x.shape[3]) % p
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def _patch_pos(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == self.grid:
            return self.patch_pos
        # WeakTr's interpolate_pos_encoding: bicubic with scale factor (n + 0.1) / n0
        gh, gw = self.grid
        grid = self.patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / gh, (w + 0.1) / gw), mode="bicubic")
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def forward(self, x: torch.Tensor, caa_layers: int = 0) -> dict[str, torch.Tensor]:
        """caa_layers > 0 adds "caa_attn" (B, N, N): the head-averaged softmax attention of the
        last caa_layers blocks, patch tokens only (merged_attention, for pipeline/cams/caa.py)."""
        x = self._fit_to_patches(x)
        B, K = x.shape[0], self.num_classes
        h, w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        self._maps, self._feats = [], []
        try:
            # frozen backbone: no autograd graph at all (the tokens are detached anyway)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_tokens):
                tokens = self.vit.patch_embed(x)
                tokens = torch.cat([(self.cls_tokens + self.cls_pos).expand(B, -1, -1),
                                    tokens + self._patch_pos(h, w)], 1)
                tokens = self.vit.blocks(self.vit.pos_drop(tokens))
                if self.final_norm:
                    tokens = self.vit.norm(tokens)
            # (B, H, L, T, T) -> (B, H*L, T, T): channel = head * L + layer, as the official code stacks them
            maps = torch.stack(self._maps, 2).flatten(1, 2).float()
            feats = None
            if self.fusion.kind == "features":
                # (L, B, T, C) viewed as (L, B, T, C/H, H) like models123.py (head index fastest),
                # then (B, H*L, T, C/H)
                f = torch.stack(self._feats, 0)
                L, _, T, C = f.shape
                feats = f.view(L, B, T, C // self.num_heads, self.num_heads).permute(1, 4, 0, 2, 3)
                feats = feats.reshape(B, self.num_heads * L, T, -1).float()
        finally:
            self._maps, self._feats = [], []
        extra = {}
        if caa_layers:
            extra["caa_attn"] = merged_attention(maps, self.num_heads, K, caa_layers)
        weight = self.fusion.weights(maps, feats)  # (B, C)
        attn = (maps * weight[:, :, None, None]).mean(1)  # (B, T, T)
        x_cls, x_patch = tokens[:, :K], tokens[:, K:]
        if self.detach_tokens:
            x_patch = x_patch.detach()
        coarse = self.head(x_patch.transpose(1, 2).reshape(B, -1, h, w))  # (B, K, h, w)
        cross = attn[:, :K, K:].reshape(B, K, h, w)
        cams = cross * F.relu(coarse.detach() if self.detach_coarse else coarse)
        patch_attn = attn[:, K:, K:]
        fine = torch.einsum("bij,bkj->bki", patch_attn, cams.flatten(2)).reshape(B, K, h, w)
        return {"cls_logits": x_cls.mean(-1), "patch_logits": coarse.mean((2, 3)),
                "attn_logits": fine.mean((2, 3)), "coarse": coarse, "fine": fine,
                "patch_attn": patch_attn, "fusion_weights": weight, "grid": (h, w), **extra}

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)["fine"]

    def patch_attention(self, x: torch.Tensor):
        out = self(x)
        return out["patch_attn"], out["grid"]

    def cams_and_attention(self, x: torch.Tensor):
        out = self(x)
        return out["fine"], out["patch_attn"], out["grid"]


class CNNMaskGenerator(nn.Module):
    """CLIMS-style CAM network: timm CNN features, 1x1 class conv (no bias),
    logits = global average of the CAM. There is no attention: the fine CAM is
    ReLU(CAM) and patch_attention is the row-normalised ReLU cosine affinity
    of the final features (cubed, sharpening it as affinity methods do)."""

    arch = "cnn"

    def __init__(self, cfg: MaskGeneratorCfg, num_classes_fg: int, load_weights: bool = True):
        super().__init__()
        self.body = _create_timm(cfg, load_weights, num_classes=0, global_pool="",
                                 drop_path_rate=cfg.drop_path_rate)
        self.num_classes = num_classes_fg
        self.head = nn.Conv2d(self.body.num_features, num_classes_fg, 1, bias=False)
        nn.init.kaiming_normal_(self.head.weight)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body.forward_features(x)
        if feats.ndim != 4:
            raise ValueError("mask_generator.backbone: arch 'cnn' needs a backbone with (B, C, h, w) features")
        cam = self.head(feats)
        h, w = cam.shape[2:]
        fine = F.relu(cam)
        f = F.normalize(feats.detach().flatten(2).float(), dim=1)
        aff = F.relu(torch.einsum("bci,bcj->bij", f, f)) ** 3
        aff = aff / aff.sum(-1, keepdim=True).clamp_min(1e-6)
        logits = cam.mean((2, 3))
        return {"cls_logits": logits, "patch_logits": logits, "attn_logits": fine.mean((2, 3)),
                "coarse": cam, "fine": fine, "patch_attn": aff, "grid": (h, w)}

    def set_recipe(self, detach_tokens: bool, detach_coarse: bool) -> "CNNMaskGenerator":
        if detach_tokens:
            raise ValueError("trainable: head needs arch vit (a CNN mask generator has no frozen-backbone recipe)")
        return self

    def backbone_parameters(self):
        return list(self.body.parameters())

    cams = ViTMaskGenerator.cams
    patch_attention = ViTMaskGenerator.patch_attention
    cams_and_attention = ViTMaskGenerator.cams_and_attention


def build_mask_generator(cfg: MaskGeneratorCfg, num_classes_fg: int, load_weights: bool = True) -> nn.Module:
    """S for ``num_classes_fg`` foreground classes. load_weights=False skips
    the pretrained backbone weights (used when a checkpoint follows)."""
    if num_classes_fg < 1:
        raise ValueError(f"num_classes_fg must be >= 1, got {num_classes_fg}")
    cls = {"vit": ViTMaskGenerator, "cnn": CNNMaskGenerator}[cfg.arch]
    return cls(cfg, num_classes_fg, load_weights)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_mask_generator(model: nn.Module, path: Path, cfg: MaskGeneratorCfg, num_classes_fg: int) -> None:
    """Self-describing checkpoint (format tag, config, class count, weights), written atomically.
    Plain tensors and data only, so it loads with weights_only=True."""
    path = Path(path)
    torch_save_atomic({"format": CHECKPOINT_FORMAT, "cfg": cfg.model_dump(mode="json"),
                       "num_classes_fg": num_classes_fg, "mean": list(MEAN), "std": list(STD),
                       "state_dict": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}}, path)


def _read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: mask generator checkpoint not found")
    with decoding(path, f"mask generator checkpoint (format {CHECKPOINT_FORMAT})"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # a pickle with code in it fails too
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a mask generator checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def load_mask_generator(path: Path, device: torch.device | str = "cpu") -> nn.Module:
    ckpt = _read_checkpoint(path)
    cfg = MaskGeneratorCfg(**ckpt["cfg"])
    model = build_mask_generator(cfg, ckpt["num_classes_fg"], load_weights=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def load_weights_from(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Copy the weights of a saved mask generator (e.g. train_cam's) into ``model``, as the
    official phases load the warm start (strict=False, and every key matches: they start
    from the trained fusion). Only a fusion of another kind (a WeakTr V1 warm start's map
    fusion, phases: features) is left freshly initialised; every other weight must match.
    Returns {"loaded": names copied, "fresh": names left initialised}."""
    ckpt = _read_checkpoint(path)
    target = unwrap(model)
    sd = ckpt["state_dict"]
    if ckpt["cfg"].get("fusion", "maps") != getattr(getattr(target, "fusion", None), "kind", None):
        sd = {k: v for k, v in sd.items() if not k.startswith("fusion.")}
    missing, unexpected = target.load_state_dict(sd, strict=False)
    bad_missing = [k for k in missing if not k.startswith("fusion.")]
    if bad_missing or unexpected:
        raise ValueError(f"{path}: weights do not fit this mask generator "
                         f"(missing {bad_missing[:5]}, unexpected {unexpected[:5]})")
    return {"loaded": sorted(sd), "fresh": sorted(missing)}
