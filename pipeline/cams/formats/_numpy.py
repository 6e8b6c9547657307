"""Safe reading of the numpy files other code bases write: dicts pickled into .npy files
(``np.save(path, a_dict)``) and .npz archives of plain arrays.

The dict files are pickles. They are unpickled by a restricted unpickler that builds numpy
arrays, dtypes and scalars only, and the result must be a plain dict of arrays (or numbers):
any other pickled object is refused before it is built, so a file cannot run code. Every
problem is a CamFormatError naming the file."""
from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.registry import CamFormatError

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


def load_npz(path: Path, names: Sequence[str]) -> list[np.ndarray]:
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
