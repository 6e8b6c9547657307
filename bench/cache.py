"""Wall time of a cold smoke flow, of an unchanged rerun, and their ratio
(target: rerun <= 15% of cold), and where the rerun's time goes. Runs `wsss run` as a user
would, in a fresh run store (or --work-dir), two ways:
  embedded: no PREFECT_API_URL, each run starts Prefect's temporary server
            (its start-up is part of both figures);
  server:   against a local server started beforehand (scripts/prefect-server.sh,
            as `make server-start` does; its start-up is not counted).
The rerun runs in a child that times its own parts: interpreter start and exit, imports,
the start and stop (at exit) of Prefect's temporary server, the flow engine, the stage checks
(artifact keys and Store.state, with the number of Store.state calls) and the rest of the CLI;
also its CPU time and which model libraries it imported (none: a cached run loads no model).
Target (#38): a cached rerun <= 5 s beyond the server's start (and stop).

    python bench/cache.py [--config configs/voc-smoke.yaml] [--only embedded|server] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = ("torch", "mmseg", "mmengine", "open_clip", "timm", "segment_anything")
PARTS = ("interpreter start + exit", "imports", "server start", "server stop", "flow engine", "stage checks",
         "rest of the CLI")


def timed_run(cfg: Path, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg)], cwd=ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def split_run(cfg: Path, env: dict, tmp: str) -> dict:
    """One `wsss run` in a child (``child``) that writes the seconds of its parts to a file."""
    parts_file = Path(tmp) / "parts.json"
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", str(cfg), str(parts_file)], cwd=ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    parts = json.loads(parts_file.read_text())
    parts["interpreter start + exit"] = wall - parts.pop("child") - parts.get("server stop", 0)
    return {"wall": wall, **parts}


def child(cfg: str, parts_file: str) -> None:
    t0 = time.perf_counter()
    spent: dict[str, float] = defaultdict(float)
    states, found = Counter(), {}
    # registered before the temporary server's stop, so it runs after it (last in, first out)
    atexit.register(lambda: Path(parts_file).write_text(json.dumps({**spent, **found})))

    def timed(owner, name: str, part: str, count=None) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if count:
                count(*args)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - t
        setattr(owner, name, wrapper)

    sys.path.insert(0, str(ROOT))
    import flows.cli
    import flows.dag  # Prefect
    import stages.plan
    import stages.runner  # noqa: F401 - what the CLI imports before the flow starts
    from pipeline.store import Store
    spent["imports"] = time.perf_counter() - t0
    if not os.environ.get("PREFECT_API_URL"):  # embedded: the temporary server's code loads as it starts
        t = time.perf_counter()
        from prefect.server.api.server import SubprocessASGIServer
        spent["server start"] = time.perf_counter() - t
        timed(SubprocessASGIServer, "start", "server start")
        timed(SubprocessASGIServer, "stop", "server stop")  # at exit
    timed(Store, "state", "stage checks", count=lambda store, key: states.update([key]))
    timed(stages.plan, "stage_keys", "stage checks")
    flow = flows.dag.wsss_flow

    def run_flow(*args, **kwargs):
        before = spent["server start"] + spent["stage checks"]
        t = time.perf_counter()
        try:
            return flow(*args, **kwargs)
        finally:
            spent["flow engine"] += time.perf_counter() - t - (spent["server start"] + spent["stage checks"] - before)
    flows.dag.wsss_flow = run_flow
    flows.cli.app(["run", "--config", cfg], standalone_mode=False)
    child_s = time.perf_counter() - t0
    spent["rest of the CLI"] = child_s - sum(spent.values())
    found.update(child=child_s, state_calls=sum(states.values()), state_keys=len(states),
                 cpu_s=time.process_time(), models=[m for m in MODEL_LIBRARIES if m in sys.modules])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs/voc-smoke.yaml"))
    ap.add_argument("--only", choices=["embedded", "server"])
    ap.add_argument("--work-dir", help="run store to use (default: a fresh temporary one; a filled one makes "
                                       "the first run a rerun too)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    for route in [args.only] if args.only else ["embedded", "server"]:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "bench.yaml"
            work_dir = args.work_dir or f"{tmp}/runs"
            cfg.write_text(f"_base_: {Path(args.config).resolve()}\nrun: {{work_dir: {work_dir}}}\n")
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
                warm = split_run(cfg, env, tmp)
            finally:
                if route == "server":
                    subprocess.run([str(ROOT / "scripts/prefect-server.sh"), "stop"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL)
        own = warm["wall"] - warm["server start"] - warm.get("server stop", 0)
        print(f"[{route}] cold smoke flow: {cold:7.1f} s   unchanged rerun: {warm['wall']:6.1f} s   "
              f"rerun / cold: {warm['wall'] / cold * 100:5.1f} %  (target <= 15 %)")
        print(f"[{route}] rerun: " + ", ".join(f"{p} {warm.get(p, 0):.2f} s" for p in PARTS)
              + f"; Store.state {warm['state_calls']} calls for {warm['state_keys']} artifacts; CPU time "
              f"{warm['cpu_s']:.1f} s (the CLI's process); model libraries imported: {warm['models'] or 'none'}")
        print(f"[{route}] rerun beyond the server start and stop: {own:.1f} s  (target <= 5 s)")


if __name__ == "__main__":
    main()
