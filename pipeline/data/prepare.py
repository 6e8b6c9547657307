"""The work of the prepare_data stage: validate the dataset tree and write the label
tables (pipeline/artifacts.py DataArtifact): labels_<split>.json for the train and val
splits (image paths, sizes, image-level labels derived from masks/annotations/tags),
data_report.json, and for COCO the semantic masks rendered from instances."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.artifacts import DataArtifact
from pipeline.config import Config
from pipeline.data.classes import dataset_classes
from pipeline.data.datasets import DataError, LabelTable, check_split, read_mask, render_coco_masks
from pipeline.data.records import per_class_counts
from pipeline.fileio import write_json_atomic
from pipeline.store import PerImage

log = logging.getLogger("wsss")


def input_files(cfg: Config) -> list[Path]:
    """Files whose content the artifact key covers: a folder dataset's class
    list and labels files (edited by hand, unlike the VOC/COCO trees)."""
    if cfg.data.dataset != "folder":
        return []
    return [cfg.data.root / cfg.data.classes] + [cfg.data.root / cfg.data.splits[s].labels
                                                 for s in cfg.data.all_splits]


def per_image(cfg: Config) -> tuple[PerImage, ...]:
    """COCO: the rendered label PNGs (render_coco_masks skips those already there)."""
    if cfg.data.dataset != "coco":
        return ()
    return tuple(PerImage(DataArtifact(Path()).coco_masks(s).as_posix(), ".png", read_mask)
                 for s in cfg.data.all_splits)


def run(cfg: Config, inputs, out):
    if cfg.data.fetch:
        from pipeline.data.fetch import fetch_dataset, fetched_or_absent
        if fetched_or_absent(cfg.data.root):  # a completed fetch is seen by its marker and not repeated
            fetch_dataset(cfg.data)
        else:
            log.info("data.fetch: %s holds a tree not made by `wsss fetch`; using it as it is", cfg.data.root)
    art = DataArtifact(out)
    classes = dataset_classes(cfg.data)
    names = classes.names
    report = {}
    for split in cfg.data.all_splits:
        good, problems, skipped = check_split(cfg.data, split)
        if problems:
            shown = "\n  ".join(str(p) for p in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DataError(f"split '{split}': {len(problems)} bad items "
                            f"(run `wsss data check` for all):\n  {shown}{more}")
        if cfg.data.dataset == "coco":
            mask_dir = art.coco_masks(split)
            render_coco_masks(cfg.data, split, mask_dir,
                              progress=lambda i, n: i % 1000 == 0 and log.info("%s masks %d/%d", split, i, n))
            for r in good:
                r.mask = str((mask_dir / f"{r.id}.png").resolve())
        LabelTable(cfg.data.dataset, split, good, classes).save(art.labels(split))
        counts = per_class_counts(good, len(names))
        report[split] = {"images": len(good), "skipped_without_annotations": skipped,
                         "images_per_class": dict(zip(names[1:], counts[1:]))}
        log.info("%s: %d images", split, len(good))
    write_json_atomic(art.report, report)
    return {f"{s}_images": r["images"] for s, r in report.items()}


SIZE_CHECK = ".size_check.json"  # dot-file: not part of the manifest


def check_image_sizes(cfg: Config, out: Path) -> None:
    """After prepare_data (computed or cached), before any training starts: the image sizes the
    CAM export can handle (pipeline/data/image_checks.py; the checks section is part of no key).
    A check that passed is remembered in the artifact under a digest of all it reads, and its
    warnings are logged again from there: a cached run then imports no model library (timm, for
    the mask generator's patch size: ~3 s)."""
    from pipeline.data.image_checks import cam_splits, check_sizes
    from pipeline.store import digest
    art, splits, ec, mg = DataArtifact(out), cam_splits(cfg), cfg.export_cams, cfg.mask_generator
    try:
        stamps = [(st.st_size, st.st_mtime_ns) for st in (art.labels(s).stat() for s in splits)]
    except FileNotFoundError:
        stamps = None  # never remembered: the check below raises LabelTable's DataError naming the split
    read = digest({"splits": splits, "tables": stamps,
                   "checks": cfg.section("checks"), "scales": ec.scales, "flip": ec.flip,
                   "generator": [mg.arch, mg.backbone]})
    try:
        done = json.loads((Path(out) / SIZE_CHECK).read_text())
    except (OSError, ValueError):
        done = {}
    if done.get("digest") == read:
        for where, warning in done["warnings"]:
            log.warning("%s: %s", where, warning)
        return
    warnings = []
    for split in splits:
        table, where = LabelTable.from_artifact(out, split), f"prepare_data split '{split}'"
        warnings += [(where, w) for w in check_sizes(cfg, table.records, table.num_classes - 1, where)]
    try:
        write_json_atomic(Path(out) / SIZE_CHECK, {"digest": read, "warnings": warnings})
    except OSError:  # a read-only store: check again next time
        pass
