"""``stacked_npz``: ``<id>.npz`` with arrays ``cams`` (C, H, W) and ``classes`` (C,) dataset label
ids (1 = first foreground class): the neutral format, no pickle. Written as float32, compressed."""
from __future__ import annotations

import numpy as np

from pipeline.cams.formats._numpy import load_npz
from pipeline.registry import CamFormat


def read(path):
    return load_npz(path, ("cams", "classes"))


def write(f, cams, keys):
    np.savez_compressed(f, cams=np.asarray(cams, np.float32), classes=np.asarray(keys, np.int64))


FORMAT = CamFormat("stacked_npz", ".npz", read, write, "cams (C, H, W) + classes (label ids)", keys="label")
