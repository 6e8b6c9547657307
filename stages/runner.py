"""Runs the stages of a run plan (stages/plan.py) against the artifact store, without
Prefect. The flow in flows/ calls the same functions inside tasks, so both routes share
keys. ``stage_keys``, ``stage_inputs``, ``stage_sections`` and ``select`` are the plan's,
importable from here too."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from pipeline.config import Config
from pipeline.resources import Meter
from pipeline.lock import ArtifactLock
from pipeline.store import State
from pipeline.utils import get_device, stage_error
from pipeline.weights import HubWeight, compiled_ops, resolve
from stages import get
from stages.contract import Stage, view
from stages.launch import execute
from stages.plan import RunPlan, select, stage_inputs, stage_keys, stage_sections  # noqa: F401 - importable here
from stages.status import metrics_line

log = logging.getLogger("wsss")


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


def preflight(plan: RunPlan) -> None:
    """Resolve (download if needed) every hub weight of the plan's stages that will compute
    (forced, or not cached: the cached ones load nothing); WeightsUnavailable on the first that
    cannot be had, before any stage writes anything. Logs the compiled mmcv ops the segmentation
    stages that will compute call (CompiledOpsMissing where the config requires them)."""
    cfg = plan.cfg
    weights = hub_weights(cfg, plan.names)
    segmentation = [n for n in plan.names if "train_segmentation" in get(n).sections_of(cfg)]
    if not weights and not segmentation:  # smoke configs, local files: not even a look at the store
        return
    todo = set(plan.to_compute())
    segmentation = [n for n in segmentation if n in todo]
    if segmentation:
        for line in compiled_ops(cfg.train_segmentation, get_device(cfg.run.device).type, segmentation):
            log.info("preflight: %s", line)
    resolve([replace(w, stages=tuple(x for x in w.stages if x in todo)) for w in weights
             if todo.intersection(w.stages)])


def check_inputs(plan: RunPlan, name: str) -> None:
    for i in plan.inputs(name):
        st = plan.state(i)
        if st != "cached":
            raise RuntimeError(f"stage '{name}' needs '{i}' ({plan.path(i)}), which is {st}; "
                               f"run `wsss stage {i}` or `wsss run` first")


def begin_stage(plan: RunPlan, name: str, state: State, force: bool) -> Path | None:
    """Open a stage's artifact dir for (re)computation, or None if it is cached.
    A damaged or partial artifact is healed first (Store.heal with the stage's
    per-image layouts), so the resume redoes exactly the outputs that fail;
    ``force`` starts from an empty directory."""
    store, key = plan.store, plan.keys[name]
    if state == "cached" and not force:
        log.info("%s: cached (%s)", name, store.path(key))
        return None
    damage = plan.damage(name) if state == "corrupt" else None  # found by the check under the lock
    if damage is not None:
        log.warning("%s: artifact %s is damaged (%s); recomputing", name, key,
                    "; ".join(store.problems(key, damage)[:3]))
    check_inputs(plan, name)
    if state in ("corrupt", "partial") and not force:
        stage = plan.stage(name)
        removed = store.heal(key, stage.per_image(view(plan.cfg, stage)) if stage.per_image else (), damage=damage)
        if removed:
            log.warning("%s: removed %d files that fail their check, to be recomputed: %s", name, len(removed),
                        "; ".join(removed[:20]) + (f"; ... and {len(removed) - 20} more" if len(removed) > 20 else ""))
    out = store.open(key, fresh=force)
    plan.opened(name)
    log.info("%s: %s in %s", name, "resuming" if state == "partial" and not force else "running", out)
    return out


def finish_stage(plan: RunPlan, name: str, metrics: dict, started: float, resources: dict | None = None) -> Path:
    plan.store.finalize(plan.keys[name], name, stage_sections(plan.cfg, name), plan.input_keys(name),
                        metrics or {}, started, resources)
    plan.finished(name)
    log.info("%s: done %s", name, metrics_line(metrics))
    return plan.path(name)


def compute_stage(plan: RunPlan, name: str, compute: Callable[[dict, Path], dict] | None = None) -> Path:
    """Make a stage's artifact if it is not cached (or if the plan forces it); return its dir.

    The computation runs under the artifact's lock: another process (or
    machine) that needs the same artifact meanwhile waits, then finds it
    cached. `compute(inputs, out) -> metrics` defaults to the stage's run()
    under its config view (stages/launch.py execute). The stage's ``check`` hook
    runs on the artifact, computed or cached. Any exception leaves as one
    StageError naming the stage, the images or file and the config fields it concerns
    (pipeline.utils.stage_error; the original is its cause)."""
    stage = plan.stage(name)  # an unknown name is a KeyError of its own
    try:
        path = _compute_stage(plan, stage, compute)
        if stage.check:
            stage.check(plan.cfg, path)
        return path
    except Exception as e:
        raise stage_error(name, e, stage.sections_of(plan.cfg)) from e


def _compute_stage(plan: RunPlan, stage: Stage, compute: Callable[[dict, Path], dict] | None) -> Path:
    name, cfg, force = stage.name, plan.cfg, plan.forced(stage.name)
    if not force and plan.state(name) == "cached":
        log.info("%s: cached (%s)", name, plan.path(name))
        return plan.path(name)
    lock = ArtifactLock(plan.store, plan.keys[name], cfg.run.lock_lease_s)
    lock.acquire(log=lambda msg: log.info("%s: %s", name, msg))
    try:
        state = plan.recheck(name)  # now that we hold the lock
        if force and lock.waited and state == "cached":
            log.info("%s: recomputed by the process this one waited for; not forcing again", name)
            force = False
        out = begin_stage(plan, name, state, force)
        if out is None:
            return plan.path(name)
        started = time.time()
        inputs = plan.input_dirs(name)
        gpus = cfg.run.nproc_per_node if stage.distributed else 1
        with Meter(cfg.run.device, gpus) as meter:
            metrics = compute(inputs, out) if compute else execute(stage, cfg, inputs, out)
        lock.check()  # a lease taken over meanwhile: the new holder finishes it
        return finish_stage(plan, name, metrics, started, meter.result)
    finally:
        lock.release()


def run_plan(plan: RunPlan) -> dict[str, Path]:
    """Every stage of the plan in DAG order, after one preflight of their hub weights."""
    preflight(plan)
    return {n: compute_stage(plan, n) for n in plan.names}


def run_stage(cfg: Config, name: str, force: bool = False, keys: dict[str, str] | None = None) -> Path:
    """Run one stage if its artifact is not cached (or if forced); return its dir."""
    return run_plan(RunPlan(cfg, [name], [name] if force else (), keys))[name]


def run_all(cfg: Config, until: str | None = None, start: str | None = None,
            force: tuple[str, ...] = ()) -> dict[str, Path]:
    return run_plan(RunPlan.of(cfg, until, start, force))
