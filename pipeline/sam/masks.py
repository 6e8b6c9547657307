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
it; per_image lets the runner remove damaged files first); finalize checks that every
image has its file, counts the masks per level (sam_levels.json keeps them per image, so a
heal reads only the files it rewrote) and draws a gallery (kept by a heal).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.artifacts import SamArtifact
from pipeline.config import Config
from pipeline.data.datasets import LabelTable, read_image
from pipeline.fileio import atomic_write, json_rows
from pipeline.sam.files import load_masks_doc
from pipeline.store import PerImage

log = logging.getLogger("wsss")


def per_image(cfg: Config) -> tuple[PerImage, ...]:
    """One JSON file per image: what the runner checks (and removes when damaged) before a resume."""
    return (PerImage(SamArtifact(Path()).masks(cfg.sam.split).as_posix(), ".json", load_masks_doc),)


def _table(cfg: Config, inputs) -> LabelTable:
    return LabelTable.from_artifact(inputs["prepare_data"], cfg.sam.split)


def items(cfg: Config, inputs) -> list[str]:
    # the weights were resolved by the preflight (stages/runner.py) before any stage ran
    return _table(cfg, inputs).ids()


def run_shard(cfg: Config, inputs, out: Path, ids: list[str]) -> int:
    """Write the mask files of ``ids`` not yet written; returns how many were written."""
    from pipeline.sam.files import write_masks_json
    from pipeline.sam.generator import make_generator
    from pipeline.utils import get_device, log_pending, progress, read_ahead

    art, split = SamArtifact(out), cfg.sam.split
    art.masks(split).mkdir(parents=True, exist_ok=True)
    todo = per_image(cfg)[0].pending(out, ids)
    if not todo:
        return 0
    log_pending("sam_masks", todo, len(ids))
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
    from pipeline.sam.files import read_masks_json

    table = _table(cfg, inputs)
    art, split = SamArtifact(out), cfg.sam.split
    d = art.masks(split)
    ids = table.ids()
    missing = per_image(cfg)[0].pending(out, ids)
    if missing:
        raise RuntimeError(f"{d}: {len(missing)} images have no SAM masks file "
                           f"(e.g. {', '.join(missing[:5])}); run the missing shards")
    counts = level_counts(art, split, ids)
    per_level = np.sum([c[1:] for c in counts.values()], axis=0, dtype=np.int64) if counts else np.zeros(3, np.int64)
    rows = []
    for image_id in [] if art.gallery.exists() else fixed_sample(ids, cfg.sam.gallery_size):  # a heal keeps it
        image = read_image(table[image_id].image)
        rows.append([image, _overlay(image, read_masks_json(art.image(split, image_id))[0])])
    if rows:
        from pipeline.plots import save_grid  # matplotlib: not imported by a heal
        save_grid(art.gallery, rows, titles=["image", "SAM masks (random colours)"])
    return {"images": len(ids), "split": cfg.sam.split,
            "masks_per_image": float(np.mean([c[0] for c in counts.values()])) if counts else 0.0,
            "level_fractions": (per_level / max(per_level.sum(), 1)).round(4).tolist(), "dir": d.name}


def level_counts(art: SamArtifact, split: str, ids: list[str]) -> dict[str, list[int]]:
    """Per image [masks, masks of level 0, 1, 2], from its JSON file, kept in ``art.levels`` with
    the file's size and mtime: a file whose size and mtime are those of its entry is not read
    again (the rule the artifact store trusts), so a heal reads the files it rewrote, not every
    image's."""
    try:
        known = json.loads(art.levels.read_text())
    except (OSError, ValueError):  # none yet, or damaged (the heal has removed it): every file is read
        known = {}
    kept, counts = {}, {}
    for image_id in ids:
        path = art.image(split, image_id)
        st = os.stat(path)
        entry = known.get(image_id) if isinstance(known, dict) else None
        if not (isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]):
            levels = np.asarray([a["level"] for a in load_masks_doc(path)["annotations"]], np.int64)
            entry = [st.st_size, st.st_mtime_ns, len(levels), *np.bincount(levels, minlength=3)[:3].tolist()]
        kept[image_id], counts[image_id] = entry, entry[2:]
    with atomic_write(art.levels) as tmp:
        tmp.write_text(json_rows(kept) + "\n")
    return counts


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
