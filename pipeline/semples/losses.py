"""SemPLeS losses on similarity tensors, and the per-batch steps that turn
CAMs into (foreground, background) image pairs and score them with CLIP.

s(a, b) is the cosine similarity of L2-normalised features, clamped to
[1e-4, 0.9999] before any log (as in the official code).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LO, HI = 1e-4, 0.9999


def _c(sim: torch.Tensor) -> torch.Tensor:
    return sim.clamp(LO, HI)


def sim_max_loss(sim: torch.Tensor) -> torch.Tensor:
    return -torch.log(_c(sim)).mean()


def sim_min_loss(sim: torch.Tensor) -> torch.Tensor:
    return -torch.log(1 - _c(sim)).mean()


def match_loss(sim_fg_text: torch.Tensor, sim_bg_text: torch.Tensor, lambda_b: float) -> torch.Tensor:
    """L_match = -log s(fg, t_k) + lambda_b * -log(1 - s(bg, t_k))."""
    return sim_max_loss(sim_fg_text) + lambda_b * sim_min_loss(sim_bg_text)


def prompt_loss(sim_bg_prompt: torch.Tensor, sim_text_prompt: torch.Tensor, lambda_t: float) -> torch.Tensor:
    """L_prompt = -log s(bg, p_k) + lambda_T * log s(t_k, p_k)."""
    return sim_max_loss(sim_bg_prompt) + lambda_t * torch.log(_c(sim_text_prompt)).mean()


def refine_loss(sim_fg_prompt: torch.Tensor) -> torch.Tensor:
    """L_refine = -log(1 - s(fg, p_k))."""
    return sim_min_loss(sim_fg_prompt)


# ------------------------------------------------------------------ masks and pairs
def normalised_masks(cams: torch.Tensor, size: int, eps: float) -> torch.Tensor:
    """(B, K, h, w) raw CAMs -> (B, K, size, size): bilinear (align_corners=True)
    upsample, then per-class min-max normalisation with eps in the denominator."""
    m = F.interpolate(cams.float(), (size, size), mode="bilinear", align_corners=True)
    lo = m.amin(dim=(2, 3), keepdim=True)
    hi = m.amax(dim=(2, 3), keepdim=True)
    return (m - lo) / (hi - lo + eps)


@dataclass
class Pairs:
    fg: torch.Tensor      # (P, 3, S, S) M_k * x
    bg: torch.Tensor      # (P, 3, S, S) (1 - M_k) * x
    cls: torch.Tensor     # (P,) foreground class index k (label id k + 1)
    image: torch.Tensor   # (P,) index of the image in the batch


def build_pairs(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> Pairs:
    """One (fg, bg) pair per positive class of each image, all at once.
    images (B, 3, S, S), masks (B, K, S, S), labels (B, K) multi-hot."""
    b, k = torch.nonzero(labels > 0, as_tuple=True)
    m = masks[b, k].unsqueeze(1)
    x = images[b]
    return Pairs(m * x, (1 - m) * x, k, b)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (P, E) and (P, E)."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


# ------------------------------------------------------------------ steps
class StepContext:
    """What a SemPLeS step needs besides S: the frozen VL model, S's and the VL
    model's image normalisations, and class text features (computed once).
    renormalise=False feeds the masked S inputs (ImageNet-normalised) to CLIP as
    they are, as engine1-3.py do (clip.input_norm: official); True maps them to
    CLIP's own normalisation."""

    def __init__(self, vl, text_feats: torch.Tensor, s_mean, s_std, renormalise: bool = False):
        from pipeline.models.vl import to_vl_input
        self.vl, self.text, self.s_mean, self.s_std = vl, text_feats, s_mean, s_std
        self.renormalise = renormalise
        self._to_vl = to_vl_input

    def vl_images(self, images_s: torch.Tensor) -> torch.Tensor:
        """Resize S inputs to the VL size (masks live there); their normalisation stays S's."""
        size = self.vl.image_size
        if images_s.shape[-2:] != (size, size):
            images_s = F.interpolate(images_s, (size, size), mode="bilinear", align_corners=True)
        return images_s

    def encode(self, images_s_space: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            return self.vl.encode_image(self._to_vl(images_s_space, self.s_mean, self.s_std, self.vl))
        return self.vl.encode_image(self.vl_images(images_s_space))


def _pairs(model, ctx: StepContext, images, labels, eps, grad: bool):
    with torch.set_grad_enabled(grad):
        cams = model(images)["fine"]
        masks = normalised_masks(cams, ctx.vl.image_size, eps)
    return build_pairs(ctx.vl_images(images), masks, labels)


def match_step(model, ctx: StepContext, images, labels, lambda_b: float, eps: float = 0.1):
    """Phase 1: L_match for every (image, positive class) pair; one VL call per batch."""
    p = _pairs(model, ctx, images, labels, eps, grad=True)
    n = p.cls.shape[0]
    feats = ctx.encode(torch.cat([p.fg, p.bg]))
    t = ctx.text[p.cls]
    s_fg, s_bg = cosine(feats[:n], t), cosine(feats[n:], t)
    loss = match_loss(s_fg, s_bg, lambda_b)
    return loss, {"loss": loss.detach(), "s_fg_text": s_fg.mean().detach(),
                  "s_bg_text": s_bg.mean().detach()}, n


def learn_prompts_step(model, ctx: StepContext, prompt_feats, images, labels, lambda_t: float,
                       eps: float = 1e-4):
    """Phase 2: S frozen under no_grad; prompt_feats (K, E) = encode_prompted(p_k) carries the grad."""
    p = _pairs(model, ctx, images, labels, eps, grad=False)
    n = p.cls.shape[0]
    bg = ctx.encode(p.bg)
    pk = prompt_feats[p.cls]
    s_bg_p, s_t_p = cosine(bg, pk), cosine(ctx.text[p.cls], pk)
    loss = prompt_loss(s_bg_p, s_t_p, lambda_t)
    return loss, {"loss": loss.detach(), "s_bg_prompt": s_bg_p.mean().detach(),
                  "s_text_prompt": s_t_p.mean().detach()}, n


def refine_step(model, ctx: StepContext, prompt_feats, images, labels, lambda_b: float,
                lambda_refine: float, eps: float = 0.1):
    """Phase 3: L_match + lambda * L_refine; prompt_feats (K, E) frozen (computed once)."""
    p = _pairs(model, ctx, images, labels, eps, grad=True)
    n = p.cls.shape[0]
    feats = ctx.encode(torch.cat([p.fg, p.bg]))
    t = ctx.text[p.cls]
    s_fg, s_bg = cosine(feats[:n], t), cosine(feats[n:], t)
    s_fg_p = cosine(feats[:n], prompt_feats[p.cls])
    lm, lr = match_loss(s_fg, s_bg, lambda_b), refine_loss(s_fg_p)
    loss = lm + lambda_refine * lr
    return loss, {"loss": loss.detach(), "match": lm.detach(), "refine": lr.detach(),
                  "s_fg_prompt": s_fg_p.mean().detach()}, n


def train_cam_step(model, images, labels):
    """Warm start (WeakTr): multilabel soft margin on class-token, patch and attention logits."""
    out = model(images)
    parts = {k: F.multilabel_soft_margin_loss(out[f"{k}_logits"].float(), labels)
             for k in ("cls", "patch", "attn")}
    loss = sum(parts.values())
    return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}, images.shape[0]
