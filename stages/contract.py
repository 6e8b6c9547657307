"""The contract between a stage and the artifact store: the ``Stage`` record and
the read-only config view a stage computes under.

A stage's artifact key covers its declared ``sections`` (whole sections such
as 'pseudo_masks' or dotted fields such as 'run.seed'), its version and the
keys of its inputs. So a stage may read only those: ``view(cfg, stage)`` hands
its run/shard functions a view that raises ``ConfigAccessError`` (naming the
stage and the field) on any other field, and on any assignment. THROUGHPUT
fields (pipeline/config/root.py: run.device, run.num_workers, ...) are readable by
every stage and part of no key."""
from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import import_module
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Optional, Sequence, Union

from pydantic import BaseModel

from pipeline.config import THROUGHPUT, Config
from pipeline.publish import Publication


class Lazy:
    """The function ``target`` ('module:function'), imported at its first call."""
    __slots__ = ("target", "_fn")

    def __init__(self, target: str):
        if target.count(":") != 1:
            raise ValueError(f"'{target}': a lazy stage function is named 'module:function'")
        self.target, self._fn = target, None

    def resolve(self) -> Callable:
        if self._fn is None:
            module, name = self.target.split(":")
            self._fn = getattr(import_module(module), name)
        return self._fn

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Lazy({self.target!r})"


@dataclass(frozen=True)
class Stage:
    """One stage of the DAG.

    name: artifact name; inputs: upstream stage names, or a function of the
    (full) config when they depend on it (export_cams.source); sections: the
    config its result depends on; version: bump when its logic changes;
    run(cfg_view, inputs, out) -> metrics. Per-image stages also have
    items(cfg_view, inputs) -> ids, run_shard(cfg_view, inputs, out, ids) and
    finalize(cfg_view, inputs, out) -> metrics, so a flow can map shards over
    workers. input_files(cfg) -> paths: small files whose content the key
    covers. fingerprint(cfg) -> str: a digest of a folder the stage reads
    (imported CAMs / masks), cheap enough to compute with every key.
    weights(cfg_view) -> the hub weights (pipeline/weights.py HubWeight) the
    stage loads under this config, which the preflight resolves before any
    stage writes. distributed: run() fans out under torchrun when
    run.nproc_per_node > 1 (stages/launch.py). per_image(cfg_view) -> the
    per-image outputs (pipeline.store.PerImage): before a damaged or partial
    artifact is resumed, those that fail their check are removed (Store.heal),
    so the stage, which skips images whose output exists, redoes them. gpu: it computes on
    run.device, so a flow gives it one of run.gpus (flows/dag.py).

    Hooks the machinery calls, so that it never asks a stage's name: check(cfg, out) runs on
    the finished artifact (computed or cached) under the whole config, before any later
    stage starts, and raises what it finds (prepare_data: the image sizes the CAM export can
    handle; part of no key). publish(out) -> the pipeline.publish.Publication pages and
    tables a flow shows beside the stage's metrics (evaluate: its report).

    Each function after ``version`` may be given as 'module:function' (``Lazy``): it is imported
    at its first call, so the registry, and every plan, key and status built from it, imports
    no stage's work (torch, mmseg, open_clip, SAM). inputs, sections, input_files and
    fingerprint make the key: they are called for every run, so they stay cheap to import."""
    name: str
    inputs: Union[tuple[str, ...], Callable[[Config], tuple[str, ...]]]
    sections: Union[tuple[str, ...], Callable[[Config], tuple[str, ...]]]
    version: str
    run: Callable[..., dict]
    items: Optional[Callable[..., list]] = None
    run_shard: Optional[Callable[..., Any]] = None
    finalize: Optional[Callable[..., dict]] = None
    input_files: Optional[Callable[[Config], list]] = None
    fingerprint: Optional[Callable[[Config], str]] = None
    weights: Optional[Callable[..., list]] = None
    distributed: bool = False
    per_image: Optional[Callable[..., tuple]] = None
    gpu: bool = False
    check: Optional[Callable[[Config, Path], None]] = None
    publish: Optional[Callable[[Path], Sequence[Publication]]] = None

    def __post_init__(self):
        names = [f.name for f in fields(self)]
        for name in names[names.index("version") + 1:]:  # the functions (and flags)
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, Lazy(getattr(self, name)))
        shard = (self.items, self.run_shard, self.finalize)
        if any(shard) and not all(shard):
            raise TypeError(f"stage '{self.name}': items, run_shard and finalize go together")

    @property
    def sharded(self) -> bool:
        return self.run_shard is not None

    def inputs_of(self, cfg: Config) -> tuple[str, ...]:
        return tuple(self.inputs(cfg)) if callable(self.inputs) else tuple(self.inputs)

    def sections_of(self, cfg: Config) -> tuple[str, ...]:
        """The declared sections under ``cfg`` (a function of it where they depend on it: train_cam
        reads run.seed only when it trains, not when it imports a warm start)."""
        return tuple(self.sections(cfg)) if callable(self.sections) else tuple(self.sections)

    def seeded(self, cfg: Config) -> bool:
        """Its result depends on run.seed (so each seed of a multi-seed run has its own artifact)."""
        return any(s in ("run", "run.seed") for s in self.sections_of(cfg))


class ConfigAccessError(AttributeError):
    """A stage read a config field it does not declare, or assigned one."""


def view(cfg: Config, stage: Stage) -> "ConfigView":
    """The read-only config of ``stage``: its sections plus THROUGHPUT."""
    return ConfigView(cfg, stage.name, stage.sections_of(cfg) + THROUGHPUT, "")


def _covers(allowed: tuple[str, ...], path: str) -> bool:
    """A declared entry is ``path`` or one of its parents."""
    return any(path == a or path.startswith(a + ".") for a in allowed)


def _leads_to(allowed: tuple[str, ...], path: str) -> bool:
    """``path`` is a parent of a declared entry (data when only data.train_split is declared)."""
    return any(a.startswith(path + ".") for a in allowed)


class ConfigView:
    """Attribute access to a Config (or a part of it) checked against a stage's
    declared fields. Methods of the config classes (effective_lr, all_splits)
    run on the view, so the fields they read are checked too; pydantic's
    methods (model_dump, model_copy) need the whole node declared."""
    __slots__ = ("_obj", "_stage", "_allowed", "_path")

    def __init__(self, obj: BaseModel, stage: str, allowed: tuple[str, ...], path: str):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_path", path)

    def _sub(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _denied(self, path: str) -> ConfigAccessError:
        declared = [a for a in self._allowed if a not in THROUGHPUT]
        return ConfigAccessError(f"stage '{self._stage}' reads config field '{path}', which it does not declare "
                                 f"(sections {declared}); declare it in the stage's sections or pass the value in")

    def _wrap(self, value: Any, path: str) -> Any:
        if isinstance(value, BaseModel):
            return ConfigView(value, self._stage, self._allowed, path)
        if isinstance(value, dict):
            return MappingProxyType({k: self._wrap(v, f"{path}.{k}") for k, v in value.items()})
        if isinstance(value, (list, tuple)):
            return tuple(self._wrap(v, path) for v in value)
        return value  # str, numbers, None, Path: immutable

    def __getattr__(self, name: str) -> Any:
        obj = self._obj
        path = self._sub(name)
        if name in type(obj).model_fields:
            if not (_covers(self._allowed, path) or _leads_to(self._allowed, path)):
                raise self._denied(path)
            return self._wrap(getattr(obj, name), path)
        attr = getattr(type(obj), name, None)
        if attr is None or name.startswith("_"):
            raise AttributeError(f"{type(obj).__name__} has no attribute '{name}'")
        if name in dir(BaseModel):  # pydantic's own methods read every field of the node
            if self._path and _covers(self._allowed, self._path):
                return getattr(obj, name)
            raise self._denied(f"{self._path or '<config>'} (all of it, by {name})")
        if isinstance(attr, property):
            return attr.fget(self)
        return attr.__get__(self)  # a method of our config classes, reading fields through the view

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigAccessError(f"stage '{self._stage}' assigns config field '{self._sub(name)}': "
                                "a stage's config is read-only")

    def __delattr__(self, name: str) -> None:
        raise ConfigAccessError(f"stage '{self._stage}' deletes config field '{self._sub(name)}': "
                                "a stage's config is read-only")

    def __repr__(self) -> str:
        return f"<config view of stage '{self._stage}' at '{self._path or '<config>'}'>"
