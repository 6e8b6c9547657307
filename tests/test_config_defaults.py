"""One source of defaults: the fields of pipeline/config.py hold the
official values; YAML files under configs/ set only what differs.

The rule, checked on every YAML file under configs/ (bases included):
1. no key restates the value it would have without it: the value its bases
   give it, else the code default (a redundant key could silently disagree
   with the code later, as bg_threshold 0.43 vs 0.45 and num_workers 8 vs 2 did);
2. configs/_base_/semples.yaml (the method's base of every config) sets no
   method value at all, only the run choices in RUN_CHOICES, which are not
   official values (so a value there can never contradict a code default).
And the resolved configs are what they were before the defaults moved
(tests/fixtures/resolved_configs.json, written from the code before the defaults moved).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import Config, DataCfg, _load_raw, _read_yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# our choice, not the official one (every epoch): the seed-mIoU curve every 5 epochs (README)
RUN_CHOICES = {"train_cam.seed_eval_every", "match.seed_eval_every", "refine.seed_eval_every"}
MISSING = object()


def code_defaults() -> dict:
    """Every section's defaults as JSON (data: the fields that have one)."""
    out = {}
    for name, field in Config.model_fields.items():
        if field.exclude:
            continue
        if name == "data":
            out[name] = {k: json.loads(json.dumps(f.default, default=str)) for k, f in DataCfg.model_fields.items()
                         if not f.is_required() and f.default_factory is None}
            out[name]["splits"] = {}
        else:
            out[name] = json.loads(field.default_factory().model_dump_json())
    return out


def leaves(d: dict, prefix: str = ""):
    """(dotted key, value) of every key a YAML mapping sets; a mapping is a leaf
    only where it replaces a non-mapping (config merging recurses into dicts)."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from leaves(v, key + ".")
        else:
            yield key, v


def lookup(d, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return MISSING
        d = d[part]
    return d


def inherited(path: Path) -> dict:
    """What a file's bases give it (merged raw YAML)."""
    from pipeline.config import _merge
    bases = _read_yaml(path).get("_base_", [])
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, _load_raw(path.parent / b, {}), {}, "")
    return merged


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_no_yaml_key_restates_what_it_would_be_anyway(path):
    defaults, base = code_defaults(), inherited(path)
    raw = _read_yaml(path)
    raw.pop("_base_", None)
    redundant = []
    for key, value in leaves(raw):
        before = lookup(base, key)
        if before is MISSING:
            before = lookup(defaults, key)
        if before is not MISSING and same(before, value):
            redundant.append(f"{key}: {value!r}")
    assert not redundant, f"{path}: keys equal to what they would be without them: {redundant}"


def test_semples_base_holds_run_choices_only():
    raw = _read_yaml(ROOT / "configs/_base_/semples.yaml")
    keys = {k for k, _ in leaves(raw)}
    assert keys <= RUN_CHOICES, f"method values belong in pipeline/config.py: {sorted(keys - RUN_CHOICES)}"


def test_checker_catches_a_restated_default(tmp_path):
    """The rule can fail: a restated code default and a restated base value."""
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"pseudo_masks": {"bg_threshold": 0.43, "method": "argmax"}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"_base_": "a.yaml", "pseudo_masks": {"method": "argmax"}}))
    with pytest.raises(AssertionError, match="bg_threshold"):
        test_no_yaml_key_restates_what_it_would_be_anyway(tmp_path / "a.yaml")
    with pytest.raises(AssertionError, match="method"):
        test_no_yaml_key_restates_what_it_would_be_anyway(tmp_path / "b.yaml")


def resolved(path: Path) -> dict:
    """The resolved config without path checks (data roots may be absent here)."""
    return Config.model_validate(_load_raw(path, {})).resolved()


PINNED = ROOT / "tests/fixtures/resolved_configs.json"


def test_resolved_configs_are_unchanged():
    """Moving values between YAML and code must not change what a config resolves to. A deliberate
    change (a new field, a corrected official value) rewrites the pin with
    `python tests/test_config_defaults.py --update`, so its diff shows in review what changed."""
    pinned = json.loads(PINNED.read_text())
    for name, want in pinned.items():
        assert resolved(ROOT / name) == want, name


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--update"]:
        names = json.loads(PINNED.read_text())
        PINNED.write_text(json.dumps({n: resolved(ROOT / n) for n in names}, indent=1, sort_keys=True) + "\n")
        print(f"wrote {PINNED}")
