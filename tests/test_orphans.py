"""kill -9 of the flow process (#35): every process the run started (Prefect's temporary API
server, the forkserver and the pseudo_masks pool workers, torchrun and its ranks) ends with it,
and no worker writes into the run's store afterwards (they wrote PNGs on before)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and pidfd: Linux")


def _marked(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``mark`` (zombies are dead: only unreaped)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("WSSS_TEST_RUN") == mark:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def _kill(procs: list) -> None:
    for p in procs:
        try:
            p.kill()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass


def _wait(what, timeout: float, step: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        got = what()
        if got:
            return got
        time.sleep(step)
    return what()


def test_killing_the_flow_process_ends_every_process_of_the_run(tmp_path):
    from cam_fixtures import finish, gt_store, ready_to_export
    from flow_helpers import _env
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\n"
                        f"run: {{work_dir: {tmp_path / 'runs'}, device: cpu, processes: 2}}\n"
                        "export_cams: {source: train_cam}\n")
    cfg = load_config(cfg_path)
    keys = ready_to_export(cfg)  # and the ground truth as CAMs: the flow starts at pseudo_masks' pool
    finish(cfg, keys, "export_cams", lambda d: gt_store(tmp_path / "runs" / keys["prepare_data"], "train", d))
    mark = uuid.uuid4().hex
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        flow = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg_path),
                                 "--until", "pseudo_masks"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=_env(tmp_path, WSSS_TEST_RUN=mark), start_new_session=True)
    try:
        def workers():  # the forkserver and its pool workers, with the server: 4 or more processes
            procs = _marked(mark)
            return len(procs) >= 5 and sum("forkserver" in " ".join(p.cmdline()) for p in procs) >= 3
        assert _wait(workers, 120), log.read_text()[-3000:]
        assert flow.poll() is None, log.read_text()[-3000:]
        names = {p.pid: " ".join(p.cmdline())[:120] for p in _marked(mark)}
        assert any("uvicorn" in c for c in names.values()), names  # Prefect's temporary server
        flow.send_signal(signal.SIGKILL)
        killed = time.time()
        flow.wait()
        gone = _wait(lambda: not _marked(mark), 10)
        assert gone, f"still running 10 s after the kill: {[names.get(p.pid, p.pid) for p in _marked(mark)]}"
        before = _files(tmp_path / "runs")
        time.sleep(2)
        assert _files(tmp_path / "runs") == before
        late = [f for f, (mtime, _) in before.items() if mtime / 1e9 > killed + 0.5]
        assert not late, late  # nothing written once the run was dead
    finally:
        _kill([flow, *_marked(mark)])


def test_torchrun_and_its_ranks_end_with_the_process_that_started_them(tmp_path):
    """pipeline.distributed.torchrun from a process killed with -9: torchrun gets the parent-death
    signal, and each rank, watching torchrun as the stage ranks do (stages/launch.py), ends too."""
    (tmp_path / "sleeping_rank.py").write_text(
        "import os, sys, time\nfrom pipeline.lifetime import exit_with\nexit_with(os.getppid())\n"
        "open(sys.argv[1] + os.environ['RANK'], 'w').write('up')\ntime.sleep(300)\n")
    mark = uuid.uuid4().hex
    start = ("import sys\nfrom pipeline.distributed import torchrun\n"
             "torchrun('sleeping_rank', [sys.argv[1]], 2, 'two sleeping ranks')")
    parent = subprocess.Popen([sys.executable, "-c", start, str(tmp_path / "rank")], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(tmp_path), WSSS_TEST_RUN=mark),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert _wait(lambda: all((tmp_path / f"rank{r}").exists() for r in (0, 1)), 120)
        assert len(_marked(mark)) >= 4  # this process, torchrun, two ranks
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait(lambda: not _marked(mark), 10), [" ".join(p.cmdline())[:120] for p in _marked(mark)]
    finally:
        _kill([parent, *_marked(mark)])
