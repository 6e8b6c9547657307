"""Every float field of the config refuses inf and NaN (#35): a property test over all of them,
found by walking Config's fields (nested sections, Optional, list[float] and tuple entries),
each set to .inf and .nan in a YAML file; the error names that file and the dotted key."""
import copy
import types
from pathlib import Path
from typing import Annotated, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from pipeline.config import Config, ConfigError, load_config

SMOKE = Path(__file__).resolve().parent.parent / "configs" / "voc-smoke.yaml"


def float_keys(model: type[BaseModel], prefix: tuple = ()) -> list[tuple]:
    """The path of every float of a model: field names, and list / tuple positions (0 for a list)."""
    return [key for name, field in model.model_fields.items()
            for key in _float_keys(field.annotation, prefix + (name,))]


def _float_keys(tp, path: tuple) -> list[tuple]:
    origin, args = get_origin(tp), get_args(tp)
    if tp is float:
        return [path]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return float_keys(tp, path)
    if origin is Annotated:
        return _float_keys(args[0], path)
    if origin in (Union, types.UnionType):
        return [k for a in args for k in _float_keys(a, path)]
    if origin is list:
        return _float_keys(args[0], path + (0,))
    if origin is tuple:
        return [k for i, a in enumerate(args) for k in _float_keys(a, path + (i,))]
    return []


FLOAT_KEYS = float_keys(Config)
SMOKE_VALUES = load_config(SMOKE, check_paths=False).model_dump(mode="json")


def override(key: tuple, value: float) -> dict:
    """The smallest override setting ``key`` to ``value``: nested sections down to the field
    (a whole list / tuple, as the smoke config has it, with one entry replaced)."""
    out: dict = {}
    node, have = out, SMOKE_VALUES
    for i, part in enumerate(key):
        rest = key[i + 1:]
        if rest and isinstance(rest[0], int):  # part is a list / tuple field
            seq = copy.deepcopy((have or {}).get(part)) or [0.0]
            seq[rest[0]] = value
            node[part] = seq
            return out
        if not rest:
            node[part] = value
            return out
        node = node.setdefault(part, {})
        have = (have or {}).get(part)
    return out


def test_the_walk_finds_the_known_float_fields():
    dotted = {".".join(map(str, k)) for k in FLOAT_KEYS}
    assert {"match.lr", "run.lock_lease_s", "export_cams.scales.0", "sam.iou_thresh_offsets.2",
            "train_segmentation.crf.gt_prob", "pseudo_masks.low_threshold", "evaluate.sweep.0"} <= dotted


@pytest.mark.parametrize("value, written", [(float("inf"), ".inf"), (float("nan"), ".nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("key", FLOAT_KEYS, ids=lambda k: ".".join(map(str, k)))
def test_every_float_field_refuses_a_non_finite_value(key, value, written, tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_base_": str(SMOKE), **override(key, value)}))
    assert written in child.read_text()
    with pytest.raises(ConfigError) as e:
        load_config(child, check_paths=False)
    assert f"{child}: {'.'.join(map(str, key))}: Input should be a finite number" in str(e.value)
