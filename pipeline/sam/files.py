"""One image's SAM masks file (layout: stages/sam_masks.py). No torch, so the
pseudo_masks worker processes that read these files start fast."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.store import unique_tmp


def write_masks_json(path: Path, image_id: str, height: int, width: int, records: list[dict]) -> None:
    """Atomically (temp + rename): the file's existence marks the image done."""
    doc = {"image_id": image_id, "height": height, "width": width, "annotations": records}
    tmp = unique_tmp(path)
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def read_masks_json(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(masks (S, H, W) bool, levels (S,) int, document) of one image's file."""
    from pycocotools import mask as mask_utils

    try:
        doc = json.loads(Path(path).read_text())
        h, w, anns = doc["height"], doc["width"], doc["annotations"]
        masks = np.zeros((len(anns), h, w), bool)
        for i, a in enumerate(anns):
            masks[i] = mask_utils.decode(a["segmentation"]).astype(bool)
        levels = np.array([a["level"] for a in anns], np.int64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a SAM masks file ({type(e).__name__}: {e})") from None
    return masks, levels, doc
