"""One run's plan, built once from its config: the artifact store, the stages the run
selects, every stage's inputs and artifact key, and each stage's state in the store. The
runner (stages/runner.py), the flow (flows/dag.py) and the CLI (flows/cli.py) read it
instead of building stores and recomputing keys and states of their own.

Keys are a function of the config alone (a stage's declared sections, version, input-file
hashes and its inputs' keys, stages/contract.py), so they are computed once, upstream
first. A state (cached / partial / missing / corrupt, pipeline/store.py Store.state) is read
from the store the first time it is asked for and then kept; the runner records what it
changes (``opened``, ``finished``) and reads the store again only under an artifact's lock,
where another process may have changed it (``recheck``)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from pipeline.config import Config
from pipeline.fileio import sha256_file
from pipeline.store import State, Store, artifact_key
from stages import ORDER, get
from stages.contract import Stage


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


class NotCached(RuntimeError):
    """A command needs a finished artifact that this config has not made (yet)."""


class RunPlan:
    """The plan of one run of ``cfg``: ``names`` (the stages it runs, DAG order; default every
    stage the config runs), ``force`` (those it recomputes even if cached), ``store``, ``keys``
    and ``inputs`` of every stage. ``keys`` and ``states`` (by artifact key, as ``states()``
    returns them) already known are taken as they are: the CLI hands the flow what it read, the
    flow its tasks, so a run reads each state from the store once."""

    def __init__(self, cfg: Config, names: Optional[Iterable[str]] = None, force: Iterable[str] = (),
                 keys: Optional[dict[str, str]] = None, states: Optional[dict[str, State]] = None):
        self.cfg = cfg
        self.store = Store(cfg.run.work_dir)
        self.keys = dict(keys) if keys is not None else stage_keys(cfg)
        self.names = tuple(select(cfg=cfg) if names is None else names)
        self.force = frozenset(force)
        self._states: dict[str, State] = dict(states or {})  # by artifact key
        self._damage: dict[str, dict[str, str]] = {}  # by artifact key: what the check behind its state found

    @classmethod
    def of(cls, cfg: Config, until: Optional[str] = None, start: Optional[str] = None,
           force: Iterable[str] = (), states: Optional[dict[str, State]] = None) -> "RunPlan":
        """The stages from ``start`` to ``until`` that the last of them needs (``select``)."""
        return cls(cfg, select(until, start, cfg), force, states=states)

    def stage(self, name: str) -> Stage:
        return get(name)

    def inputs(self, name: str) -> tuple[str, ...]:
        return stage_inputs(self.cfg, name)

    def input_keys(self, name: str) -> dict[str, str]:
        return {i: self.keys[i] for i in self.inputs(name)}

    def input_dirs(self, name: str) -> dict[str, Path]:
        return {i: self.store.path(k) for i, k in self.input_keys(name).items()}

    def path(self, name: str) -> Path:
        return self.store.path(self.keys[name])

    def forced(self, name: str) -> bool:
        return name in self.force

    def state(self, name: str) -> State:
        """The artifact's state, read from the store once per plan."""
        key = self.keys[name]
        if key not in self._states:
            self._states[key], self._damage[key] = self.store.check(key)
        return self._states[key]

    def damage(self, name: str) -> dict[str, str]:
        """{relative path: reason} of the files of a corrupt artifact that fail their manifest
        entry: what the check behind ``state`` found (one pass over the artifact's files, which
        the runner's heal reuses), or, where the state was handed in, checked now."""
        key = self.keys[name]
        if key not in self._damage:
            self._damage[key] = self.store.damaged(key)
        return self._damage[key]

    def states(self, names: Iterable[str]) -> dict[str, State]:
        """The states of stages ``names`` by artifact key: what a later plan of this run takes."""
        return {self.keys[n]: self.state(n) for n in names}

    def recheck(self, name: str) -> State:
        """Read the state again (under the artifact's lock: another process may have made it).
        What this process's check found stands while the manifest is the same file
        (Store.check ``reuse``): a run that made or began the artifact meanwhile replaced it."""
        key = self.keys[name]
        self._states[key], self._damage[key] = self.store.check(key, reuse=True)
        return self._states[key]

    def opened(self, name: str) -> None:
        self._states[self.keys[name]], self._damage[self.keys[name]] = "partial", {}

    def finished(self, name: str) -> None:
        self._states[self.keys[name]], self._damage[self.keys[name]] = "cached", {}

    def to_compute(self) -> list[str]:
        """The stages of the run that will compute: forced, or not cached."""
        return [n for n in self.names if self.forced(n) or self.state(n) != "cached"]

    def cached(self, name: str) -> Path:
        """The finished artifact of ``name``, or NotCached saying how to make it."""
        if self.state(name) != "cached":
            raise NotCached(f"no {name} artifact for this config ({self.path(name)} is {self.state(name)}); "
                            f"run `wsss run --config ...` (or `wsss stage {name}`) first")
        return self.path(name)
