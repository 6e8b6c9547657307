"""Records found by the machinery: every module of a package declares its own, nothing else
names them (the pseudo-mask routes, pipeline/pseudo_masks/routes/; the CAM file formats,
pipeline/cams/formats/). Adding one = adding a module to the package."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Iterable


def discover(package: str, path: Iterable[str], one: str, many: str) -> dict:
    """{record.name: record} of every module of ``package`` (``path``: its __path__) in name order,
    each declaring ``<one> = record`` or ``<many> = (record, ...)``. Modules whose names start
    with "_" are helpers and declare none. A module declaring nothing, or a name declared twice,
    is an ImportError naming the module."""
    found: dict = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        records = getattr(module, many, None) or ([getattr(module, one)] if hasattr(module, one) else [])
        if not records:
            raise ImportError(f"{module.__file__}: declares neither {one} nor {many}")
        for record in records:
            if record.name in found:
                raise ImportError(f"{module.__file__}: '{record.name}' is declared twice in {package}")
            found[record.name] = record
    return found


def lookup(records: dict, name: str, what: str):
    """records[name]; a KeyError naming the known ones otherwise."""
    if name not in records:
        raise KeyError(f"unknown {what} '{name}'; known: {', '.join(records)}")
    return records[name]


def joined_fields(models: Iterable[type], what: str) -> tuple[type, ...]:
    """The distinct parameter models of some records, in order, for a section that inherits them
    all; a field two different models declare is an ImportError naming both."""
    models = tuple(dict.fromkeys(models))
    owner: dict[str, type] = {}
    for model in models:
        for field in model.model_fields:
            if field in owner:
                raise ImportError(f"{what}.{field} is declared by both {owner[field].__module__}."
                                  f"{owner[field].__qualname__} and {model.__module__}.{model.__qualname__}")
            owner[field] = model
    return models


def check_not_shadowed(section: type, models: Iterable[type]) -> None:
    """A section that inherits the records' parameter models declares none of their fields again
    (its own would silently win); an ImportError naming them otherwise."""
    shadowed = {f for model in models for f in model.model_fields} & set(section.__annotations__)
    if shadowed:
        raise ImportError(f"{section.__name__}: record parameters {sorted(shadowed)} are fields of the section "
                          "itself already")
