"""``clip_es_npy``: ``<id>.npy`` holding a dict {"keys": (C,) foreground class indices,
"attn_highres": (C, H, W) float16} (CLIP-ES generate_cams_voc12.py / generate_cams_coco14.py);
other entries are ignored, import_cams.clip_es_key names another entry holding the CAMs.
Written as float16, as CLIP-ES writes it (rounded)."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from pipeline.cams.formats._numpy import load_npy_dict
from pipeline.registry import CamFormat, CamFormatError
from pipeline.section import Section

CLIP_ES_KEY = "attn_highres"  # CLIP-ES eval_cam.py --cam_type default


class ClipEsOptions(Section):
    clip_es_key: str = Field(CLIP_ES_KEY, description="clip_es_npy: the dict entry holding the CAMs "
                             "(CLIP-ES eval_cam.py --cam_type)")


def read(path, clip_es_key: str = CLIP_ES_KEY):
    d = load_npy_dict(path)
    if "keys" not in d or clip_es_key not in d:
        raise CamFormatError(f"{path}: a CLIP-ES dict needs 'keys' and '{clip_es_key}' (has {sorted(map(str, d))})")
    return d[clip_es_key], d["keys"]


def write(f, cams, keys):
    np.save(f, {"keys": np.asarray(keys, np.int64), CLIP_ES_KEY: np.asarray(cams, np.float16)})


FORMAT = CamFormat("clip_es_npy", ".npy", read, write, "{keys, attn_highres} (CLIP-ES)", options=ClipEsOptions)
