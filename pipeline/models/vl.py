"""Frozen vision-language model (open_clip by default) and the prompt learner.

The small interface every VL model offers (an object from ``clip.factory``
may provide any other implementation of it):
    image_size: int; mean, std: tuples (the model's own image normalisation)
    encode_image(x) -> (B, E)   x: (B, 3, image_size, image_size) normalised with mean/std
    encode_text(texts: list[str]) -> (T, E)
    encode_prompted(prompts: (K, P, W)) -> (K, E): text features of
        "<sot> {template prefix} [P learned embeddings] {template suffix} <eot>"
    token_width: int (W); optional: encode_image_dense(x) -> (B, h*w, E),
    vocab_embeddings() -> ((V, W) tensor, list of V words)
Features are returned unnormalised; callers L2-normalise.
"""
from __future__ import annotations

import importlib
import logging
import warnings

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import ClipCfg

log = logging.getLogger("wsss")

RANDOM_INIT_WARNING = ("clip: RANDOM-INITIALISED vision-language model (clip.allow_random_init). "
                       "Every loss and CAM of this run is MEANINGLESS for the method; use it only for tests.")


def _split_template(template: str) -> tuple[str, str]:
    if template.count("{}") != 1:
        raise ValueError(f"clip.template must contain exactly one '{{}}', got {template!r}")
    pre, post = template.split("{}")
    return pre.strip(), post.strip()


class OpenClipVL(nn.Module):
    """Frozen open_clip CLIP in eval mode; gradients flow through it to its
    inputs (masked images, prompt embeddings), never into its weights."""

    def __init__(self, model: nn.Module, tokenizer, template: str = "a photo of {}."):
        super().__init__()
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(model, name):
                raise ValueError(f"clip.model: {type(model).__name__} has no '{name}' (a CLIP with an "
                                 "open_clip text tower is needed for prompt learning)")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.template = template
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.token_width = model.token_embedding.weight.shape[1]
        self.context_length = model.positional_embedding.shape[0]
        pre, post = _split_template(template)
        # "<sot> pre post <eot>": learned tokens go between pre and post
        self.register_buffer("_tmpl", self.tokenize([f"{pre} {post}".strip()])[0], persistent=False)
        self.n_prefix = 1 + len(self.tokenize([pre])[0].nonzero()) - 2 if pre else 1

    def train(self, mode: bool = True):  # always eval (dropout off, frozen statistics)
        return super().train(False)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    def encode_image_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Projected patch-token features (B, h*w, E), for similarity maps."""
        v = self.model.visual
        if not hasattr(v, "output_tokens"):
            raise NotImplementedError("encode_image_dense needs an open_clip VisionTransformer")
        v.output_tokens = True
        try:
            _, tokens = v(x)
        finally:
            v.output_tokens = False
        return tokens @ v.proj if v.proj is not None else tokens

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        dev = self.model.positional_embedding.device
        return self.model.encode_text(self.tokenize(texts).to(dev))

    def _text_tower(self, emb: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        m = self.model
        dtype = m.transformer.get_cast_dtype()
        x = emb.to(dtype) + m.positional_embedding.to(dtype)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        # open_clip pools the argmax token id (EOT); with spliced embeddings we
        # pass the moved EOT position explicitly instead.
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = m.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def prompted_tokens(self, n_prompts: int) -> tuple[torch.Tensor, int]:
        """Template token ids with n_prompts placeholder slots, and the EOT index."""
        tmpl = self._tmpl
        eot = int(tmpl.argmax()) + n_prompts
        if eot >= self.context_length:
            raise ValueError(f"learn_prompts.n_prompts={n_prompts} does not fit the text context "
                             f"({self.context_length} tokens)")
        return tmpl, eot

    def encode_prompted(self, prompts: torch.Tensor) -> torch.Tensor:
        """prompts (K, P, W) -> (K, E) features of "<sot> a photo of [P x p_k] . <eot>"."""
        K, P, W = prompts.shape
        tmpl, eot = self.prompted_tokens(P)
        emb = self.model.token_embedding(tmpl.to(prompts.device))[None].expand(K, -1, -1)
        n = self.n_prefix
        emb = torch.cat([emb[:, :n], prompts.to(emb.dtype), emb[:, n:]], 1)[:, : self.context_length]
        return self._text_tower(emb, torch.full((K,), eot, device=prompts.device))

    def vocab_embeddings(self) -> tuple[torch.Tensor, list[str]]:
        """Token embedding table and the tokenizer's BPE token for each row ('word</w>' = whole word)."""
        dec = getattr(self.tokenizer, "decoder", None)
        if dec is None:
            raise NotImplementedError("the tokenizer exposes no vocabulary")
        w = self.model.token_embedding.weight
        words = [dec.get(i, f"<{i}>") for i in range(w.shape[0])]
        return w, words


def tiny_random_clip(cfg: ClipCfg) -> OpenClipVL:
    """A small random-initialised open_clip CLIP (ViT-B-32 tokenizer and text
    layout, 2-layer towers) for CPU tests and the smoke config."""
    if not cfg.allow_random_init:
        raise ValueError("clip.factory tiny_random_clip builds a random model: set clip.allow_random_init: true")
    warnings.warn(RANDOM_INIT_WARNING)
    log.warning(RANDOM_INIT_WARNING)
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    model = CLIP(embed_dim=64,
                 vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=32,
                                          image_size=cfg.image_size),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))
    # Real CLIP features lie in a narrow cone (image-text cosines ~0.2-0.3). A random
    # model's cosines scatter around 0, and the loss clamp at 1e-4 then zeroes most
    # gradients. Give both towers the same output offset d: the final LayerNorm bias
    # b is mapped onto d by a rank-one update of the projection (b @ P' = d).
    g = torch.Generator().manual_seed(0)
    d = torch.randn(64, generator=g)
    with torch.no_grad():
        for ln, proj in ((model.visual.ln_post, model.visual.proj), (model.ln_final, model.text_projection)):
            b = torch.randn(ln.bias.shape, generator=g)
            ln.bias.copy_(b)
            proj.add_(torch.outer(b, d - b @ proj) / b.dot(b))
    return OpenClipVL(model, open_clip.get_tokenizer("ViT-B-32"), cfg.template)


def build_vl(cfg: ClipCfg, device: torch.device | str = "cpu"):
    """The frozen VL model of a config: clip.factory 'module:function' if set,
    else open_clip (model name + pretrained tag or local checkpoint path)."""
    if cfg.factory:
        mod, _, fn = cfg.factory.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"clip.factory: cannot load '{cfg.factory}' ({e})") from None
        vl = factory(cfg)
    else:
        if cfg.model not in open_clip.list_models():
            raise ValueError(f"clip.model: unknown open_clip model '{cfg.model}'")
        if cfg.pretrained is None:
            if not cfg.allow_random_init:
                raise ValueError("clip.pretrained is null: set a pretrained tag/path, or "
                                 "clip.allow_random_init: true for tests")
            warnings.warn(RANDOM_INIT_WARNING)
            log.warning(RANDOM_INIT_WARNING)
        try:
            model = open_clip.create_model(cfg.model, pretrained=cfg.pretrained, force_image_size=cfg.image_size,
                                           force_quick_gelu=bool(cfg.quick_gelu))
        except Exception as e:
            from pipeline.config import _is_hub_tag
            if cfg.pretrained is None or not _is_hub_tag(cfg.pretrained):
                raise
            from pipeline.weights import clip_weight, explain
            raise explain(clip_weight(cfg.model, cfg.pretrained), e) from None
        vl = OpenClipVL(model, open_clip.get_tokenizer(cfg.model), cfg.template)
    if isinstance(vl, nn.Module):
        vl = vl.to(device).eval().requires_grad_(False)
    return vl


class PromptLearner(nn.Module):
    """Learnable background prompts p_k: (K, n_prompts, token width).
    init 'uniform': torch.rand, U[0, 1), as main2.py's BTP; 'normal': N(0, std)."""

    def __init__(self, num_classes_fg: int, n_prompts: int, width: int, init: str = "uniform", std: float = 0.02):
        super().__init__()
        shape = (num_classes_fg, n_prompts, width)
        if init not in ("uniform", "normal"):
            raise ValueError(f"learn_prompts.prompt_init: unknown '{init}'")
        self.prompts = nn.Parameter(torch.rand(shape) if init == "uniform" else torch.randn(shape) * std)

    def forward(self, vl) -> torch.Tensor:
        return vl.encode_prompted(self.prompts)


@torch.no_grad()
def class_text_features(vl, names: list[str], template: str) -> torch.Tensor:
    """(K, E) L2-normalised features of template.format(name) (computed once per stage)."""
    return F.normalize(vl.encode_text([template.format(n) for n in names]).float(), dim=-1)


def to_vl_input(images_s: torch.Tensor, s_mean, s_std, vl) -> torch.Tensor:
    """Images normalised for S -> normalised for the VL model at its input size.
    An affine per-channel map, so a masked-out pixel (0 in S space) becomes S's
    mean colour, as in the official code which feeds masked S inputs to CLIP."""
    dev, dt = images_s.device, images_s.dtype
    sm, ss = (torch.tensor(v, device=dev, dtype=dt).view(1, 3, 1, 1) for v in (s_mean, s_std))
    cm, cs = (torch.tensor(v, device=dev, dtype=dt).view(1, 3, 1, 1) for v in (vl.mean, vl.std))
    x = (images_s * ss + sm - cm) / cs
    if x.shape[-2:] != (vl.image_size, vl.image_size):
        x = F.interpolate(x, (vl.image_size, vl.image_size), mode="bilinear", align_corners=True)
    return x
