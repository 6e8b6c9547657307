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
    from stages.runner import select, stage_keys
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
            "dirs": {n: store.path(keys[n]) for n in select(cfg=cfg)}}  # the stages this config runs


@pytest.fixture(scope="session")
def sam_smoke_run(tmp_path_factory):
    """configs/voc-sam-smoke.yaml (4 images, SAM and CRF routes) up to pseudo_masks through
    `wsss run --no-prefect` (the flow's own start-up would double its time; tests that rerun
    a copy go through the flow), on a private copy of data/voc-tiny, with a random mask
    generator faked as the train_cam artifact (no training). Tests copy its store and damage
    the copy: the per-image stages sam_masks, export_cams and pseudo_masks are finished here."""
    import shutil
    import sys

    from cam_fixtures import ready_to_export
    from pipeline.config import load_config
    from pipeline.store import Store
    from test_flow import _env, _run
    tmp = tmp_path_factory.mktemp("sam-smoke")
    shutil.copytree(ROOT / "data/voc-tiny", tmp / "voc")
    cfg_path = tmp / "sam.yaml"
    # export_cams.batch_size 1: each image's CAMs come from its own forward, so a partial
    # recompute reproduces them exactly (batching may change the fp summation order)
    cfg_path.write_text(f"_base_: {ROOT / 'configs/voc-sam-smoke.yaml'}\n"
                        f"run: {{work_dir: {tmp / 'runs'}, device: cpu, processes: 1}}\n"
                        f"data: {{root: {tmp / 'voc'}}}\n"
                        "export_cams: {source: train_cam, gallery_size: 1, batch_size: 1}\n"
                        "pseudo_masks: {gallery_size: 1}\nsam: {gallery_size: 1}\n")
    cfg = load_config(cfg_path)
    keys, store = ready_to_export(cfg), Store(cfg.run.work_dir)
    env = _env(tmp)
    res = _run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg_path), "--until", "pseudo_masks",
                "--no-prefect"], env, 900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return {"cfg": cfg, "cfg_path": cfg_path, "env": env, "tmp": tmp, "keys": keys,
            "dirs": {n: store.path(k) for n, k in keys.items()}}
