"""The artifact key of every stage of the shipped run configs, pinned.

A key names a stage's cached result: moving code around must not change one
(the cache of every earlier run would silently be recomputed, or worse, a
changed computation would keep an old key). A key that has to change comes
with a stage VERSION bump and a reason, and this pin is regenerated:

    .venv/bin/python tests/test_stage_keys_pin.py --update

Keys are computed from the configs alone (stages.runner.stage_keys): no data
is read, so the full configs pin too where their data roots do not exist.
The work dir is fixed so the pin does not depend on where the tests run (it
is part of no key: the test checks that as well)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = ROOT / "tests/fixtures/stage_keys.json"
CONFIGS = ("voc-smoke", "voc-sam-smoke", "folder-smoke", "voc-full", "coco-full")


def keys_of(name: str, work_dir: str = "runs/pin") -> dict[str, str]:
    from pipeline.config import load_config
    from stages.runner import stage_keys
    cfg = load_config(ROOT / f"configs/{name}.yaml", overrides={"run": {"work_dir": work_dir}}, check_paths=False)
    return stage_keys(cfg)


@pytest.fixture(autouse=True)
def _root_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # data roots and a folder dataset's label files are relative to it


@pytest.mark.parametrize("name", CONFIGS)
def test_stage_keys_unchanged(name):
    pinned = json.loads(PIN.read_text())[name]
    assert keys_of(name) == pinned


def test_work_dir_is_in_no_key():
    assert keys_of("voc-smoke", "elsewhere/runs") == keys_of("voc-smoke")


if __name__ == "__main__" and "--update" in sys.argv:
    import os
    os.chdir(ROOT)
    PIN.write_text(json.dumps({n: keys_of(n) for n in CONFIGS}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PIN}")
