"""Records found by the machinery, and how it finds them: every module of a package declares
its own, nothing else names them. The pseudo-mask routes (``Route``, modules of
pipeline/pseudo_masks/routes/) and the CAM file formats (``CamFormat``, modules of
pipeline/cams/formats/); adding one = adding a module to its package.

The config reads the tables here (names, parameter models), below it; the modules declaring
the records import their record type from here and are found by ``discover`` when this module
loads, so a record module imports neither pipeline.config nor torch at module level (the
stages' process-pool workers discover every record and should start fast)."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional

from pipeline.section import Section


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


# ------------------------------------------------------------------ the records
@dataclass(frozen=True)
class Route:
    """A pseudo-mask route: CAM seeds -> one label PNG per image."""
    name: str
    # (image (H, W, 3) uint8, cams (C, H, W) float32 in [0, 1], classes (C,) label ids, cfg, job, setup)
    # -> (H, W) uint8 label map (0 = background, 255 = uncertain). cfg: the pseudo_masks section;
    # job: make.Job (job.attention with ``attention``); setup: make.WorkerSetup (setup.inputs[stage] for ``inputs``)
    mask: Callable
    # (the pseudo_masks section as a dict, {stage of ``inputs``: that artifact's config sections}) ->
    # the route's parameters in words, for the protocol card
    describe: Callable[[dict, dict], str]
    params: tuple[type[Section], ...] = ()  # models whose fields (the parameters it reads) join pseudo_masks
    attention: bool = False  # needs the patch attention of the mask generator that made the CAMs
    inputs: tuple[str, ...] = ()  # further stages whose artifacts it reads


class CamFormatError(ValueError):
    """A CAM file that is not what its format says, naming the file."""


@dataclass(frozen=True)
class CamFormat:
    """A per-image CAM file format of another code base (pipeline/cams/formats/__init__.py)."""
    name: str
    suffix: str  # a file is <image id><suffix>
    # (path, **options) -> (cams (C, H, W) numeric array, class keys (C,)); CamFormatError naming the file
    read: Callable
    # (binary file object, cams (C, H, W) array as the CAM store holds them, class keys (C,) ints) -> None;
    # the writer picks the dtype on disk
    write: Callable
    description: str  # one line: what the file holds (import_cams.format's description)
    keys: Literal["index", "label"] = "index"  # what the class keys are: pipeline/cams/formats/__init__.py
    options: Optional[type[Section]] = None  # the import_cams fields the reader takes as **options


def get_route(name: str) -> Route:
    return lookup(ROUTES, name, "pseudo-mask route")


def get_format(name: str) -> CamFormat:
    return lookup(FORMATS, name, "CAM format")


# ------------------------------------------------------------------ the tables
# Filled in place after the record types above exist: the record modules import them from here
# while this module discovers them, and their packages hand these same dicts on.
_HERE = Path(__file__).parent
ROUTES: dict[str, Route] = {}
ROUTES.update(discover("pipeline.pseudo_masks.routes", [str(_HERE / "pseudo_masks" / "routes")], "ROUTE", "ROUTES"))
ROUTE_NAMES = tuple(ROUTES)  # what pseudo_masks.method / extra_methods / ensemble.routes accept
ROUTE_PARAMS = joined_fields((p for r in ROUTES.values() for p in r.params), "pseudo_masks")

FORMATS: dict[str, CamFormat] = {}
FORMATS.update(discover("pipeline.cams.formats", [str(_HERE / "cams" / "formats")], "FORMAT", "FORMATS"))
FORMAT_NAMES = tuple(FORMATS)  # what import_cams.format and `wsss export-cams --format` accept
FORMAT_OPTIONS = joined_fields((f.options for f in FORMATS.values() if f.options), "import_cams")
