"""(Named dag.py, not pipeline.py: Prefect may run flows with flows/ on sys.path,
where a pipeline.py would shadow the pipeline package.)

The Prefect flow `wsss`: the stages of the DAG as cached tasks.

Each stage is one task whose Prefect cache key is the stage's artifact key
(plus the run store it lives in), so an unchanged rerun does no work and a
changed config section reruns that stage and its descendants only. The
artifact store stays the source of truth: a damaged or missing artifact
refreshes the task's cache. Per-image stages (sam_masks, export_cams, pseudo_masks) map
shards of images over the task runner: threads by default, a Dask cluster
(LocalCluster, or any scheduler address) when run.task_runner is 'dask'.

Stages run as soon as their inputs are done, so independent branches overlap
(sam_masks beside train_cam..refine, import stages beside training). Stages
that compute on the device (Stage.gpu) each take one of run.gpus and queue
when none is free; with one device they run one at a time, in the flow's
process, as a sequential run would. With several devices every stage computes
in a process of its own (spawned, CUDA_VISIBLE_DEVICES = its device): pinned
to its GPU and with its own random state, so a stage computes what it would
alone. A failed stage fails the flow with its error once the running stages
have finished; their artifacts stay cached and no new stage starts.

The flow reads the YAML once: the keys and every task come from that one
resolved config, handed to the tasks as JSON (a file edited during a run
cannot make a stage compute new values under an old key). Deployments take
a config path as the flow parameter.

A stage computes under its artifact's lock (stages.runner.compute_stage),
so flows, `wsss stage` and workers on other machines sharing the store
compute each artifact once. The flow builds one run plan (stages/plan.py: keys,
states, inputs) and hands each task the keys and states it needs. After each
stage the flow publishes its metrics as Prefect artifacts on the flow run's page
(cached stages too), keyed <run.name>-<stage>, with what the stage's record
publishes (Stage.publish: evaluate's report, with the per-class chart, and a
per-class IoU table).
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import re
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Optional
from unittest import mock

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.config import Config, load_config
from pipeline.evaluation.publish import spread_publication
from pipeline.lifetime import die_with_parent
from pipeline.publish import Publication, metrics_table
from pipeline.store import digest
from stages import get
from stages.contract import Stage, view
from stages.launch import execute, shards
from stages.plan import RunPlan, select
from stages.runner import compute_stage, preflight
from stages.seeds import seeds_of, with_seed, write_spread


def _cache_key(context: TaskRunContext, parameters: dict) -> str:
    return f"{parameters['keys'][parameters['name']]}-{digest(parameters['work_dir'])[:8]}"


@task(task_run_name="{name}", cache_key_fn=_cache_key, persist_result=True)
def stage_task(config: dict, name: str, keys: dict[str, str], work_dir: str, states: dict[str, str],
               force: bool = False, devices: Optional[list[int]] = None) -> str:
    """``config``: the flow's resolved config (Config.resolved()), not a file; ``keys`` and
    ``states`` (of the stage and its inputs, by artifact key): the flow's run plan. ``devices``:
    compute in a process of its own that sees only these GPUs ([]: a CPU stage, the devices
    unchanged); None: in this process."""
    cfg = Config.model_validate(config)
    plan = RunPlan(cfg, [name], [name] if force else (), keys, states)
    stage = plan.stage(name)

    def compute(inputs: dict, out: Path) -> dict:
        if devices is not None and not (stage.sharded and cfg.run.task_runner == "dask"):
            return in_own_process(config, name, inputs, out, devices)
        if not stage.sharded:
            return execute(stage, cfg, inputs, out)
        ids, todo = shards(stage, cfg, inputs, out)
        get_run_logger().info("%s: %d images, %d shards with work on %s", name, len(ids), len(todo),
                              cfg.run.task_runner)
        if len(todo) == 1 and cfg.run.task_runner == "thread":  # one shard (a heal): no sub-flow to start
            stage.run_shard(view(cfg, stage), inputs, out, todo[0])
        elif todo:
            shard_flow.with_options(task_runner=make_task_runner(cfg))(
                config, name, {k: str(v) for k, v in inputs.items()}, str(out), todo)
        return stage.finalize(view(cfg, stage), inputs, out)

    return str(compute_stage(plan, name, compute))


def _pin(devices: list[int]) -> None:
    die_with_parent()  # the flow process's child: it does not write on after a killed run
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))  # before CUDA initialises
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def start_temporary_server() -> None:
    """Prefect's temporary API server (no PREFECT_API_URL set) started here, with the
    parent-death signal, so that it dies with a killed run: Prefect would start it on first use
    as a plain child that outlives its parent. Prefect then finds this one
    (SubprocessASGIServer() returns the instance of its port, here None: the first free one).
    Call it from the main thread: the signal comes when the thread that started it ends."""
    from prefect.settings import PREFECT_API_URL
    if PREFECT_API_URL.value():
        return
    from prefect.server.api import server  # not before: the import alone takes ~0.8 s

    class DyingServer(server.SubprocessASGIServer):
        def _run_uvicorn_command(self):
            popen = functools.partial(subprocess.Popen, preexec_fn=die_with_parent)
            with mock.patch.object(server, "subprocess", SimpleNamespace(Popen=popen)):
                return super()._run_uvicorn_command()

    DyingServer().start()


def _execute(config: dict, name: str, inputs: dict[str, str], out: str) -> dict:
    cfg = Config.model_validate(config)
    return execute(get(name), cfg, {k: Path(v) for k, v in inputs.items()}, Path(out))


def in_own_process(config: dict, name: str, inputs: dict, out: Path, devices: list[int]) -> dict:
    """The stage's computation (all its shards) in a spawned process that sees ``devices``; its
    error is raised here."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_pin,
                             initargs=(list(devices),)) as pool:
        return pool.submit(_execute, config, name, {k: str(v) for k, v in inputs.items()}, str(out)).result()


def _first_done(futures: list[PrefectFuture]) -> PrefectFuture:
    return next(as_completed(futures))


def schedule(cfg: Config, names: list[str], submit: Callable[[str, Optional[list[int]]], PrefectFuture],
             finished: Callable[[str, str], None], first_done: Callable = _first_done) -> dict[str, str]:
    """Submit every stage of ``names`` whose inputs among them are done, GPU stages only while one of
    run.gpus is free (a distributed stage under torchrun takes them all), with the devices it gets
    when there are several (None: compute in this process); ``finished(name, path)`` after each.
    The first failure is raised once the running stages are done; nothing new starts.
    ``first_done(futures)``: the first finished future (Prefect's as_completed)."""
    gpus = list(cfg.run.gpus)
    free, isolated = list(gpus), len(gpus) > 1
    todo, running, held, done = list(names), {}, {}, {}  # running: future -> name; held: name -> devices
    failure: Optional[BaseException] = None

    def wanted(name: str) -> int:
        stage = get(name)
        if not stage.gpu:
            return 0
        return len(gpus) if stage.distributed and cfg.run.nproc_per_node > 1 else 1

    while todo or running:
        for name in list(todo) if failure is None else []:
            k = wanted(name)
            if k > len(free) or any(i in todo or i in running.values() for i in get(name).inputs_of(cfg)):
                continue
            mine, free = free[:k], free[k:]
            todo.remove(name)
            running[submit(name, mine if isolated else None)] = name
            held[name] = mine
        if not running:
            break  # a failure left stages that can no longer start
        fut = first_done(list(running))
        name = running.pop(fut)
        free = sorted(free + held.pop(name))  # a multi-GPU stage sees its devices in order
        try:
            done[name] = fut.result()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others
            failure = failure or e
            continue
        finished(name, done[name])
    if failure is not None:
        raise failure
    return {n: done[n] for n in names if n in done}  # DAG order


@task(task_run_name="{name}-shard")
def shard_task(config: dict, name: str, inputs: dict[str, str], out: str, ids: list[str]) -> int:
    cfg = Config.model_validate(config)
    stage = get(name)
    stage.run_shard(view(cfg, stage), {k: Path(v) for k, v in inputs.items()}, Path(out), ids)
    return len(ids)


@flow(name="wsss-shards")
def shard_flow(config: dict, name: str, inputs: dict[str, str], out: str, shards: list[list[str]]) -> int:
    futures = shard_task.map(unmapped(config), unmapped(name), unmapped(inputs), unmapped(out), shards)
    wait(futures)
    return sum(f.result() for f in futures)  # .result() re-raises a failed shard


def make_task_runner(cfg: Config):
    if cfg.run.task_runner == "dask":
        import dask
        from prefect_dask import DaskTaskRunner
        # per-image stages may start their own process pools inside a worker
        dask.config.set({"distributed.worker.daemon": False})
        if cfg.run.dask_address:
            return DaskTaskRunner(address=cfg.run.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.run.dask_workers, "processes": True,
                                              "threads_per_worker": 1})
    return ThreadPoolTaskRunner(max_workers=1)


@flow(name="wsss", log_prints=True)
def wsss_flow(config: str, until: Optional[str] = None, start: Optional[str] = None,
              force: Optional[list[str]] = None, seed: Optional[int] = None,
              states: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Run the DAG from `start` to `until` (stage names); `force` recomputes named stages;
    `seed` replaces run.seed (a sub-flow of wsss_seeds_flow); `states`: artifact states its caller
    has just read (`wsss run`'s plan, RunPlan.states), by artifact key, not read again (a stage
    rechecks its own under its lock before it computes)."""
    cfg = load_config(config)  # read once; a bad config fails here, before any stage runs
    label = cfg.run.name
    if seed is not None:
        cfg, label = with_seed(cfg, seed), f"{cfg.run.name}-seed-{seed}"
    plan = RunPlan.of(cfg, until, start, force or (), states)
    unknown = sorted(plan.force - set(plan.names))
    if unknown:
        raise ValueError(f"force names stages not in this run: {unknown}")
    preflight(plan)  # hub weights: downloaded, or one clear error
    work_dir = str(Path(cfg.run.work_dir).resolve())
    resolved = cfg.resolved()
    resolved["run"]["work_dir"] = work_dir  # tasks (Dask workers too) find the store whatever their cwd

    def submit(name: str, devices: Optional[list[int]]) -> PrefectFuture:
        refresh = plan.forced(name) or plan.state(name) != "cached"
        states = plan.states((name, *plan.inputs(name)))
        return stage_task.with_options(refresh_cache=refresh).submit(
            resolved, name, plan.keys, work_dir, states, force=plan.forced(name), devices=devices)

    def finished(name: str, path: str) -> None:
        plan.finished(name)
        publish_stage(plan.stage(name), Path(path), label)

    return schedule(cfg, list(plan.names), submit, finished)


@flow(name="wsss-seeds", log_prints=True)
def wsss_seeds_flow(config: str, seeds: Optional[list[int]] = None, until: Optional[str] = None,
                    start: Optional[str] = None, force: Optional[list[str]] = None) -> dict:
    """The DAG once per seed (default run.seeds), each a sub-flow run `<run.name>-seed-<s>`
    (artifacts that do not depend on run.seed are computed by the first and cached for the
    others), then the spread report, published as `<run.name>-spread`."""
    cfg = load_config(config)
    seeds = seeds_of(cfg, seeds)
    if not seeds:
        raise ValueError(f"{config}: no seeds (pass seeds or set run.seeds)")
    done: dict = {}
    for s in seeds:
        done[f"seed_{s}"] = wsss_flow.with_options(flow_run_name=f"{cfg.run.name}-seed-{s}")(
            config, until=until, start=start, force=force, seed=s)
    if "evaluate" in select(until, start, cfg):
        path = write_spread(cfg, seeds)
        done["spread"] = str(path)
        create_artifacts([spread_publication(path, seeds)], cfg.run.name, "spread")
    return done


def artifact_key(run_name: str, *parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join((run_name, *parts)).lower()).strip("-")


def create_artifacts(publications: Iterable[Publication], label: str, owner: str) -> None:
    """Each publication as an artifact of this flow run, keyed `<label>-<owner>[-<its name>]`
    (label: run.name, with the seed in a multi-seed run; owner: the stage, or 'spread')."""
    for p in publications:
        key = artifact_key(label, owner, *([p.name] if p.name else []))
        if p.table is not None:
            create_table_artifact(p.table, key=key, description=p.description)
        else:
            create_markdown_artifact(p.markdown, key=key, description=p.description)


def publish_stage(stage: Stage, path: Path, label: str) -> None:
    """A finished stage's manifest metrics and resources, and what its record publishes
    (Stage.publish: evaluate's report), as artifacts of this flow run."""
    create_artifacts([metrics_table(path), *(stage.publish(path) if stage.publish else ())], label, stage.name)
