"""The pseudo-mask routes: CAM seeds -> one label PNG per image, each a ``Route`` record.

Every module of this package declares ``ROUTE = Route(...)`` or ``ROUTES = (Route(...), ...)``
(modules named "_..." are helpers); nothing else names a route. The config reads NAMES
(what pseudo_masks.method / extra_methods / ensemble.routes accept) and PARAMS (the models whose
fields join the pseudo_masks section); the pseudo_masks stage (pipeline/pseudo_masks/make.py)
runs ``mask`` over the images, with the patch attention for ``attention`` routes and the
artifacts of ``inputs``; evaluate's protocol card prints ``describe``.
Adding a route = adding its module (docs/extending/route.md).

A route module imports neither pipeline.config (the config imports this registry: declare
parameters on pipeline.section.Section) nor torch at module level (the stage's process-pool
workers discover every route and should start fast)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.registry import discover, joined_fields, lookup
from pipeline.section import Section


@dataclass(frozen=True)
class Route:
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


# after Route: the route modules import it from here
ROUTES: dict[str, Route] = discover(__name__, __path__, "ROUTE", "ROUTES")
NAMES = tuple(ROUTES)
PARAMS = joined_fields((p for r in ROUTES.values() for p in r.params), "pseudo_masks")


def get(name: str) -> Route:
    return lookup(ROUTES, name, "pseudo-mask route")
