"""Per-image CAM files of other WSSS code bases, each format a ``CamFormat`` record
(pipeline/registry.py): read (safely) and write.

Every module of this package declares ``FORMAT = CamFormat(...)`` (modules named "_..." are
helpers); nothing else names a format. pipeline/registry.py discovers them: the config reads
its FORMAT_NAMES (what import_cams.format and ``wsss export-cams --format`` accept) and
FORMAT_OPTIONS (the models whose fields, the formats' own options, join import_cams); the
import_cams stage and the export read and write through ``read_cam_file`` / ``write_cam_file``
here. Adding a format = adding its module (docs/extending/cam-format.md). A format module
imports its record type and CamFormatError from pipeline/registry.py, and neither
pipeline.config (the config reads the registry) nor torch at module level.

A file is ``<image id>`` + the format's suffix, one per image, CAMs at the image's size. Its
class keys are dataset label ids (``keys="label"``) or the external class indices of the code
base that wrote it (``keys="index"``), which map onto label ids through ``ClassIndex``:
label = index - base + 1, or with ``category_ids`` (COCO's 90-row models: index - base + 1 is a
COCO category id) the label of that category (import_cams.class_base / class_index).
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.fileio import unique_tmp
# handed on: FORMATS is the registry's table, filled in place
from pipeline.registry import FORMATS, CamFormat, CamFormatError, get_format  # noqa: F401


# ------------------------------------------------------------------ class indices
@dataclass(frozen=True)
class ClassIndex:
    """External class index <-> dataset label id (1..K)."""
    base: int = 0
    category_ids: Optional[tuple[int, ...]] = None  # category id of label l = category_ids[l - 1]

    def label(self, index: int, num_classes: int) -> Optional[int]:
        """The label id of an external index, None if it names no class of the dataset."""
        fg = int(index) - self.base
        if self.category_ids is not None:
            return self.category_ids.index(fg + 1) + 1 if fg + 1 in self.category_ids else None
        return fg + 1 if 0 <= fg < num_classes - 1 else None

    def index(self, label: int) -> int:
        fg = self.category_ids[label - 1] - 1 if self.category_ids is not None else label - 1
        return fg + self.base


# ------------------------------------------------------------------ reading
def read_cam_file(path: Path, fmt: str, index: ClassIndex, num_classes: int,
                  **options) -> tuple[np.ndarray, list[int]]:
    """(cams (C, H, W) float32, label ids) of one file in format ``fmt`` (``options``: its
    import_cams options; the reader's defaults where not given); CamFormatError naming the file."""
    path, f = Path(path), get_format(fmt)
    try:
        cams, keys = f.read(path, **options)
    except CamFormatError:
        raise
    except FileNotFoundError:
        raise CamFormatError(f"{path}: file missing") from None
    except Exception as e:  # a reader's own failure on a bad file: name the file
        raise CamFormatError(f"{path}: not a {fmt} file ({type(e).__name__}: {e})") from None
    keys = np.asarray(keys).reshape(-1).tolist()
    labels = keys if f.keys == "label" else [index.label(k, num_classes) for k in keys]
    return _checked(path, np.asarray(cams).astype(np.float32), keys, labels, num_classes)


def _checked(path: Path, cams: np.ndarray, ext: list, labels: list, num_classes: int):
    if cams.ndim != 3 or cams.shape[0] != len(labels):
        raise CamFormatError(f"{path}: CAMs of shape {cams.shape} do not hold one (H, W) map per class {ext}")
    bad = [k for k, lab in zip(ext, labels) if lab is None or not 1 <= lab < num_classes]
    if bad:
        raise CamFormatError(f"{path}: class indices {bad} name no foreground class of this dataset "
                             f"({num_classes - 1} classes; check import_cams.class_base / class_index)")
    if len(set(labels)) != len(labels):
        raise CamFormatError(f"{path}: a class appears twice ({ext})")
    return cams, [int(x) for x in labels]


# ------------------------------------------------------------------ writing
def write_cam_file(out_dir: Path, image_id: str, fmt: str, cams: np.ndarray, labels: Sequence[int],
                   index: ClassIndex) -> Path:
    """Write one image's CAMs (label ids ``labels``) in ``fmt``, atomically; returns the path."""
    f = get_format(fmt)
    path = Path(out_dir) / f"{image_id}{f.suffix}"
    keys = [int(c) for c in labels] if f.keys == "label" else [index.index(int(c)) for c in labels]
    buf = io.BytesIO()
    f.write(buf, np.asarray(cams), keys)
    tmp = unique_tmp(path)
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ folder fingerprint
def folder_fingerprint(folder: Optional[Path], suffixes: Sequence[str], mode: str = "stat") -> str:
    """A digest of the files of ``folder`` ending in ``suffixes``: names + sizes + mtimes
    (``stat``: one directory scan, milliseconds for VOC) or names + sha256 of the contents
    (``full``: reads every byte). A missing folder has its own digest (the stage then fails)."""
    if folder is None or not Path(folder).is_dir():
        return "no folder"
    h = hashlib.sha256()
    entries = sorted((e.name, e) for e in os.scandir(folder) if e.name.endswith(tuple(suffixes)) and e.is_file())
    for name, e in entries:
        if mode == "full":
            from pipeline.fileio import sha256_file
            h.update(f"{name}\0{sha256_file(Path(e.path))}\n".encode())
        else:
            st = e.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{mode}:{len(entries)}:{h.hexdigest()}"
