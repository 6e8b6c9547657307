"""Runs stages against the artifact store, without Prefect. The flow in
flows/ calls the same functions inside tasks, so both routes share keys."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.config import Config
from pipeline.store import Store, artifact_key, sha256_file
from stages import ORDER, get

log = logging.getLogger("wsss")


def stage_sections(cfg: Config, name: str) -> dict:
    """The config a stage's result depends on: whole sections, or dotted
    fields such as 'run.seed' (so work_dir/device never change a key)."""
    out = {}
    mod = get(name)
    for s in mod.SECTIONS:
        sec, _, field = s.partition(".")
        out[s] = cfg.section(sec)[field] if field else cfg.section(sec)
    files = mod.input_files(cfg) if hasattr(mod, "input_files") else {}
    if files:  # small files the config names (a folder dataset's labels/classes): their content counts
        out["files"] = {str(f): sha256_file(f) if f.is_file() else None for f in files}
    return out


def stage_keys(cfg: Config) -> dict[str, str]:
    """Artifact key of every stage, upstream first (keys chain through inputs)."""
    keys: dict[str, str] = {}
    for name in ORDER:
        mod = get(name)
        keys[name] = artifact_key(name, mod.VERSION, stage_sections(cfg, name),
                                  {i: keys[i] for i in mod.INPUTS})
    return keys


def input_dirs(cfg: Config, name: str, keys: dict[str, str] | None = None) -> dict[str, Path]:
    keys = keys or stage_keys(cfg)
    store = Store(cfg.run.work_dir)
    return {i: store.path(keys[i]) for i in get(name).INPUTS}


def check_inputs(cfg: Config, name: str, keys: dict[str, str]) -> None:
    store = Store(cfg.run.work_dir)
    for i in get(name).INPUTS:
        st = store.state(keys[i])
        if st != "cached":
            raise RuntimeError(f"stage '{name}' needs '{i}' ({store.path(keys[i])}), which is {st}; "
                               f"run `wsss stage {i}` or `wsss run` first")


def begin_stage(cfg: Config, name: str, keys: dict[str, str], force: bool = False) -> Path | None:
    """Open a stage's artifact dir for (re)computation, or None if it is cached."""
    store = Store(cfg.run.work_dir)
    key = keys[name]
    state = store.state(key)
    if state == "cached" and not force:
        log.info("%s: cached (%s)", name, store.path(key))
        return None
    if state == "corrupt":
        log.warning("%s: artifact %s is damaged (%s); recomputing", name, key,
                    "; ".join(store.problems(key)[:3]))
    check_inputs(cfg, name, keys)
    out = store.open(key)
    log.info("%s: %s in %s", name, "resuming" if state == "partial" else "running", out)
    return out


def finish_stage(cfg: Config, name: str, keys: dict[str, str], metrics: dict, started: float) -> Path:
    store = Store(cfg.run.work_dir)
    store.finalize(keys[name], name, stage_sections(cfg, name), {i: keys[i] for i in get(name).INPUTS},
                   metrics or {}, started)
    log.info("%s: done %s", name, _headline(metrics))
    return store.path(keys[name])


def _headline(metrics: dict | None) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in list((metrics or {}).items())[:3]
                     if isinstance(v, (int, float)))


def run_stage(cfg: Config, name: str, force: bool = False, keys: dict[str, str] | None = None) -> Path:
    """Run one stage if its artifact is not cached (or if forced); return its dir."""
    keys = keys or stage_keys(cfg)
    out = begin_stage(cfg, name, keys, force)
    if out is None:
        return Store(cfg.run.work_dir).path(keys[name])
    started = time.time()
    metrics = get(name).run(cfg, input_dirs(cfg, name, keys), out)
    return finish_stage(cfg, name, keys, metrics, started)


def select(until: str | None = None, start: str | None = None) -> list[str]:
    """Stages from `start` to `until` inclusive, in DAG order."""
    for n in (until, start):
        if n is not None:
            get(n)  # clear error for an unknown name
    names = list(ORDER)
    if until:
        names = names[: names.index(until) + 1]
    if start:
        names = names[names.index(start):]
    return names


def run_all(cfg: Config, until: str | None = None, start: str | None = None,
            force: tuple[str, ...] = ()) -> dict[str, Path]:
    keys = stage_keys(cfg)
    return {n: run_stage(cfg, n, force=n in force, keys=keys) for n in select(until, start)}
