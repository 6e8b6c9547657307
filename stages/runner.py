"""Runs stages against the artifact store, without Prefect. The flow in
flows/ calls the same functions inside tasks, so both routes share keys."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Optional

from pipeline.config import Config
from pipeline.resources import Meter
from pipeline.store import ArtifactLock, Store, artifact_key, sha256_file
from pipeline.utils import get_device, stage_error
from pipeline.weights import HubWeight, compiled_ops, resolve
from stages import ORDER, get
from stages.contract import view
from stages.launch import execute

log = logging.getLogger("wsss")


def stage_sections(cfg: Config, name: str) -> dict:
    """The config a stage's result depends on: whole sections, or dotted
    fields such as 'run.seed' (so work_dir/device never change a key)."""
    out = {}
    stage = get(name)
    for s in stage.sections_of(cfg):
        sec, _, field = s.partition(".")
        out[s] = cfg.section(sec)[field] if field else cfg.section(sec)
    files = stage.input_files(cfg) if stage.input_files else {}
    if files:  # small files the config names (a folder dataset's labels/classes): their content counts
        out["files"] = {str(f): sha256_file(f) if f.is_file() else None for f in files}
    if stage.fingerprint:  # a folder of imported files: its digest, not every file's sha256
        out["fingerprint"] = stage.fingerprint(cfg)
    return out


def stage_inputs(cfg: Config, name: str) -> tuple[str, ...]:
    """Upstream stages of `name` under this config (export_cams.source picks the training stage)."""
    return get(name).inputs_of(cfg)


def stage_keys(cfg: Config) -> dict[str, str]:
    """Artifact key of every stage, upstream first (keys chain through inputs)."""
    keys: dict[str, str] = {}
    for name in ORDER:
        keys[name] = artifact_key(name, get(name).version, stage_sections(cfg, name),
                                  {i: keys[i] for i in stage_inputs(cfg, name)})
    return keys


def hub_weights(cfg: Config, names: Iterable[str]) -> list[HubWeight]:
    """The hub weights that stages ``names`` load under ``cfg`` (their records' ``weights``, each
    read under the stage's config view), one per weight with the stages that load it, in the
    config's section order."""
    found: dict[tuple[str, str], HubWeight] = {}
    for name in names:
        stage = get(name)
        for w in stage.weights(view(cfg, stage)) if stage.weights else ():
            seen = found.get((w.key, w.value))
            found[(w.key, w.value)] = replace(seen or w, stages=(seen.stages if seen else ()) + (name,))
    order = list(type(cfg).model_fields)
    return sorted(found.values(), key=lambda w: order.index(w.key.split(".")[0]))


def preflight(cfg: Config, names: Iterable[str], keys: Optional[dict[str, str]] = None,
              force: Iterable[str] = ()) -> None:
    """Resolve (download if needed) every hub weight of stages ``names``; WeightsUnavailable on the
    first that cannot be had, before any stage writes anything. With the stages' artifact ``keys``,
    the cached ones (unless in ``force``) are skipped: they load nothing. Logs the compiled mmcv
    ops the segmentation stages will call (CompiledOpsMissing where the config requires them)."""
    names = list(names)
    segmentation = [n for n in names if "train_segmentation" in get(n).sections_of(cfg)]
    if not hub_weights(cfg, names) and not segmentation:  # smoke configs, local files: not even a look at the store
        return
    if keys is not None:
        store = Store(cfg.run.work_dir)
        names = [n for n in names if n in force or store.state(keys[n]) != "cached"]
    segmentation = [n for n in segmentation if n in names]
    if segmentation:
        for line in compiled_ops(cfg.train_segmentation, get_device(cfg.run.device).type, segmentation):
            log.info("preflight: %s", line)
    resolve(hub_weights(cfg, names))


def input_dirs(cfg: Config, name: str, keys: dict[str, str] | None = None) -> dict[str, Path]:
    keys = keys or stage_keys(cfg)
    store = Store(cfg.run.work_dir)
    return {i: store.path(keys[i]) for i in stage_inputs(cfg, name)}


def check_inputs(cfg: Config, name: str, keys: dict[str, str]) -> None:
    store = Store(cfg.run.work_dir)
    for i in stage_inputs(cfg, name):
        st = store.state(keys[i])
        if st != "cached":
            raise RuntimeError(f"stage '{name}' needs '{i}' ({store.path(keys[i])}), which is {st}; "
                               f"run `wsss stage {i}` or `wsss run` first")


def begin_stage(cfg: Config, name: str, keys: dict[str, str], force: bool = False) -> Path | None:
    """Open a stage's artifact dir for (re)computation, or None if it is cached.
    A damaged or partial artifact is healed first (Store.heal with the stage's
    per-image layouts), so the resume redoes exactly the outputs that fail;
    ``force`` starts from an empty directory."""
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
    if state in ("corrupt", "partial") and not force:
        stage = get(name)
        removed = store.heal(key, stage.per_image(view(cfg, stage)) if stage.per_image else ())
        if removed:
            log.warning("%s: removed %d files that fail their check, to be recomputed: %s", name, len(removed),
                        "; ".join(removed[:20]) + (f"; ... and {len(removed) - 20} more" if len(removed) > 20 else ""))
    out = store.open(key, fresh=force)
    log.info("%s: %s in %s", name, "resuming" if state == "partial" and not force else "running", out)
    return out


def finish_stage(cfg: Config, name: str, keys: dict[str, str], metrics: dict, started: float,
                 resources: dict | None = None) -> Path:
    store = Store(cfg.run.work_dir)
    store.finalize(keys[name], name, stage_sections(cfg, name), {i: keys[i] for i in stage_inputs(cfg, name)},
                   metrics or {}, started, resources)
    log.info("%s: done %s", name, _headline(metrics))
    return store.path(keys[name])


def _headline(metrics: dict | None) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in list((metrics or {}).items())[:3]
                     if isinstance(v, (int, float)))


# the number a stage is judged by, where it has one: the training stages' seed mIoU (selected epoch,
# else the last), else their last loss; segmentation's and evaluate's mIoU
HEADLINE = ("selected_seed_miou", "final_seed_miou", "final_loss", "miou", "seed_miou", "final_val_miou")


def headline(metrics: dict | None) -> tuple[str, float] | None:
    """(name, value) of a stage's headline number: the first of HEADLINE it has, else its
    first numeric metric (not a flag, not a text such as the selection label)."""
    num = {k: v for k, v in (metrics or {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k in (*HEADLINE, *num):
        if k in num:
            return k, num[k]
    return None


def compute_stage(cfg: Config, name: str, keys: dict[str, str], force: bool = False,
                  compute: Callable[[dict, Path], dict] | None = None) -> Path:
    """Make a stage's artifact if it is not cached (or if forced); return its dir.

    The computation runs under the artifact's lock: another process (or
    machine) that needs the same artifact meanwhile waits, then finds it
    cached. `compute(inputs, out) -> metrics` defaults to the stage's run()
    under its config view (stages/launch.py execute). Any exception leaves as one
    StageError naming the stage, the images or file and the config fields it concerns
    (pipeline.utils.stage_error; the original is its cause)."""
    sections = get(name).sections_of(cfg)  # an unknown name is a KeyError of its own
    try:
        return _compute_stage(cfg, name, keys, force, compute)
    except Exception as e:
        raise stage_error(name, e, sections) from e


def _compute_stage(cfg: Config, name: str, keys: dict[str, str], force: bool,
                   compute: Callable[[dict, Path], dict] | None) -> Path:
    store = Store(cfg.run.work_dir)
    if not force and store.state(keys[name]) == "cached":
        log.info("%s: cached (%s)", name, store.path(keys[name]))
        return _checked(cfg, name, store.path(keys[name]))
    lock = ArtifactLock(store, keys[name], cfg.run.lock_lease_s)
    lock.acquire(log=lambda msg: log.info("%s: %s", name, msg))
    try:
        if force and lock.waited and store.state(keys[name]) == "cached":
            log.info("%s: recomputed by the process this one waited for; not forcing again", name)
            force = False
        out = begin_stage(cfg, name, keys, force)  # re-checks the manifest now that we hold the lock
        if out is None:
            return _checked(cfg, name, store.path(keys[name]))
        started = time.time()
        inputs = input_dirs(cfg, name, keys)
        gpus = cfg.run.nproc_per_node if get(name).distributed else 1
        with Meter(cfg.run.device, gpus) as meter:
            metrics = compute(inputs, out) if compute else execute(get(name), cfg, inputs, out)
        lock.check()  # a lease taken over meanwhile: the new holder finishes it
        path = finish_stage(cfg, name, keys, metrics, started, meter.result)
    finally:
        lock.release()
    return _checked(cfg, name, path)


def _checked(cfg: Config, name: str, path: Path) -> Path:
    """After prepare_data (computed or cached): the image sizes the CAM export can handle
    (pipeline/data/image_checks.py; the checks section is part of no key), before any
    training starts."""
    if name == "prepare_data":
        from pipeline.data.datasets import LabelTable
        from pipeline.data.image_checks import cam_splits, check_sizes
        for split in cam_splits(cfg):
            table = LabelTable.from_artifact(path, split)
            check_sizes(cfg, table.records, table.num_classes - 1, f"prepare_data split '{split}'")
    return path


def run_stage(cfg: Config, name: str, force: bool = False, keys: dict[str, str] | None = None) -> Path:
    """Run one stage if its artifact is not cached (or if forced); return its dir."""
    keys = keys or stage_keys(cfg)
    preflight(cfg, [name], keys, [name] if force else ())  # hub weights before any write
    return compute_stage(cfg, name, keys, force)


def select(until: str | None = None, start: str | None = None, cfg: Config | None = None) -> list[str]:
    """Stages from `start` to `until` inclusive, in DAG order; with a config,
    only those the last of them needs (export_cams.source: train_cam skips
    match, learn_prompts and refine)."""
    for n in (until, start):
        if n is not None:
            get(n)  # clear error for an unknown name
    names = list(ORDER)
    if until:
        names = names[: names.index(until) + 1]
    if start:
        names = names[names.index(start):]
    if cfg is not None and names:
        needed, todo = set(), [names[-1]]
        while todo:
            n = todo.pop()
            if n not in needed:
                needed.add(n)
                todo.extend(stage_inputs(cfg, n))
        names = [n for n in names if n in needed]
    return names


def run_all(cfg: Config, until: str | None = None, start: str | None = None,
            force: tuple[str, ...] = ()) -> dict[str, Path]:
    keys = stage_keys(cfg)
    names = select(until, start, cfg)
    preflight(cfg, names, keys, force)  # every hub weight of the run, before the first stage
    return {n: run_stage(cfg, n, force=n in force, keys=keys) for n in names}
