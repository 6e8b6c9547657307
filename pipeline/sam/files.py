"""One image's SAM masks file (layout: stages/sam_masks.py). No torch, so the
pseudo_masks worker processes that read these files start fast."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.fileio import atomic_write, decoding


def write_masks_json(path: Path, image_id: str, height: int, width: int, records: list[dict]) -> None:
    """Atomically (temp + rename): the file's existence marks the image done."""
    doc = {"image_id": image_id, "height": height, "width": width, "annotations": records}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(doc))


def load_masks_doc(path: Path) -> dict:
    """The parsed file, its layout checked (not its masks decoded): the cheap
    per-image check of sam_masks' outputs. Raises UnreadableFile naming it."""
    with decoding(path, "SAM masks file"):
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc["height"], int) or not isinstance(doc["width"], int):
            raise TypeError("height / width are not integers")
        for a in doc["annotations"]:
            if not {"segmentation", "level"} <= set(a):
                raise KeyError("an annotation without 'segmentation' / 'level'")
    return doc


def read_masks_json(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(masks (S, H, W) bool, levels (S,) int, document) of one image's file."""
    from pycocotools import mask as mask_utils

    doc = load_masks_doc(path)
    with decoding(path, "SAM masks file"):
        h, w, anns = doc["height"], doc["width"], doc["annotations"]
        masks = np.zeros((len(anns), h, w), bool)
        for i, a in enumerate(anns):
            masks[i] = mask_utils.decode(a["segmentation"]).astype(bool)
        levels = np.array([a["level"] for a in anns], np.int64)
    return masks, levels, doc
