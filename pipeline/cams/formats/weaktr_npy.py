"""``weaktr_npy``: ``<id>.npy`` holding ``np.save(path, cam_dict)`` of a dict {class index: (H, W)
float array}, one entry per present foreground class (WeakTr / SemPLeS engine*.py, MCTformer
engine.py ``generate_attention_maps_ms``; index 0 = first foreground class). Written as float32."""
from __future__ import annotations

import numpy as np

from pipeline.cams.formats._numpy import load_npy_dict
from pipeline.registry import CamFormat, CamFormatError


def read(path):
    d = load_npy_dict(path)
    if any(isinstance(k, str) for k in d):
        raise CamFormatError(f"{path}: dict keys {sorted(map(str, d))} are not class indices (weaktr_npy: "
                             "{class index: (H, W) CAM}); a CLIP-ES file is format clip_es_npy")
    maps = [np.asarray(v) for v in d.values()]
    if any(m.ndim != 2 for m in maps) or len({m.shape for m in maps}) > 1:
        raise CamFormatError(f"{path}: CAMs must be (H, W) arrays of one shape, got {[m.shape for m in maps]}")
    return (np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32)), [int(k) for k in d]


def write(f, cams, keys):
    np.save(f, {k: np.asarray(c, np.float32) for k, c in zip(keys, cams)})


FORMAT = CamFormat("weaktr_npy", ".npy", read, write,
                   "np.save of {class index: (H, W)} (WeakTr/SemPLeS/MCTformer)")
