"""Image sizes the CAM export can handle, checked before a run trains for hours.

An image whose shorter side gives fewer than ``checks.min_patches`` patches at the smallest
``export_cams.scales`` entry has no CAM grid (the export's patch embedding or conv head fails);
one whose forward at the largest scale would need more than ``checks.export_memory_gb`` cannot be
exported on the machine. Both are found here from the sizes in the label records, by
`wsss data check` and by every run once prepare_data is done (stages/runner.py), and either
refuse the run with one message naming the images (``error``) or log a warning (``warn``).

The memory estimate is what the ViT mask generator holds for one image and its flip: the
softmax attention of every block is kept for the attention fusion, (depth + 1) x heads x T^2
float32 values for T tokens (patches + one class token per class). It is a lower bound of the
peak (activations, the CAM upsampling and the batch come on top).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from pipeline.config import Config

log = logging.getLogger("wsss")
FLOAT32 = 4


class ImageCheckError(ValueError):
    """Images the run cannot export: the message names each and the config field to change."""


@dataclass(frozen=True)
class Arch:
    patch: int  # input pixels per CAM cell along a side
    depth: int  # attention maps kept (ViT blocks); 0 for a CNN
    heads: int


@lru_cache(maxsize=None)
def arch_of(arch: str, backbone: str) -> Arch:
    """Patch size, depth and heads of the mask generator's backbone (built on the meta device:
    no weights, no memory)."""
    import timm
    import torch

    with torch.device("meta"):
        m = timm.create_model(backbone, pretrained=False, num_classes=0)
    if arch == "vit":
        return Arch(m.patch_embed.patch_size[0], len(m.blocks), m.blocks[0].attn.num_heads)
    return Arch(int(m.feature_info[-1]["reduction"]), 0, 1)


def cam_splits(cfg: Config) -> list[str]:
    """The splits whose full images go through the mask generator: export_cams.split and the
    seed-scoring split of every training stage that scores seeds."""
    from pipeline.config import phase_sections, seed_eval_split
    scored = [seed_eval_split(cfg, n) for n, s in phase_sections(cfg, cams_only=True).items() if s.seed_eval_every]
    return list(dict.fromkeys([cfg.export_cams.split, *scored]))


def export_bytes(height: int, width: int, scale: float, a: Arch, num_classes_fg: int, flip: bool) -> int:
    """Estimated bytes of one image's CAM forward at ``scale`` (module docstring)."""
    cells = (int(height * scale) // a.patch) * (int(width * scale) // a.patch)
    tokens = cells + (num_classes_fg if a.depth else 0)
    maps = (a.depth + 1) * a.heads if a.depth else 1  # CNN: one patch affinity matrix
    return maps * tokens ** 2 * FLOAT32 * (2 if flip else 1)


def size_problems(cfg: Config, records: Iterable, num_classes_fg: int) -> tuple[list[str], list[str]]:
    """(too small, too large) messages of ``records`` (objects with id, image, height, width)."""
    a = arch_of(cfg.mask_generator.arch, cfg.mask_generator.backbone)
    ec, ch = cfg.export_cams, cfg.checks
    lo, hi = min(ec.scales), max(ec.scales)
    need = ch.min_patches * a.patch
    budget = ch.export_memory_gb * 1e9
    small, large = [], []
    for r in records:
        side = min(r.height, r.width)
        if math.floor(side * lo) < need:
            small.append(f"{r.image}: {r.width}x{r.height} px gives {int(side * lo) // a.patch} patches on its "
                         f"shorter side at export_cams.scales {lo} (checks.min_patches: {ch.min_patches}, "
                         f"patch {a.patch} px)")
            continue
        b = export_bytes(r.height, r.width, hi, a, num_classes_fg, ec.flip)
        if b > budget:
            large.append(f"{r.image}: {r.width}x{r.height} px needs about {b / 1e9:.1f} GB to export at "
                         f"export_cams.scales {hi} (checks.export_memory_gb: {ch.export_memory_gb:g}); "
                         "resize the image, drop the scale or raise the budget")
    return small, large


def check_sizes(cfg: Config, records: list, num_classes_fg: int, where: str) -> list[str]:
    """Raise ImageCheckError for the problems whose action is 'error'; log and return the
    warnings of those set to 'warn'."""
    small, large = size_problems(cfg, records, num_classes_fg)
    errors, warnings = [], []
    for found, action, what in ((small, cfg.checks.small_images, "checks.small_images"),
                                (large, cfg.checks.large_images, "checks.large_images")):
        (errors if action == "error" else warnings).extend(f"{p} [{what}: {action}]" for p in found)
    for w in warnings:
        log.warning("%s: %s", where, w)
    if errors:
        shown = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise ImageCheckError(f"{where}: {len(errors)} images the CAM export cannot handle "
                              f"(set the named checks.* field to 'warn' to go on anyway):\n  {shown}")
    return warnings
