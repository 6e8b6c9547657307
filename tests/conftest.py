"""Shared fixtures: the smoke config pointed at a per-test run store, on the
vendored tiny data (data/voc-tiny, data/coco-tiny)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    # configs name data paths relative to the project root
    monkeypatch.chdir(ROOT)


@pytest.fixture
def smoke_cfg(tmp_path):
    from pipeline.config import load_config
    return load_config(ROOT / "configs/voc-smoke.yaml", overrides={"run": {"work_dir": str(tmp_path / "runs")}})


@pytest.fixture
def prepared(smoke_cfg):
    """Directory of a finished prepare_data artifact for the smoke config."""
    from stages.runner import run_stage
    return run_stage(smoke_cfg, "prepare_data")


@pytest.fixture(scope="session")
def folder_flow_run(tmp_path_factory):
    """configs/folder-smoke.yaml (no GT masks) run cold through `wsss run`: the embedded
    Prefect flow, its database in a private PREFECT_HOME that later client calls reuse.
    Shared by test_folder_dataset (stage outputs, artifacts) and test_flow (compare with VOC)."""
    import sys

    from pipeline.config import load_config
    from pipeline.store import Store
    from stages import ORDER
    from stages.runner import stage_keys
    from flow_helpers import _env, _run
    tmp = tmp_path_factory.mktemp("folder-flow")
    cfg_path = tmp / "folder-smoke.yaml"
    cfg_path.write_text(f"_base_: {ROOT / 'configs/folder-smoke.yaml'}\nrun: {{work_dir: {tmp / 'runs'}}}\n")
    env = _env(tmp)
    res = _run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg_path)], env, 1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    cfg = load_config(cfg_path)
    store, keys = Store(cfg.run.work_dir), stage_keys(cfg)
    return {"cfg": cfg, "cfg_path": cfg_path, "env": env, "tmp": tmp, "output": res.stdout + res.stderr,
            "dirs": {n: store.path(keys[n]) for n in ORDER}}
