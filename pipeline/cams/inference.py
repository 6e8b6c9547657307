"""Multi-scale + flip CAM inference of the mask generator, as WeakTr's
generate_attention_maps_ms: each scale resized (bicubic, PIL) from the
original image, CAMs bilinearly upsampled to the image size
(align_corners=False), flipped back, summed over scales/flips, kept for the
image's labels only and min-max normalised per class with eps 1e-8.

Two routes to the same numbers:
- ``infer_cams``: one image, the reference (the per-epoch seed evaluation
  runs it);
- ``export_batched``: what export_cams runs. DataLoader workers decode and
  PIL-resize images (CPU); images of one (H, W) go through the model together
  (a ViT attends over every token, so padding images to a common size would
  change their CAMs: batches hold equal sizes only); normalisation, flips,
  CAM upsampling, the label mask and the min-max run on the model's device;
  float16 CAMs go to a CamWriter whose threads compress and write them.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.cams.store import CamStore, CamWriter
from pipeline.data.datasets import DataError, Record, read_image
from pipeline.models.mask_generator import normalize, normalize_numpy


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    if scale == 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL takes (W, H)
    return np.array(Image.fromarray(image).resize(size, resample=Image.BICUBIC))


def _to_image_size(model, grid: torch.Tensor, scaled: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """CAM grid (B, C, h, w) of an input of size ``scaled`` -> (B, C, H, W) float32.
    A ViT that crops the remainder (official) spans the whole image with its grid:
    one bilinear resize, as generate_attention_maps_ms. One that pads: map the
    grid onto the padded input, drop the padding, then resize to the image."""
    hs, ws = scaled
    patch = getattr(model, "patch_size", None)
    if patch and not getattr(model, "pad_input", False):
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    ph, pw = (grid.shape[-2] * patch, grid.shape[-1] * patch) if patch else (hs, ws)
    up = F.interpolate(grid, size=(ph, pw), mode="bilinear", align_corners=False)[..., :hs, :ws]
    return F.interpolate(up, size=size, mode="bilinear", align_corners=False)


def _min_max(total: torch.Tensor) -> torch.Tensor:
    """Per (image, class) min-max over the pixels of (..., H, W)."""
    flat = total.flatten(-2)
    lo, hi = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
    return (total - lo) / (hi - lo + 1e-8)


def _cam_output(model, x: torch.Tensor, cam: str) -> torch.Tensor:
    out = model(x)
    if cam not in out:
        raise ValueError(f"export_cams.cam: the mask generator has no '{cam}' CAM output")
    return out[cam].float()


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
        x = normalize_numpy(img)[None].to(device)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        grid = _cam_output(model, x, cam)[:, keep]  # (B, C_present, h, w)
        up = _to_image_size(model, grid, img.shape[:2], (H, W))
        if flip:
            up[1] = up[1].flip(-1)
        total += up.sum(0)
    return _min_max(total).cpu().numpy()


@torch.no_grad()
def infer_cams_batch(model, scaled: Sequence[torch.Tensor], labels: Sequence[Sequence[int]],
                     size: tuple[int, int], flip: bool = True, cam: str = "fine",
                     device: torch.device | str = "cpu", amp: bool = False) -> torch.Tensor:
    """B images of one size (H, W): ``scaled`` holds, per scale, the resized
    images as uint8 (B, h, w, 3); ``labels`` their foreground ids. Returns
    (B, C_max, H, W) float32 in [0, 1] on ``device``: image b's CAMs are
    [b, :len(labels[b])] (the rest repeats its first class)."""
    device = torch.device(device)
    B, H, W = len(labels), *size
    c_max = max(len(l) for l in labels)
    keep = torch.tensor([[c - 1 for c in l] + [l[0] - 1] * (c_max - len(l)) for l in labels], device=device)
    if flip:
        keep = torch.cat([keep, keep])
    total = torch.zeros(B, c_max, H, W, device=device)
    for images in scaled:
        x = normalize(images.to(device, non_blocking=True).permute(0, 3, 1, 2))
        if flip:
            x = torch.cat([x, x.flip(-1)])  # rows B.. are the mirrored images
        with torch.autocast(device.type, enabled=amp):
            grid = _cam_output(model, x, cam)
        grid = grid.gather(1, keep[:, :, None, None].expand(-1, -1, *grid.shape[-2:]))
        up = _to_image_size(model, grid, tuple(x.shape[-2:]), (H, W))
        total += up[:B] + up[B:].flip(-1) if flip else up
    return _min_max(total)


# ------------------------------------------------------------ batched export
def image_size(rec: Record) -> tuple[int, int]:
    """(H, W) from the label table, or the image header when the table has none."""
    if rec.height and rec.width:
        return rec.height, rec.width
    try:
        with Image.open(rec.image) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise DataError(f"{rec.image}: image file missing") from None
    except (OSError, SyntaxError) as e:
        raise DataError(f"{rec.image}: unreadable image ({e})") from None


def same_size_batches(records: Sequence[Record], batch_size: int) -> list[list[Record]]:
    """Records grouped by image size, each group cut into batches of at most batch_size."""
    groups: dict[tuple[int, int], list[Record]] = defaultdict(list)
    for r in records:
        groups[image_size(r)].append(r)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


class ScaledBatches(Dataset):
    """Item i: batch i decoded and resized to every scale, as a list of uint8
    (B, h, w, 3) tensors, one per scale (runs in DataLoader workers)."""

    def __init__(self, batches: list[list[Record]], scales: Sequence[float]):
        self.batches, self.scales = batches, list(scales)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        images = []
        for rec in self.batches[i]:
            image = read_image(rec.image)
            if rec.height and image.shape[:2] != (rec.height, rec.width):
                raise ValueError(f"{rec.image}: image is {image.shape[1]}x{image.shape[0]}, label table "
                                 f"says {rec.width}x{rec.height} (rerun prepare_data)")
            images.append(image)
        if len({im.shape for im in images}) > 1:
            raise ValueError(f"{self.batches[i][0].image}: images of one batch differ in size")
        return [torch.from_numpy(np.stack([_resized(im, s) for im in images])) for s in self.scales]


def export_batched(model, records: Sequence[Record], store: CamStore, scales: Sequence[float], flip: bool,
                   cam: str, device: torch.device | str, batch_size: int = 8, num_workers: int = 0,
                   prefetch_factor: int = 2, writer_threads: int = 8, amp: bool = False,
                   progress=None) -> int:
    """Write the CAMs of ``records`` into ``store``; returns how many were written.
    Memory is bounded by the loader's prefetch, one batch on the device and
    the writer's queue, whatever the number of records."""
    device = torch.device(device)
    batches = same_size_batches(records, batch_size)
    loader = DataLoader(ScaledBatches(batches, scales), batch_size=None, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        prefetch_factor=prefetch_factor if num_workers else None)
    steps = zip(batches, loader)
    if progress:
        steps = progress(steps, total=len(batches))
    written = 0
    with CamWriter(store, writer_threads, max_pending=max(2 * batch_size, 2 * writer_threads)) as writer:
        pending = None  # the previous batch: its device->host copy overlaps this batch's forward

        def hand_over(item):
            recs, host, done = item
            if done is not None:
                done.synchronize()
            cams = host.numpy()
            for b, rec in enumerate(recs):
                writer.submit(rec.id, cams[b, :len(rec.labels)], rec.labels, cams.shape[-2:])
            return len(recs)

        try:
            for recs, scaled in steps:
                out = infer_cams_batch(model, scaled, [r.labels for r in recs], image_size(recs[0]),
                                       flip, cam, device, amp).half()
                if device.type == "cuda":
                    host = out.to("cpu", non_blocking=True)
                    done = torch.cuda.Event()
                    done.record()
                else:
                    host, done = out, None
                if pending:
                    item, pending = pending, None
                    written += hand_over(item)
                pending = (recs, host, done)
        finally:  # also when a later batch failed: the finished one is kept
            if pending:
                written += hand_over(pending)
    return written
