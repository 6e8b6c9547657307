"""FMA-WSSS's CAA: refine CAMs with an affinity made from the mask generator's
attention, inside class-wise boxes.

Official code (HAL-42/FMA-WSSS): src/libs/seeding/aff/caller.py att_cam,
tools.py merge_att / att2aff / get_aff_mask / aff_cam, utils.py scoremap2bbox,
driven by src/tasks/aff_cam/run.py; the attention comes from
src/tasks/infer_cam/run.py (heads averaged by nn.MultiheadAttention, last
``save_att`` = 8 layers averaged, class token dropped, stored as float16).
Per image, on the patch grid of one forward (h x w = N patches):

- A0 = mean over the last n layers of the head-averaged softmax attention,
  rows/columns of the class tokens dropped (N, N), rounded to float16 (the mask
  generator's forward computes it: pipeline/models/mask_generator.py merged_attention);
- Sinkhorn ``iters`` times: columns to sum 1, then rows; A = (A + A^T) / 2;
- score_c = min-max over the grid of relu(cam_c) (eps 1e-7);
- box_c: 1 inside the bounding boxes of all contours (cv2, RETR_TREE) of
  uint8(255 score_c) > int(t * its max); the official clip of the right and
  bottom edges to W - 1 / H - 1 keeps the last column / row out of every box;
  no contour (an all-zero CAM) gives no box;
- out_c = A^power @ (box_c * x_c), x = the CAM ('cam') or its score ('score').

The official get_aff_mask builds a (P, N, N) mask whose entry (i, j) is
m_i m_j + (1 - m_i) m_j = m_j with to_in_bbox = to_out_bbox = 'in_bbox'
(every FMA config), i.e. the box masks the input side only: A @ (box * x).
A^power @ v is computed as ``power`` products with v (the same maths as
torch.linalg.matrix_power, N^2 P instead of N^3 operations per step).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

EPS = 1e-7  # src/utils/norm.py min_max_norm


def score(cams: torch.Tensor) -> torch.Tensor:
    """cam2score_cuda without resize: relu, then min-max over the last two dims."""
    x = torch.maximum(cams, torch.tensor(0.0, dtype=cams.dtype, device=cams.device))
    lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo + EPS)


def box_mask(score_map: np.ndarray, thresh: float) -> np.ndarray:
    """(h, w) float32 0/1: the union of the boxes of scoremap2bbox(multi_contour_eval=True)."""
    h, w = score_map.shape
    image = (score_map * 255).astype(np.uint8)
    _, binary = cv2.threshold(image, int(thresh * np.max(image)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]  # cv2 3 and 4
    out = np.zeros((h, w), np.float32)
    for contour in contours:
        x, y, bw, bh = cv2.boundingRect(contour)
        out[y:min(y + bh, h - 1), x:min(x + bw, w - 1)] = 1  # official: x1 = min(x1, width - 1)
    return out


def affinity(attn: torch.Tensor, sinkhorn_iters: int) -> torch.Tensor:
    """att2aff 'sink-horn' on (..., N, N): columns then rows normalised, symmetrised."""
    a = attn
    for _ in range(sinkhorn_iters):
        a = a / torch.sum(a, dim=-2, keepdim=True)
        a = a / torch.sum(a, dim=-1, keepdim=True)
    return (a + a.transpose(-1, -2)) / 2


def refine(cams: torch.Tensor, attn: torch.Tensor, cfg) -> torch.Tensor:
    """cams (B, P, h, w) and attn (B, N = h w, N) of one forward -> CAA CAMs (B, P, h, w), float32.
    cfg: a CaaCfg (sinkhorn_iters, power, box_thresh, at)."""
    B, P, h, w = cams.shape
    if attn.shape != (B, h * w, h * w):
        raise ValueError(f"CAA: attention {tuple(attn.shape)} does not match the CAM grid {h}x{w} of {B} images")
    cams = cams.float()
    s = score(cams)
    boxes = np.stack([box_mask(m, cfg.box_thresh) for m in s.detach().cpu().numpy().reshape(B * P, h, w)])
    boxes = torch.from_numpy(boxes).to(cams.device).view(B, P, h, w)
    a = affinity(attn.float(), cfg.sinkhorn_iters)
    v = (boxes * (cams if cfg.at == "cam" else s)).flatten(2).transpose(1, 2)  # (B, N, P)
    for _ in range(cfg.power):
        v = a @ v
    return v.transpose(1, 2).reshape(B, P, h, w)
