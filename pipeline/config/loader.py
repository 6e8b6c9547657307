"""Reading a config: YAML files, ``_base_`` merge, the origin of every key, errors naming
file and key, and the check that the paths a config names exist."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from pipeline.config.base import ConfigError, _looks_like_path
from pipeline.config.root import Config
from pipeline.config.run_data import DataCfg


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _merge(base: dict, child: dict, origin: dict, child_file: str, prefix: str = "") -> dict:
    out = dict(base)
    for k, v in child.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, origin, child_file, key + ".")
        else:
            out[k] = v
            _mark(origin, key, v, child_file)
    return out


def _mark(origin: dict, key: str, value: Any, file: str) -> None:
    origin[key] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, f"{key}.{k}", v, file)


def _load_raw(path: Path, origin: dict, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for b in bases:
        merged = _merge(merged, _load_raw(path.parent / b, origin, seen + (path,)), {}, "")
    # origins of base keys were recorded while each base loaded
    return _merge(merged, data, origin, str(path))


def _origin_of(origin: dict, loc: tuple) -> str:
    parts = [str(p) for p in loc]
    while parts:
        f = origin.get(".".join(parts))
        if f:
            return f
        parts.pop()
    return "?"


def load_config(path: str | Path, overrides: Optional[dict] = None, check_paths: bool = True) -> Config:
    """Load, merge and validate a config; raise ConfigError naming file and key.
    check_paths=False: files it names need not exist yet (`wsss fetch` creates them)."""
    path = Path(path)
    origin: dict[str, str] = {}
    raw = _load_raw(path, origin)
    if overrides:
        raw = _merge(raw, overrides, origin, "<overrides>")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "<root>"
            msgs.append(f"{_origin_of(origin, loc) if loc else path}: {key}: {err['msg']}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(msgs)) from None
    cfg.source = str(path.resolve())
    if check_paths:
        _check_paths(cfg, origin)
    return cfg


def _check_paths(cfg: Config, origin: dict) -> None:
    problems = []
    if not cfg.data.root.exists() and not cfg.data.fetch:
        problems.append(("data.root", cfg.data.root))
    for key in ("mask_generator.pretrained", "clip.pretrained", "train_segmentation.pretrained",
                "train_cam.init_checkpoint"):
        sec, field = key.split(".")
        v = getattr(getattr(cfg, sec), field)
        if isinstance(v, str) and _looks_like_path(v) and not Path(v).exists():
            problems.append((key, v))
    if cfg.sam.checkpoint and "://" not in cfg.sam.checkpoint and not Path(cfg.sam.checkpoint).exists():
        problems.append(("sam.checkpoint", cfg.sam.checkpoint))
    for stage in ("train_cam", "match", "refine"):
        ids = getattr(cfg, stage).seed_eval_ids
        if ids is not None and not ids.exists():
            problems.append((f"{stage}.seed_eval_ids", ids))
    if problems:
        raise ConfigError("missing paths:\n  " + "\n  ".join(
            f"{_origin_of(origin, tuple(k.split('.')))}: {k}: {p} does not exist"
            + (f" ({missing_root_hint(cfg.data, cfg.source)})" if k == "data.root" else "") for k, p in problems))


def missing_root_hint(data: "DataCfg", config: Optional[str] = None) -> str:
    """How to get a data set root that is not there."""
    if data.dataset == "folder":
        return "point data.root at your image folder; `wsss init-dataset FOLDER` writes a config for one"
    cfg = f" --config {config}" if config else ""
    return (f"get it with `wsss fetch {data.dataset}{cfg}`, or set `data.fetch: true` to let prepare_data "
            f"fetch it, or point data.root at your copy")
