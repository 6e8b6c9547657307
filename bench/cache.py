"""Wall time of a cold smoke flow, of an unchanged rerun, and their ratio
(target: rerun <= 15% of cold). Runs `wsss run` as a user would, in a fresh
run store, two ways:
  embedded: no PREFECT_API_URL, each run starts Prefect's temporary server
            (its ~9 s start-up is part of both figures);
  server:   against a local server started beforehand (scripts/prefect-server.sh,
            as `make server-start` does; its start-up is not counted).

    python bench/cache.py [--config configs/voc-smoke.yaml] [--only embedded|server]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(cfg: Path, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg)], cwd=ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs/voc-smoke.yaml"))
    ap.add_argument("--only", choices=["embedded", "server"])
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    for route in [args.only] if args.only else ["embedded", "server"]:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "bench.yaml"
            cfg.write_text(f"_base_: {Path(args.config).resolve()}\nrun: {{work_dir: {tmp}/runs}}\n")
            env = dict(os.environ, PREFECT_HOME=f"{tmp}/prefect", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                       PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
            env.pop("PREFECT_API_URL", None)
            if route == "server":
                port = "4317"
                env.update(WSSS_WORK_DIR=tmp, PREFECT_PORT=port, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
                subprocess.run([str(ROOT / "scripts/prefect-server.sh"), "start"], cwd=ROOT, env=env, check=True,
                               stdout=subprocess.DEVNULL)
            try:
                cold = timed_run(cfg, env)
                warm = timed_run(cfg, env)
            finally:
                if route == "server":
                    subprocess.run([str(ROOT / "scripts/prefect-server.sh"), "stop"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL)
        print(f"[{route}] cold smoke flow: {cold:7.1f} s   unchanged rerun: {warm:6.1f} s   "
              f"rerun / cold: {warm / cold * 100:5.1f} %  (target <= 15 %)")


if __name__ == "__main__":
    main()
