"""Per-image CAM files of other WSSS code bases: read (safely) and write.

Formats (``<image id>`` + suffix, one file per image, CAMs at the image's size):

- ``weaktr_npy``  ``<id>.npy``: ``np.save(path, cam_dict)`` of a dict {class index: (H, W) float
  array}, one entry per present foreground class (WeakTr / SemPLeS engine*.py, MCTformer engine.py
  ``generate_attention_maps_ms``; index 0 = first foreground class).
- ``clip_es_npy`` ``<id>.npy``: a dict {"keys": (C,) foreground class indices, "attn_highres":
  (C, H, W) float16} (CLIP-ES generate_cams_voc12.py / generate_cams_coco14.py); other entries are
  ignored.
- ``stacked_npz`` ``<id>.npz``: arrays ``cams`` (C, H, W) and ``classes`` (C,) dataset label ids
  (1 = first foreground class): the neutral format, no pickle.
- ``fma_npz``     ``<id>.npz``: arrays ``cam`` (C, H, W) and ``fg_cls`` (C,) foreground class
  indices, what FMA-WSSS's anns_seed/run.py reads without a custom loader.

The dict formats are pickles inside .npy files. They are unpickled by a restricted unpickler that
builds numpy arrays, dtypes and scalars only, and the result must be a plain dict of arrays (or
numbers): any other pickled object is refused before it is built, so a file cannot run code.

Class indices of the dict/FMA formats map onto dataset label ids through ``ClassIndex``: label =
index - base + 1, or with ``category_ids`` (COCO's 90-row models: index - base + 1 is a COCO
category id) the label of that category.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.store import unique_tmp

FORMATS = ("weaktr_npy", "clip_es_npy", "stacked_npz", "fma_npz")
SUFFIX = {"weaktr_npy": ".npy", "clip_es_npy": ".npy", "stacked_npz": ".npz", "fma_npz": ".npz"}
CLIP_ES_KEY = "attn_highres"  # CLIP-ES eval_cam.py --cam_type default


class CamFormatError(ValueError):
    """A CAM file that is not what its format says, naming the file."""


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


# ------------------------------------------------------------------ safe unpickling
_ALLOWED = {  # what np.save of a dict of arrays pickles (numpy 1.x and 2.x module names)
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refuses to unpickle '{module}.{name}' (only numpy arrays in a dict)")
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray
        return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar,
                "ndarray": np.ndarray, "dtype": np.dtype}[name]


# numpy parses .npy headers with ast.literal_eval, and CPython 3.11's compiler is not safe to run in
# several threads at once ("SystemError: AST constructor recursion depth mismatch", seen when the import's
# read-ahead threads load .npz files together): one header parse at a time
_HEADER_PARSE = threading.Lock()


def load_npy_dict(path: Path) -> dict:
    """The dict that ``np.save(path, a_dict)`` wrote; CamFormatError for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise CamFormatError(f"{path}: .npy format version {version} not supported")
            with _HEADER_PARSE:
                shape, _, dtype = read_header(f)
            if dtype != np.dtype(object):
                raise CamFormatError(f"{path}: holds a plain {dtype} array of shape {shape}, not a pickled dict "
                                     "(np.save(path, cam_dict))")
            obj = _ArraysOnly(f).load()
    except FileNotFoundError:
        raise CamFormatError(f"{path}: file missing") from None
    except CamFormatError:
        raise
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError) as e:
        raise CamFormatError(f"{path}: not a pickled dict of arrays ({e})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise CamFormatError(f"{path}: pickled object is a {type(obj).__name__}, not a dict of arrays")
    for k, v in obj.items():
        if not isinstance(k, (str, int, np.integer)) or isinstance(k, bool):
            raise CamFormatError(f"{path}: dict key {k!r} ({type(k).__name__}) is neither a class index nor a name")
        if not isinstance(v, (np.ndarray, np.number, int, float)) or (isinstance(v, np.ndarray) and v.dtype == object):
            raise CamFormatError(f"{path}: dict entry {k!r} is a {type(v).__name__}, not a numeric array")
    return obj


def _load_npz(path: Path, names: Sequence[str]) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [n for n in names if n not in z.files]
            if missing:
                raise CamFormatError(f"{path}: no array {missing} (arrays: {z.files})")
            with _HEADER_PARSE:  # each member's header is parsed when it is read
                return [z[n] for n in names]
    except FileNotFoundError:
        raise CamFormatError(f"{path}: file missing") from None
    except CamFormatError:
        raise
    except (ValueError, OSError, EOFError) as e:  # a pickled entry (allow_pickle=False) or a damaged zip
        raise CamFormatError(f"{path}: not an .npz of numeric arrays ({e})") from None


# ------------------------------------------------------------------ reading
def read_cam_file(path: Path, fmt: str, index: ClassIndex, num_classes: int,
                  clip_es_key: str = CLIP_ES_KEY) -> tuple[np.ndarray, list[int]]:
    """(cams (C, H, W) float32, label ids) of one file; CamFormatError naming the file."""
    path = Path(path)
    if fmt == "weaktr_npy":
        d = load_npy_dict(path)
        if any(isinstance(k, str) for k in d):
            raise CamFormatError(f"{path}: dict keys {sorted(map(str, d))} are not class indices (weaktr_npy: "
                                 "{class index: (H, W) CAM}); a CLIP-ES file is format clip_es_npy")
        ext = [int(k) for k in d]
        maps = [np.asarray(v) for v in d.values()]
        if any(m.ndim != 2 for m in maps) or len({m.shape for m in maps}) > 1:
            raise CamFormatError(f"{path}: CAMs must be (H, W) arrays of one shape, got {[m.shape for m in maps]}")
        cams = np.stack(maps).astype(np.float32) if maps else np.zeros((0, 0, 0), np.float32)
    elif fmt == "clip_es_npy":
        d = load_npy_dict(path)
        if "keys" not in d or clip_es_key not in d:
            raise CamFormatError(f"{path}: a CLIP-ES dict needs 'keys' and '{clip_es_key}' (has {sorted(map(str, d))})")
        ext, cams = np.asarray(d["keys"]).reshape(-1).tolist(), np.asarray(d[clip_es_key], dtype=np.float32)
    elif fmt == "stacked_npz":
        cams, classes = _load_npz(path, ("cams", "classes"))
        labels = np.asarray(classes).reshape(-1).tolist()
        return _checked(path, cams.astype(np.float32), labels, labels, num_classes)
    elif fmt == "fma_npz":
        cams, fg = _load_npz(path, ("cam", "fg_cls"))
        ext, cams = np.asarray(fg).reshape(-1).tolist(), cams.astype(np.float32)
    else:
        raise ValueError(f"unknown CAM format '{fmt}' (one of {', '.join(FORMATS)})")
    return _checked(path, cams, ext, [index.label(k, num_classes) for k in ext], num_classes)


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
    """Write one image's CAMs (label ids ``labels``) in ``fmt``, atomically; returns the path.
    Values are written as float32 (weaktr_npy, stacked_npz, fma_npz: the store's float32 maps
    exactly) or float16 (clip_es_npy, as CLIP-ES writes it: rounded)."""
    path = Path(out_dir) / f"{image_id}{SUFFIX[fmt]}"
    ext = [index.index(int(c)) for c in labels]
    buf = io.BytesIO()
    if fmt == "weaktr_npy":
        np.save(buf, {k: np.asarray(c, np.float32) for k, c in zip(ext, cams)})
    elif fmt == "clip_es_npy":
        np.save(buf, {"keys": np.asarray(ext, np.int64), CLIP_ES_KEY: np.asarray(cams, np.float16)})
    elif fmt == "stacked_npz":
        np.savez_compressed(buf, cams=np.asarray(cams, np.float32), classes=np.asarray(labels, np.int64))
    elif fmt == "fma_npz":
        np.savez(buf, cam=np.asarray(cams, np.float32), fg_cls=np.asarray(ext, np.int64))
    else:
        raise ValueError(f"unknown CAM format '{fmt}' (one of {', '.join(FORMATS)})")
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
            from pipeline.store import sha256_file
            h.update(f"{name}\0{sha256_file(Path(e.path))}\n".encode())
        else:
            st = e.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{mode}:{len(entries)}:{h.hexdigest()}"
