"""The work of the sam_masks stage: SAM's automatic masks of every image of cfg.sam.split,
with FMA-WSSS's settings and changes (pipeline/sam/generator.py): class-agnostic
"quasi-superpixels" that the pseudo-mask route sam labels from the CAMs.

One JSON file per image (pipeline/sam/files.py; its place: pipeline/artifacts.py
SamArtifact), readable without this project:
  {"image_id", "height", "width",
   "annotations": [{"segmentation": COCO RLE {"size": [h, w], "counts": str},
                    "level": 0 sub-part | 1 part | 2 whole, "predicted_iou",
                    "stability_score", "bbox": [x, y, w, h], "area"}, ...]}
Decode a mask with pycocotools.mask.decode(ann["segmentation"]).

items -> image ids; run_shard writes the files of some ids (each atomically, temp +
rename, so a file's existence is the image's completion flag and a resumed shard skips
it); finalize checks that every image has its file and draws a gallery.
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.artifacts import SamArtifact
from pipeline.config import Config
from pipeline.data.datasets import LabelTable, read_image

log = logging.getLogger("wsss")


def _table(cfg: Config, inputs) -> LabelTable:
    return LabelTable.from_artifact(inputs["prepare_data"], cfg.sam.split)


def items(cfg: Config, inputs) -> list[str]:
    # the weights were resolved by the preflight (stages/runner.py) before any stage ran
    return _table(cfg, inputs).ids()


def run_shard(cfg: Config, inputs, out: Path, ids: list[str]) -> int:
    """Write the mask files of ``ids`` not yet written; returns how many were written."""
    from pipeline.sam.files import write_masks_json
    from pipeline.sam.generator import make_generator
    from pipeline.utils import get_device, progress, read_ahead

    art, split = SamArtifact(out), cfg.sam.split
    art.masks(split).mkdir(parents=True, exist_ok=True)
    todo = [i for i in ids if not art.image(split, i).exists()]
    if not todo:
        return 0
    table = _table(cfg, inputs)
    gen = make_generator(cfg.sam, get_device(cfg.run.device))  # before any file: bad weights write nothing
    ahead = cfg.sam.images_in_flight
    start = time.perf_counter()
    images = read_ahead(todo, lambda i: read_image(table[i].image), ahead)  # decoding overlaps SAM
    with ThreadPoolExecutor(1) as writer:  # JSON + rename behind SAM; at most `ahead` files pending
        pending = deque()
        for image_id, image in progress(images, f"sam_masks {cfg.sam.split}", total=len(todo)):
            try:
                records = gen.generate(np.ascontiguousarray(image[..., :3]))
            except Exception as e:
                raise RuntimeError(f"sam_masks: image '{image_id}' ({table[image_id].image}): {e}") from e
            pending.append(writer.submit(write_masks_json, art.image(split, image_id), image_id, image.shape[0],
                                         image.shape[1], records))
            while len(pending) > ahead:
                pending.popleft().result()
        for f in pending:  # a failed write raises here
            f.result()
    total = time.perf_counter() - start
    t = gen.timer.split(total)  # post includes reading images and writing files
    log.info("sam_masks: %d images, %.2f s/image (encode %.2f, decode %.2f, post %.2f)", len(todo),
             total / len(todo), t["encode"] / len(todo), t["decode"] / len(todo), t["post"] / len(todo))
    return len(todo)


def finalize(cfg: Config, inputs, out: Path) -> dict:
    from pipeline.cams.store import fixed_sample
    from pipeline.plots import save_grid
    from pipeline.sam.files import read_masks_json

    table = _table(cfg, inputs)
    art, split = SamArtifact(out), cfg.sam.split
    d = art.masks(split)
    ids = table.ids()
    missing = [i for i in ids if not art.image(split, i).exists()]
    if missing:
        raise RuntimeError(f"{d}: {len(missing)} images have no SAM masks file "
                           f"(e.g. {', '.join(missing[:5])}); run the missing shards")
    counts, levels, rows = [], np.zeros(3, np.int64), []
    sample = set(fixed_sample(ids, cfg.sam.gallery_size))
    for image_id in ids:  # counts from the JSON alone; masks decoded for the gallery sample only
        path = art.image(split, image_id)
        try:
            lv = [a["level"] for a in json.loads(path.read_text())["annotations"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a SAM masks file ({type(e).__name__}: {e})") from None
        counts.append(len(lv))
        levels += np.bincount(np.asarray(lv, np.int64), minlength=3)[:3]
        if image_id in sample:
            image = read_image(table[image_id].image)
            rows.append([image, _overlay(image, read_masks_json(path)[0])])
    if rows:
        save_grid(art.gallery, rows, titles=["image", "SAM masks (random colours)"])
    return {"images": len(ids), "split": cfg.sam.split, "masks_per_image": float(np.mean(counts)) if counts else 0.0,
            "level_fractions": (levels / max(levels.sum(), 1)).round(4).tolist(), "dir": d.name}


def _overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Masks painted over the image in the file's order, one random colour each."""
    rng = np.random.default_rng(0)
    out = image[..., :3].astype(np.float32).copy()
    for m in masks:
        out[m] = 0.4 * out[m] + 0.6 * rng.integers(0, 256, 3)
    return out.astype(np.uint8)


def run(cfg: Config, inputs, out: Path) -> dict:
    run_shard(cfg, inputs, out, _table(cfg, inputs).ids())
    return finalize(cfg, inputs, out)
