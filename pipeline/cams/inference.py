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
  change their CAMs: batches hold equal sizes only); normalisation, flips and
  the label selection run on the model's device; each image's patch-grid CAMs
  (per scale and flip, its labels only) go to a CamWriter whose threads
  compress and write them. The upsampling, sum and min-max
  (pipeline/cams/grids.py) run when a consumer reads the store.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.cams.grids import Geometry, assemble, min_max, to_image_size
from pipeline.cams.store import CamStore, CamWriter
from pipeline.data.datasets import Record, image_size, read_image  # noqa: F401 - image_size importable here
from pipeline.models.mask_generator import normalize, normalize_numpy
from pipeline.precision import Precision


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    if scale == 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL takes (W, H)
    return np.array(Image.fromarray(image).resize(size, resample=Image.BICUBIC))


def _cam_output(model, x: torch.Tensor, cam: str, caa=None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(CAM grid (B, K, h, w) as the model computes it (float16 under autocast), CAA attention
    (B, N, N) or None)."""
    if caa is not None and getattr(model, "arch", None) != "vit":
        raise ValueError("export_cams.caa: CAA needs the attention of a ViT mask generator (mask_generator.arch: "
                         f"vit), not arch '{getattr(model, 'arch', type(model).__name__)}'")
    out = model(x, caa_layers=caa.last_n_layers) if caa is not None else model(x)
    if cam not in out:
        raise ValueError(f"export_cams.cam: the mask generator has no '{cam}' CAM output")
    return out[cam], out.get("caa_attn")


def _refined(grid: torch.Tensor, attn: Optional[torch.Tensor], caa) -> torch.Tensor:
    """The CAA CAMs of one forward's grid (float32, outside autocast) when CAA is on."""
    if caa is None:
        return grid if grid.dtype in (torch.float16, torch.float32) else grid.float()
    from pipeline.cams.caa import refine
    with torch.autocast(grid.device.type, enabled=False):
        return refine(grid, attn, caa)


@torch.no_grad()
def infer_cams(model, image: np.ndarray, labels: Sequence[int], scales: Sequence[float] = (1.0,),
               flip: bool = True, cam: str = "fine", device: torch.device | str = "cpu", caa=None) -> np.ndarray:
    """(H, W, 3) uint8 image, foreground label ids -> (len(labels), H, W) float32 in [0, 1].
    caa: a CaaCfg (pipeline/cams/caa.py on each forward's grid before the upsampling) or None."""
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
        grid, attn = _cam_output(model, x, cam, caa)
        grid = _refined(grid[:, keep], attn, caa)  # (B, C_present, h, w)
        up = to_image_size(grid, img.shape[:2], (H, W), Geometry.of(model))
        if flip:
            up[1] = up[1].flip(-1)
        total += up.sum(0)
    return min_max(total).cpu().numpy()


@torch.no_grad()
def grids_batch(model, scaled: Sequence[torch.Tensor], labels: Sequence[Sequence[int]], flip: bool = True,
                cam: str = "fine", device: torch.device | str = "cpu", precision: Optional[Precision] = None,
                caa=None) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """B images of one size: ``scaled`` holds, per scale, the resized images as uint8
    (B, h, w, 3); ``labels`` their foreground ids. Returns, per scale, the CAM grids
    (F*B, C_max, h', w') of the labels (rows B: the mirrored images when ``flip``; image b's
    classes are [:len(labels[b])], the rest repeats its first class), as the model computes
    them (float16 under CUDA's AMP; float32 after CAA, and from bfloat16: exact, and a dtype
    the store keeps), and the scaled input sizes. ``precision``: the forward's autocast (None:
    float32)."""
    device = torch.device(device)
    c_max = max(len(l) for l in labels)
    keep = torch.tensor([[c - 1 for c in l] + [l[0] - 1] * (c_max - len(l)) for l in labels], device=device)
    if flip:
        keep = torch.cat([keep, keep])
    grids, sizes = [], []
    for images in scaled:
        x = normalize(images.to(device, non_blocking=True).permute(0, 3, 1, 2))
        if flip:
            x = torch.cat([x, x.flip(-1)])  # rows B.. are the mirrored images
        with (precision or Precision.of(device, False)).autocast():
            grid, attn = _cam_output(model, x, cam, caa)
        grids.append(_refined(grid.gather(1, keep[:, :, None, None].expand(-1, -1, *grid.shape[-2:])), attn, caa))
        sizes.append(tuple(x.shape[-2:]))
    return grids, sizes


def infer_cams_batch(model, scaled: Sequence[torch.Tensor], labels: Sequence[Sequence[int]],
                     size: tuple[int, int], flip: bool = True, cam: str = "fine",
                     device: torch.device | str = "cpu", precision: Optional[Precision] = None,
                     caa=None) -> torch.Tensor:
    """grids_batch assembled to the image size (H, W): (B, C_max, H, W) float32 in [0, 1]."""
    grids, sizes = grids_batch(model, scaled, labels, flip, cam, device, precision, caa)
    return assemble(grids, sizes, size, flip, Geometry.of(model))


def image_grids(grids: Sequence[torch.Tensor], b: int, n_classes: int, flip: bool) -> list[np.ndarray]:
    """Image b's grids out of a batch's (F*B, C_max, h, w) ones: per scale (F, n_classes, h, w)."""
    B = grids[0].shape[0] // (2 if flip else 1)
    rows = [b, B + b] if flip else [b]
    return [g[rows, :n_classes].numpy() for g in grids]


# ------------------------------------------------------------ batched export
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
                   prefetch_factor: int = 2, writer_threads: int = 8, precision: Optional[Precision] = None,
                   progress=None, caa=None, pending: Optional[set[str]] = None) -> int:
    """Write the CAMs of ``records`` (only those whose id is in ``pending``, if given) into
    ``store``; returns how many were written. The batches are those of all ``records``, and
    each batch holding a pending image runs whole: an image's CAMs depend on its batch
    (its neighbours, their class count), so a healed or resumed image is computed with the
    neighbours it had and equals the original bit for bit. Memory is bounded by the loader's
    prefetch, one batch on the device and the writer's queue, whatever the number of records."""
    device = torch.device(device)
    batches = [b for b in same_size_batches(records, batch_size)
               if pending is None or any(r.id in pending for r in b)]
    loader = DataLoader(ScaledBatches(batches, scales), batch_size=None, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        prefetch_factor=prefetch_factor if num_workers else None)
    steps = zip(batches, loader)
    if progress:
        steps = progress(steps, total=len(batches))
    written = 0
    geom = Geometry.of(model)
    with CamWriter(store, writer_threads, max_pending=max(2 * batch_size, 2 * writer_threads)) as writer:
        for recs, scaled in steps:
            grids, sizes = grids_batch(model, scaled, [r.labels for r in recs], flip, cam, device, precision,
                                       caa)
            written += _submit_batch(writer, recs, [g.cpu() for g in grids], sizes, flip, geom, pending)
    return written


def _submit_batch(writer: CamWriter, recs: Sequence[Record], grids: Sequence[torch.Tensor],
                  sizes: Sequence[tuple[int, int]], flip: bool, geom: Geometry,
                  pending: Optional[set[str]] = None) -> int:
    """Each (pending) image's grids out of the batch's (a few kB per image, copied to the host
    at once: not worth overlapping) to the writer. Its own function: a failing batch's frame
    holds that batch's records only (pipeline.utils.stage_error names them)."""
    todo = [(b, rec) for b, rec in enumerate(recs) if pending is None or rec.id in pending]
    for b, rec in todo:
        writer.submit_grids(rec.id, image_grids(grids, b, len(rec.labels), flip), rec.labels, image_size(rec),
                            sizes, flip, geom)
    return len(todo)
