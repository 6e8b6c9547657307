"""The pseudo-mask routes, registered once: CAM seeds -> one label PNG per image.

A route is a module with ``route_mask(image, cams, classes, cfg, job, setup) -> (H, W) uint8``
(cfg: the PseudoMasksCfg with ``method`` set to the route; job: pipeline/pseudo_masks/make.py
Job; setup: its WorkerSetup, holding the input artifacts the route declares). The config's
``pseudo_masks.method`` / ``extra_methods`` accept exactly these names and the pseudo_masks
stage adds the routes' ``inputs`` to its own. Adding a route = its module + one line here.

Nothing is imported here (the config imports this table); route modules are loaded by
name in the worker processes, which import no torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    name: str
    module: str  # dotted module holding route_mask
    reads: tuple[str, ...] = ()  # the pseudo_masks fields the route reads beyond the thresholds
    attention: bool = False  # needs the patch attention of the mask generator that made the CAMs
    inputs: tuple[str, ...] = ()  # further stages whose artifacts it reads


ROUTES: dict[str, Route] = {r.name: r for r in (
    Route("argmax", "pipeline.pseudo_masks.threshold"),
    Route("crf", "pipeline.pseudo_masks.threshold", reads=("crf",)),
    Route("affinity", "pipeline.pseudo_masks.affinity", reads=("affinity",), attention=True),
    Route("affinity_crf", "pipeline.pseudo_masks.affinity", reads=("affinity", "crf"), attention=True),
    Route("sam", "pipeline.pseudo_masks.seeding", reads=("sam_p",), inputs=("sam_masks",)),
)}
NAMES = tuple(ROUTES)


def get(name: str) -> Route:
    if name not in ROUTES:
        raise KeyError(f"unknown pseudo-mask route '{name}'; routes: {', '.join(NAMES)}")
    return ROUTES[name]
