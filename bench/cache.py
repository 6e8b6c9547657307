"""Wall time of a cold smoke flow, of an unchanged rerun, and their ratio
(target: rerun <= 15% of cold). Runs `wsss run` as a user would, in a fresh
run store; both runs use the embedded Prefect server (its start-up is part of
each figure).

    python bench/cache.py [--config configs/voc-smoke.yaml]
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(f"_base_: {Path(args.config).resolve()}\nrun: {{work_dir: {tmp}/runs}}\n")
        env = dict(os.environ, PREFECT_HOME=f"{tmp}/prefect", PREFECT_SERVER_ANALYTICS_ENABLED="false")
        cold = timed_run(cfg, env)
        warm = timed_run(cfg, env)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"cold smoke flow:      {cold:8.1f} s")
    print(f"unchanged rerun:      {warm:8.1f} s")
    print(f"rerun / cold:         {warm / cold * 100:8.1f} %  (target <= 15 %)")


if __name__ == "__main__":
    main()
