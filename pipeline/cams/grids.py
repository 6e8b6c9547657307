"""From the mask generator's patch-grid CAMs to the image-size CAMs every consumer reads:
the deterministic tail of WeakTr's generate_attention_maps_ms, in one place for the
export (pipeline/cams/inference.py) and the CAM store's reader (pipeline/cams/store.py),
so a map rebuilt from stored grids is the one the export computed.

Per scale, the grid of every forward (rows :B the images, rows B: their mirrors when
flipped) is bilinearly upsampled to the image size (align_corners=False), the mirrors
flipped back, everything summed over scales and flips, then min-max normalised per class
(eps 1e-8).

``Geometry`` says how a grid spans its input: a ViT that crops the remainder (the
official input handling) spans the whole scaled image with its grid, so one resize; one
that pads maps the grid onto the padded input, drops the padding, then resizes; a
model without a patch size (CNN) resizes its output from the scaled input size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # torch is imported where the maps are computed: the CAM store (Geometry) is read without it
    import torch


@dataclass(frozen=True)
class Geometry:
    patch: Optional[int] = None  # the ViT's patch size; None: not a patch model
    pad_input: bool = False  # the ViT pads the input to a multiple of the patch (else crops)

    @classmethod
    def of(cls, model) -> "Geometry":
        patch = getattr(model, "patch_size", None)
        return cls(int(patch) if patch else None, bool(getattr(model, "pad_input", False)))

    def to_dict(self) -> dict:
        return asdict(self)


def to_image_size(grid: torch.Tensor, scaled: tuple[int, int], size: tuple[int, int], geom: Geometry) -> torch.Tensor:
    """CAM grid (B, C, h, w) of an input of size ``scaled`` -> (B, C, H, W) float32."""
    import torch.nn.functional as F
    grid = grid.float()
    if geom.patch and not geom.pad_input:
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    hs, ws = scaled
    ph, pw = (grid.shape[-2] * geom.patch, grid.shape[-1] * geom.patch) if geom.patch else (hs, ws)
    up = F.interpolate(grid, size=(ph, pw), mode="bilinear", align_corners=False)[..., :hs, :ws]
    return F.interpolate(up, size=size, mode="bilinear", align_corners=False)


def min_max(total: torch.Tensor) -> torch.Tensor:
    """Per (image, class) min-max over the pixels of (..., H, W)."""
    flat = total.flatten(-2)
    lo, hi = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
    return (total - lo) / (hi - lo + 1e-8)


def assemble(grids: Sequence[torch.Tensor], scaled: Sequence[tuple[int, int]], size: tuple[int, int],
             flip: bool, geom: Geometry) -> torch.Tensor:
    """grids[s]: the (F*B, C, h_s, w_s) CAM grids of scale s (F = 2 with flip: rows B: are the
    mirrored inputs), scaled[s] its input size -> (B, C, H, W) float32 in [0, 1]."""
    import torch
    B = grids[0].shape[0] // (2 if flip else 1)
    total = torch.zeros(B, grids[0].shape[1], *size, device=grids[0].device)
    for grid, hw in zip(grids, scaled):
        up = to_image_size(grid, tuple(hw), size, geom)
        total += up[:B] + up[B:].flip(-1) if flip else up
    return min_max(total)
