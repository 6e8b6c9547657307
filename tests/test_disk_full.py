"""A full disk (#35): the run ends with one short paragraph naming ENOSPC, the file and
run.work_dir, wherever the write failed (the log file, a lock, a CAM writer thread); the run's
log file stops with one warning line instead of logging's error report per record (under
Prefect those nested until a RecursionError hid the run's own error)."""
from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _raise_enospc(*a, **k):
    raise ENOSPC


def test_a_log_file_on_a_full_disk_stops_with_one_line(tmp_path, capsys, monkeypatch):
    from pipeline.utils import RunLogFile
    monkeypatch.setattr(logging, "raiseExceptions", True)  # logging's default: report every failed record
    handler = RunLogFile(tmp_path / "run.log")
    handler.stream.write = _raise_enospc
    log = logging.getLogger("wsss.test_disk_full")
    log.addHandler(handler)
    try:
        for i in range(50):
            log.warning("record %d", i)
    finally:
        log.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err
    assert err.count("warning: stopped writing the log file") == 1, err
    assert f"{tmp_path / 'run.log'}: ENOSPC (No space left on device)" in err
    assert handler.failed.errno == errno.ENOSPC


def test_a_cam_writer_thread_on_a_full_disk_names_the_array_and_work_dir(tmp_path, monkeypatch):
    """zarr writes on its own event-loop thread, under a CamWriter thread, naming no file."""
    import zarr.storage._local as local

    from pipeline.cams.store import CamStore, CamWriter
    from pipeline.utils import stage_error
    store = CamStore(tmp_path / "cams_train.zarr", mode="a")
    monkeypatch.setattr(local, "_put", _raise_enospc)
    with pytest.raises(OSError) as e, CamWriter(store, threads=2) as writer:
        writer.submit("img1", np.zeros((1, 4, 4), np.float32), [3], (4, 4))
    wrapped = RuntimeError("export failed")
    wrapped.__cause__ = e.value
    msg = str(stage_error("export_cams", wrapped, ("export_cams",)))
    assert f"[Errno 28] No space left on device while writing: '{tmp_path / 'cams_train.zarr/img1'}'" in msg
    assert "ENOSPC" in msg and "run.work_dir" in msg and " on image" not in msg, msg


def _fill(disk: Path) -> None:
    fd = os.open(disk / "filler", os.O_CREAT | os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize)
    finally:
        os.close(fd)


@pytest.mark.slow
@pytest.mark.parametrize("prefect", [False, True], ids=["no-prefect", "prefect"])
def test_a_run_on_a_full_disk_ends_with_one_paragraph(tmp_path, prefect):
    """A real full disk (a tmpfs run store, logs included; needs root): export_cams cannot
    write, nor can the log file. A few lines: the warning, one error naming ENOSPC, the file
    and run.work_dir; no logging error report, no RecursionError."""
    from cam_fixtures import ready_to_export
    from test_bad_input import _wsss, tmpfs
    with tmpfs(tmp_path / "disk", "40m") as disk:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\nrun: {{work_dir: {disk / 'runs'}, device: cpu}}\n"
                       "data: {max_images: 8}\nexport_cams: {source: train_cam}\n")
        ready_to_export(load_config(cfg))
        _fill(disk)
        res = _wsss(tmp_path, "run", "--config", cfg, "--until", "export_cams", *([] if prefect else ["--no-prefect"]))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-4000:]
    assert len(out.splitlines()) < 40, out[-4000:]
    assert "Logging error" not in out and "RecursionError" not in out and "Traceback" not in out, out[-4000:]
    assert out.count("warning: stopped writing the log file") == 1, out
    error = re.search(r"^error: .*", res.stderr, re.M).group(0)
    assert res.stderr.count(error) == 1
    for name in ("stage 'export_cams' failed", "No space left on device while writing", "ENOSPC",
                 "run.work_dir", f"'{disk / 'runs'}/"):
        assert name in error, (name, error)
