"""Label PNGs -> COCO JSON (and back), for detectron2, mmdetection and other COCO readers.

One annotation per (image, foreground class present): the class's pixels as
one RLE (pycocotools), ``iscrowd`` 0, ``category_id`` = the label id (the
class list's index, background 0 has no category), area and bbox from
pycocotools. Background is every pixel no annotation covers. Uncertain
pixels (255) belong to no annotation either; each image entry carries them
as ``uncertain_rle`` (a COCO RLE; extra keys are ignored by COCO readers),
so ``decode`` gives back the label maps exactly.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.data.classes import IGNORE
from pipeline.fileio import write_json_atomic


def _rle(binary: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str for JSON
    return rle


def coco_document(items: Iterable[tuple[str, str, np.ndarray]], class_names: Sequence[str],
                  description: str) -> dict:
    """items: (image id, image path, (H, W) uint8 label map) -> COCO dict.
    ``class_names[i]`` names label id i (0 = background)."""
    from pycocotools import mask as mask_utils
    n_cls = len(class_names)
    images, annotations = [], []
    for n, (image_id, image_path, label) in enumerate(items, 1):
        bad = sorted(set(np.unique(label).tolist()) - set(range(n_cls)) - {IGNORE})
        if bad:
            raise ValueError(f"image '{image_id}': label ids {bad} outside 0..{n_cls - 1} (and not {IGNORE})")
        h, w = label.shape
        entry = {"id": n, "file_name": image_path, "height": h, "width": w, "wsss_id": image_id}
        if (label == IGNORE).any():
            entry["uncertain_rle"] = _rle(label == IGNORE)
        images.append(entry)
        for c in np.unique(label):
            if c == 0 or c == IGNORE:
                continue
            rle = _rle(label == c)
            annotations.append({"id": len(annotations) + 1, "image_id": n, "category_id": int(c),
                                "segmentation": rle, "area": int(mask_utils.area(rle)),
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    return {
        "info": {"description": description, "date_created": datetime.date.today().isoformat(),
                 "note": "one RLE per class per image; background = pixels in no annotation; uncertain "
                         "pixels (label 255) are in no annotation and in the image's 'uncertain_rle'"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": "thing"}
                       for i, name in enumerate(class_names) if i],
    }


def export_coco(path: Path, items: Iterable[tuple[str, str, np.ndarray]], class_names: Sequence[str],
                description: str) -> dict:
    """Write the COCO JSON of ``items`` atomically; returns counts."""
    doc = coco_document(items, class_names, description)
    write_json_atomic(Path(path), doc)
    return {"images": len(doc["images"]), "annotations": len(doc["annotations"])}


def decode(doc_or_path) -> dict[str, np.ndarray]:
    """COCO JSON written by ``export_coco`` -> {image id: (H, W) uint8 label map}, via pycocotools."""
    import contextlib
    import io
    import json

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    doc = doc_or_path if isinstance(doc_or_path, dict) else json.loads(Path(doc_or_path).read_text())
    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    out = {}
    for img in doc["images"]:
        label = np.zeros((img["height"], img["width"]), np.uint8)
        for a in coco.imgToAnns.get(img["id"], []):
            label[coco.annToMask(a).astype(bool)] = a["category_id"]
        if "uncertain_rle" in img:
            label[mask_utils.decode(img["uncertain_rle"]).astype(bool)] = IGNORE
        out[img.get("wsss_id", str(img["id"]))] = label
    return out
