"""`wsss data check` in words: each split's image count, images per class, every bad item,
and the images the CAM export cannot handle (pipeline/data/image_checks.py checks.*: BAD
refuses a run, WARN does not)."""
from __future__ import annotations

from pipeline.config import Config
from pipeline.data.classes import dataset_classes
from pipeline.data.datasets import check_split
from pipeline.data.records import per_class_counts
from pipeline.data.image_checks import cam_splits, size_problems


def check_lines(cfg: Config) -> tuple[list[tuple[str, bool]], int]:
    """The report on the dataset tree ``cfg.data``, split by split, as (line, is a problem),
    and the number of bad items (0: a run may start). ClassFileError for an unreadable class list."""
    names = dataset_classes(cfg.data).names
    lines, bad = [], 0
    for split in cfg.data.all_splits:
        good, problems, skipped = check_split(cfg.data, split)
        extra = f" ({skipped} without annotations skipped)" if skipped else ""
        if cfg.data.dataset == "folder":
            extra += f" ({sum(1 for r in good if r.mask)} with ground-truth masks)"
        counts = per_class_counts(good, len(names))
        lines += [(f"{split}: {len(good)} images{extra}", False),
                  ("  " + ", ".join(f"{n}={c}" for n, c in zip(names[1:], counts[1:]) if c), False)]
        lines += [(f"  BAD {p}", True) for p in problems]
        bad += len(problems)
        checked = size_problems(cfg, good, len(names) - 1) if split in cam_splits(cfg) else ([], [])
        for found, action in zip(checked, (cfg.checks.small_images, cfg.checks.large_images)):
            lines += [(f"  {'BAD' if action == 'error' else 'WARN'} {p}", True) for p in found]
            bad += len(found) if action == "error" else 0
    return lines + ([(f"{bad} bad items", True)] if bad else []), bad
