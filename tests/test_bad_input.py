"""Bad input and bad settings fail early, by name: config ranges (a property test over every
field), image sizes the CAM export cannot handle, one paragraph per failure with the
traceback in the run's log file, no temporary file after a failed write (disk full), a fast
offline preflight; and the CPU user's path: `init-dataset --tiny`, `status`, `serve`."""
from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import annotated_types as at
import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from pipeline.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs/voc-smoke.yaml"

# numeric fields without a range, and why any value of their type is valid
UNCONSTRAINED = {
    "sam.iou_thresh_offsets": "per-level offsets added to SAM's IoU threshold: any sign",
    "sam.nms_offsets": "per-level offsets added to the NMS score: any sign",
}


# ----------------------------------------------------------------- config ranges
def _unwrap(ann):
    """Optional[X] -> X; Annotated[X, ...] -> (X, its metadata)."""
    meta = []
    while True:
        if typing.get_origin(ann) is typing.Union:
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return ann, meta
            ann = args[0]
        elif typing.get_origin(ann) is typing.Annotated:
            meta += [m for a in ann.__metadata__ for m in (getattr(a, "metadata", None) or [a])]
            ann = typing.get_args(ann)[0]
        else:
            return ann, meta


def _fields(model: type[BaseModel] = Config, prefix: str = ""):
    """(dotted path, annotation without Optional/Annotated, range metadata) of every leaf field."""
    for name, f in model.model_fields.items():
        if f.exclude:
            continue
        ann, meta = _unwrap(f.annotation)
        meta = list(f.metadata) + meta
        path = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, path + ".")
        elif typing.get_origin(ann) is dict:
            sub, _ = _unwrap(typing.get_args(ann)[1])
            assert not any(a in (int, float) for _, a, _ in _fields(sub)), f"{path}: numbers inside a mapping"
        else:
            yield path, ann, meta


def _numeric(ann) -> bool:
    if ann in (int, float):
        return True
    if typing.get_origin(ann) in (list, tuple):
        return any(_numeric(_unwrap(a)[0]) for a in typing.get_args(ann) if a is not Ellipsis)
    return False


def _bounded(ann, meta) -> bool:
    if any(isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le)) for m in meta):
        return True
    if typing.get_origin(ann) is list:  # list[Positive]: bounds on the items
        return any(isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le)) for m in _unwrap(typing.get_args(ann)[0])[1])
    return False


def test_every_numeric_field_has_a_range_or_a_reason():
    seen = set()
    for path, ann, meta in _fields():
        if typing.get_origin(ann) is typing.Literal or not _numeric(ann):
            continue
        seen.add(path)
        assert _bounded(ann, meta) or path in UNCONSTRAINED, f"{path}: no range and not listed in UNCONSTRAINED"
        if typing.get_origin(ann) is list:  # a list the stages iterate: empty is refused
            assert any(isinstance(m, at.MinLen) and m.min_length >= 1 for m in meta), f"{path}: may be empty"
    assert set(UNCONSTRAINED) <= seen
    assert len(seen) > 60  # every section's numbers, not a few


def _bad_values(ann, meta) -> list:
    """Values just outside each bound (and an empty list where one item is the minimum)."""
    item_ann, item_meta = (_unwrap(typing.get_args(ann)[0]) if typing.get_origin(ann) is list else (ann, []))
    out = []
    for m in (item_meta if item_meta else meta):
        kind = item_ann if item_meta else ann
        step = 1 if kind is int else 1e-3
        if isinstance(m, at.Ge):
            out.append(m.ge - step)
        elif isinstance(m, at.Gt):
            out.append(m.gt)
        elif isinstance(m, at.Le):
            out.append(m.le + step)
        elif isinstance(m, at.Lt):
            out.append(m.lt)
    if item_meta:
        out = [[v] for v in out]
    out += [[] for m in meta if isinstance(m, at.MinLen) and m.min_length == 1]
    return out


def _override(path: str, value) -> dict:
    out: dict = {}
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def test_each_out_of_range_value_is_refused_naming_its_field():
    base = load_config(SMOKE, check_paths=False)
    checked = 0
    for path, ann, meta in _fields():
        if typing.get_origin(ann) is typing.Literal or not _numeric(ann) or path in UNCONSTRAINED:
            continue
        bad = _bad_values(ann, meta)
        assert bad, f"{path}: no out-of-range value derived from {meta}"
        for value in bad:
            over = _override(path, value)
            if path.startswith("train_segmentation.crf."):  # None by default: give the section first
                over["train_segmentation"]["crf"] = {**base.pseudo_masks.crf.model_dump(), **over["train_segmentation"]["crf"]}
            with pytest.raises(ConfigError) as e:
                load_config(SMOKE, overrides=over, check_paths=False)
            assert re.search(rf"<overrides>: {re.escape(path)}(\.0)?: ", str(e.value)), (path, value, str(e.value))
            checked += 1
    assert checked > 60


def test_the_issues_bad_values_are_refused_by_name():
    for over, key in (({"export_cams": {"scales": []}}, "export_cams.scales"),
                      ({"export_cams": {"scales": [1.0, -0.5]}}, "export_cams.scales.1"),
                      ({"match": {"lr": -0.00015625}}, "match.lr"),
                      ({"train_cam": {"epochs": 0}}, "train_cam.epochs"),
                      ({"evaluate": {"sweep": []}}, "evaluate.sweep")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(SMOKE, overrides=over, check_paths=False)


def test_ranges_change_no_artifact_key():
    """Keys digest the values, not the schema: the shipped configs' resolved values (pinned in
    tests/fixtures/resolved_configs.json by test_config_defaults) are what they were, and the
    checks section, which no stage declares, is in no key."""
    from stages.runner import stage_keys
    cfg = load_config(SMOKE, check_paths=False)
    changed = load_config(SMOKE, overrides={"checks": {"min_patches": 3, "small_images": "warn",
                                                       "export_memory_gb": 1.0, "large_images": "warn"}},
                          check_paths=False)
    assert stage_keys(cfg) == stage_keys(changed)
