"""`wsss init-dataset DIR`: a config for a folder of images with tags.

Finds the labels file (labels.csv / labels.jsonl / labels.json), the image
folder (DIR/images, else DIR) and an optional ground-truth folder (DIR/masks);
writes a class list from the labels when DIR has none, beside the config
(``<config stem>.classes.txt``: the data folder may be read-only or shared, and
the list is the config's choice of classes); writes a config whose data section
reads the folder with the SemPLeS defaults, from the template
templates/folder.yaml, or with ``tiny`` also templates/folder-tiny.yaml's
CPU-sized models (package data: found in an installed wheel as in the source tree).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Optional

from pipeline.data.datasets import DataError, label_rows

LABEL_FILES = ("labels.csv", "labels.jsonl", "labels.json")
CLASS_FILES = ("classes.csv", "classes.txt")


def template(name: str = "folder") -> Template:
    return Template(files("pipeline.data").joinpath(f"templates/{name}.yaml").read_text())


def _find(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise DataError(f"{folder}: no {what} ({', '.join(names)}); name one explicitly")


def class_counts(labels: Path) -> Counter:
    """Images per class name in a labels file."""
    counts: Counter = Counter()
    for _, _, names in label_rows(labels):
        counts.update(set(names))
    return counts


def init_dataset(folder: Path, out: Path, labels: Optional[Path] = None, images: Optional[Path] = None,
                 overwrite: bool = False, tiny: bool = False) -> tuple[Counter, Optional[Path]]:
    """Write the config ``out`` for ``folder`` (``tiny``: CPU-sized models); returns (images
    per class, the class list written, or None when one existed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    if out.exists() and not overwrite:
        raise DataError(f"{out}: exists (pass --force to overwrite)")
    labels = Path(labels) if labels else _find(folder, LABEL_FILES, "labels file")
    images = Path(images) if images else (folder / "images" if (folder / "images").is_dir() else folder)
    counts = class_counts(labels)
    if not counts:
        raise DataError(f"{labels}: no labelled image")
    written = None
    beside = out.with_name(f"{out.stem}.classes.txt")
    try:
        classes = _find(folder, CLASS_FILES, "class list")
    except DataError:
        classes = beside
        if not beside.is_file():  # a list written before (perhaps edited since) is kept
            written = beside
            beside.parent.mkdir(parents=True, exist_ok=True)
            beside.write_text("".join(f"{n}\n" for n in sorted(counts)))
    rel = lambda p: os.path.relpath(Path(p).resolve(), folder.resolve())  # noqa: E731
    split = {"images": rel(images), "labels": rel(labels)}
    if (folder / "masks").is_dir():
        split["masks"] = "masks"
    name = folder.resolve().name
    q = json.dumps  # JSON strings and objects are YAML: any path or name comes through quoted
    # --tiny also sets a run key, written into the run section: YAML keeps only the last of two `run:`
    run_tiny = "\n  num_workers: 0             # --tiny: data loading on the main process" if tiny else ""
    text = template().substitute(folder=folder, name=q(name), work_dir=q(f"runs/{name}"), run_tiny=run_tiny,
                                 root=q(str(folder)), classes=q(rel(classes)), split=q(split))
    if tiny:
        text += template("folder-tiny").substitute()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return counts, written
