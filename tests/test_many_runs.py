"""Quick parts of many runs at once: artifact locks between real processes, unique temp
files, the VOC ablation configs' shared keys, compare's error path, compose.
The end-to-end parts (two `wsss run` at once, takeover mid-stage, Prefect
artifacts, `wsss compare` on a real run) are in tests/test_flow.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import load_config
from pipeline.fileio import unique_tmp
from pipeline.lock import ArtifactLock, LockLost
from pipeline.store import Store
from stages.runner import stage_inputs, stage_keys

ROOT = Path(__file__).resolve().parents[1]

# A holder process: takes the lock, says so, then sleeps (or is killed / stopped by the test).
HOLDER = """
import sys, time
from pipeline.lock import ArtifactLock
from pipeline.store import Store
lock = ArtifactLock(Store(sys.argv[1]), "train_cam-test", lease_s=float(sys.argv[2]), poll_s=0.2)
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[3]))
try:
    lock.check()
    print("finished", flush=True)
except Exception as e:
    print(type(e).__name__, flush=True)
"""


def _holder(tmp_path: Path, lease_s: float, sleep_s: float) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"holder-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), str(lease_s), str(sleep_s)],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=open(out, "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while "held" not in out.read_text():
        assert proc.poll() is None and time.time() < deadline, out.read_text()
        time.sleep(0.1)
    return proc, out


def test_lock_of_a_killed_holder_is_taken_at_once(tmp_path):
    proc, _ = _holder(tmp_path, lease_s=300, sleep_s=300)
    messages = []
    waiter = ArtifactLock(Store(tmp_path), "train_cam-test", lease_s=300, poll_s=0.2)
    t = threading.Thread(target=waiter.acquire, kwargs={"log": messages.append, "report_every_s": 1})
    t.start()
    time.sleep(1.5)
    assert t.is_alive(), "acquired a lock another live process holds"
    assert any(f"held by {os.uname().nodename}:{proc.pid} since " in m for m in messages), messages
    proc.kill()  # SIGKILL: same host, dead pid -> taken over without waiting for the 300 s lease
    proc.wait()
    t.join(30)
    assert not t.is_alive() and waiter.waited
    waiter.check()
    waiter.release()
    assert not waiter.path.exists()


def test_lease_of_a_hung_holder_expires_and_the_holder_may_not_finish(tmp_path):
    """SIGSTOP stands in for a lost machine: the lock file stays, its heartbeat stops."""
    proc, out = _holder(tmp_path, lease_s=2, sleep_s=6)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        waiter = ArtifactLock(Store(tmp_path), "train_cam-test", lease_s=2, poll_s=0.2)
        t0 = time.monotonic()
        waiter.acquire()
        assert waiter.waited and time.monotonic() - t0 >= 2  # not before the lease expired
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(30)
        assert "LockLost" in out.read_text()  # the old holder learnt it lost the artifact
        waiter.check()
        waiter.release()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    lost = ArtifactLock(Store(tmp_path), "x")
    lost.lost = "owner-changed"
    with pytest.raises(LockLost, match="lost its lease on x"):
        lost.check()


def test_temp_files_are_unique_per_thread_and_process(tmp_path):
    names = []
    t = threading.Thread(target=lambda: names.append(unique_tmp(tmp_path / "checkpoint.pt")))
    t.start()
    t.join()
    names.append(unique_tmp(tmp_path / "checkpoint.pt"))
    assert names[0] != names[1] and all(str(os.getpid()) in n.name and n.name.startswith(".") for n in names)


def test_voc_ablations_share_upstream_artifacts():
    over = {"data": {"root": str(ROOT / "data/voc-tiny")}}
    cfgs = {n: load_config(ROOT / f"configs/ablations/voc-{n}.yaml", overrides=over)
            for n in ("warm-start", "match-only", "semples")}
    assert {n: c.export_cams.source for n, c in cfgs.items()} == {
        "warm-start": "train_cam", "match-only": "match", "semples": "refine"}
    keys = {n: stage_keys(c) for n, c in cfgs.items()}
    full = stage_keys(load_config(ROOT / "configs/voc-full.yaml", overrides=over))
    assert keys["semples"] == full  # the full SemPLeS ablation reuses a voc-full run as is
    for stage in ("prepare_data", "train_cam", "match", "learn_prompts", "refine"):
        assert len({k[stage] for k in keys.values()}) == 1, stage
    assert len({k["export_cams"] for k in keys.values()}) == 3
    assert stage_inputs(cfgs["warm-start"], "export_cams") == ("prepare_data", "train_cam")
    assert len({cfg.run.work_dir for cfg in cfgs.values()}) == 1  # one store


def test_caa_and_ensemble_ablations_share_what_they_can_with_voc_full():
    over = {"data": {"root": str(ROOT / "data/voc-tiny")}}
    full = load_config(ROOT / "configs/voc-full.yaml", overrides=over)
    caa = load_config(ROOT / "configs/ablations/voc-caa.yaml", overrides=over)
    ens = load_config(ROOT / "configs/ablations/voc-ensemble.yaml", overrides=over)
    assert caa.export_cams.caa.enabled and not full.export_cams.caa.enabled
    assert ens.ensemble.routes == ["crf"] and ens.pseudo_masks.extra_methods == ["crf"]
    kf, kc, ke = stage_keys(full), stage_keys(caa), stage_keys(ens)
    for stage in ("prepare_data", "sam_masks", "train_cam", "match", "learn_prompts", "refine"):
        assert kf[stage] == kc[stage] == ke[stage], stage
    for stage in ("export_cams", "pseudo_masks", "train_segmentation", "evaluate"):
        assert kf[stage] != kc[stage], stage  # raw vs CAA CAMs: every route and the final model follow
    for stage in ("export_cams", "pseudo_masks", "train_segmentation"):
        assert kf[stage] == ke[stage], stage  # the ensemble reuses voc-full's final model
    assert stage_inputs(ens, "evaluate")[-1] == "ensemble" and "ensemble" not in stage_inputs(full, "evaluate")


def test_compare_fails_clearly_without_an_evaluate_artifact(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\nrun: {{work_dir: {tmp_path / 'runs'}}}\n")
    res = CliRunner().invoke(app, ["compare", str(cfg), "--png", str(tmp_path / "c.png")])
    assert res.exit_code == 1 and "no evaluate artifact" in res.output and "wsss run --config" in res.output
    (tmp_path / "runs").mkdir()
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "runs")])
    assert res.exit_code == 1 and "no evaluate artifact" in res.output
    assert not (tmp_path / "c.png").exists()


def test_compose_runs_prefect_on_postgres():
    doc = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    server = doc["services"]["prefect-server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "postgres" in server["depends_on"] and doc["services"]["postgres"]["image"].startswith("postgres:")
