"""Multi-scale + flip CAM inference of the mask generator on one image, as
WeakTr's generate_attention_maps_ms: each scale resized (bicubic, PIL) from
the original image, CAMs bilinearly upsampled to the image size
(align_corners=False), flipped back, summed over scales/flips, kept for the
image's labels only and min-max normalised per class with eps 1e-8."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.models.mask_generator import normalize_numpy


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    if scale == 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL takes (W, H)
    return np.array(Image.fromarray(image).resize(size, resample=Image.BICUBIC))


@torch.no_grad()
def infer_cams(model, image: np.ndarray, labels: Sequence[int], scales: Sequence[float] = (1.0,),
               flip: bool = True, cam: str = "fine", device: torch.device | str = "cpu") -> np.ndarray:
    """(H, W, 3) uint8 image, foreground label ids -> (len(labels), H, W) float32 in [0, 1]."""
    if not labels:
        raise ValueError("an image without foreground labels has no CAMs")
    H, W = image.shape[:2]
    keep = torch.tensor([c - 1 for c in labels], device=device)
    total = torch.zeros(len(labels), H, W, device=device)
    for s in scales:
        img = _resized(image, s)
        hs, ws = img.shape[:2]
        x = normalize_numpy(img)[None].to(device)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        out = model(x)
        if cam not in out:
            raise ValueError(f"export_cams.cam: the mask generator has no '{cam}' CAM output")
        grid = out[cam].float()[:, keep]  # (B, C_present, h, w)
        # a ViT pads the input up to its patch size: map the grid onto the
        # padded input, drop the padding, then resize to the original image
        patch = getattr(model, "patch_size", None)
        ph, pw = (grid.shape[-2] * patch, grid.shape[-1] * patch) if patch else (hs, ws)
        up = F.interpolate(grid, size=(ph, pw), mode="bilinear", align_corners=False)[..., :hs, :ws]
        up = F.interpolate(up, size=(H, W), mode="bilinear", align_corners=False)
        if flip:
            up[1] = up[1].flip(-1)
        total += up.sum(0)
    flat = total.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return ((total - lo) / (hi - lo + 1e-8)).cpu().numpy()
