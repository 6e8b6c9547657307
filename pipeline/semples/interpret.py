"""Interpretation of learned background prompts (the paper's Fig. 5):
for each class, where in its images the class's prompt matches (CLIP patch
features vs the prompt's text feature), and the vocabulary words whose token
embeddings are nearest to each learned prompt token."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.mask_generator import MEAN, STD
from pipeline.plots import heat_overlay, save_grid

_WORD = re.compile(r"^[a-z]{2,}</w>$")


def nearest_words(prompts: torch.Tensor, vocab: torch.Tensor, words: list[str], topk: int):
    """prompts (K, P, W), vocab (V, W) with BPE tokens ('word</w>') -> per class,
    per prompt slot, topk (word, cosine)."""
    keep = [i for i, w in enumerate(words) if _WORD.match(w)]  # whole lowercase words only
    v = F.normalize(vocab[keep].float(), dim=-1)
    sims = F.normalize(prompts.float(), dim=-1) @ v.T  # (K, P, V')
    val, idx = sims.topk(topk, dim=-1)
    return [[[(words[keep[i]][:-4], round(float(s), 4)) for i, s in zip(ii.tolist(), vv.tolist())]
             for ii, vv in zip(idx[k], val[k])] for k in range(prompts.shape[0])]


@torch.no_grad()
def interpret_prompts(out_dir: Path, ctx, prompts: torch.Tensor, images, table, n_images: int,
                      topk: int, device) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(table.classes[1:])
    vl = ctx.vl
    summary = {}
    # nearest vocabulary words per prompt token
    if hasattr(vl, "vocab_embeddings"):
        vocab, tokens = vl.vocab_embeddings()
        near = nearest_words(prompts.to(vocab.device), vocab, tokens, topk)
        doc = {names[k]: [[w for w, _ in slot] for slot in near[k]] for k in range(len(names))}
        (out_dir / "nearest_words.json").write_text(json.dumps(
            {names[k]: [[{"word": w, "cos": s} for w, s in slot] for slot in near[k]]
             for k in range(len(names))}, indent=1))
        lines = ["| class | nearest words of its background prompt tokens (top-1 per token) |", "|---|---|"]
        lines += [f"| {c} | {', '.join(slot[0] for slot in doc[c])} |" for c in names]
        (out_dir / "nearest_words.md").write_text("\n".join(lines) + "\n")
        summary["nearest_words"] = "nearest_words.md"
    # image regions most similar to each labelled class's background prompt
    if hasattr(vl, "encode_image_dense") and n_images and len(images):
        pf = F.normalize(vl.encode_prompted(prompts.to(device)).float(), dim=-1)  # (K, E)
        mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
        rows, labels = [], []
        for i in range(min(n_images, len(images))):
            x, y = images[i]
            xs = ctx.vl_images(x[None].to(device))
            dense = F.normalize(vl.encode_image_dense(ctx._to_vl(xs, MEAN, STD, vl)).float(), dim=-1)[0]
            g = int(round(dense.shape[0] ** 0.5))
            img = ((x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            row = [img]
            ks = torch.nonzero(y).flatten().tolist()[:3]
            for k in ks:
                sim = (dense @ pf[k]).reshape(1, 1, g, g).clamp(min=0)
                sim = F.interpolate(sim, img.shape[:2], mode="bilinear", align_corners=False)[0, 0].cpu()
                sim = (sim - sim.min()) / (sim.max() - sim.min() + 1e-6)
                row.append(heat_overlay(img, sim.numpy()))
            rows.append(row)
            labels.append(", ".join(f"bg prompt of {names[k]}" for k in ks))
        save_grid(out_dir / "prompt_regions.png", rows, row_labels=labels)
        summary["regions"] = "prompt_regions.png"
    return summary
