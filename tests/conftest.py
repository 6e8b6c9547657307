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
