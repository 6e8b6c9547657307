"""CAMs for the extending guides' runs: smooth made-up CAMs (values in [0, 1], one map per
ground-truth class) of the first images of the vendored tiny VOC train split, written as
stacked_npz files (``cams`` (C, H, W) float32, ``classes`` label ids), the neutral import format."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.datasets import labels_of, read_image, read_mask

TINY = Path(__file__).resolve().parents[1] / "data/voc-tiny"


def write_stacked_cams(folder: Path, n: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    """{image id: (cams, labels)} of the first ``n`` train images, also written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = (TINY / "ImageSets/Segmentation/train.txt").read_text().split()[:n]
    out = {}
    for image_id in ids:
        h, w = read_image(TINY / f"JPEGImages/{image_id}.jpg").shape[:2]
        labels = labels_of(read_mask(TINY / f"SegmentationClass/{image_id}.png"), 21)
        y, x = np.mgrid[:h, :w].astype(np.float32)
        cams = np.stack([0.5 + 0.5 * np.sin(x / (17 + 5 * c)) * np.cos(y / (23 + 3 * c)) for c in labels])
        out[image_id] = (cams.astype(np.float32), labels)
        np.savez_compressed(folder / f"{image_id}.npz", cams=out[image_id][0], classes=np.array(labels))
    return out
