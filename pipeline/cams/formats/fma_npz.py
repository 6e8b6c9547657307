"""``fma_npz``: ``<id>.npz`` with arrays ``cam`` (C, H, W) and ``fg_cls`` (C,) foreground class
indices, what FMA-WSSS's anns_seed/run.py reads without a custom loader. Written as float32."""
from __future__ import annotations

import numpy as np

from pipeline.cams.formats._numpy import load_npz
from pipeline.registry import CamFormat


def read(path):
    return load_npz(path, ("cam", "fg_cls"))


def write(f, cams, keys):
    np.savez(f, cam=np.asarray(cams, np.float32), fg_cls=np.asarray(keys, np.int64))


FORMAT = CamFormat("fma_npz", ".npz", read, write, "cam + fg_cls (FMA-WSSS)")
