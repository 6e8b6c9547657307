"""Helpers of the end-to-end flow tests (test_flow.py, test_folder_dataset.py and the
session fixture in conftest.py): the environment of a private Prefect home, and a
subprocess run whose output goes through files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp: Path, **extra) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONUNBUFFERED="1", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    env.pop("PREFECT_API_URL", None)
    # the `prefect` CLI and scripts/ need this interpreter's bin dir, activated or not
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def _run(cmd: list, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """subprocess.run with output in files, not pipes: a Prefect temporary server
    that outlives its flow process would otherwise hold the pipes (and us) open."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, timeout=timeout).returncode
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, rc, out.read(), err.read())
