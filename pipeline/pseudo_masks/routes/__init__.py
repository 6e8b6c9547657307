"""The pseudo-mask routes: CAM seeds -> one label PNG per image, each a ``Route`` record
(pipeline/registry.py).

Every module of this package declares ``ROUTE = Route(...)`` or ``ROUTES = (Route(...), ...)``
(modules named "_..." are helpers); nothing else names a route. pipeline/registry.py discovers
them: the config reads its ROUTE_NAMES (what pseudo_masks.method / extra_methods /
ensemble.routes accept) and ROUTE_PARAMS (the models whose fields join the pseudo_masks
section); the pseudo_masks stage (pipeline/pseudo_masks/make.py) runs ``mask`` over the images,
with the patch attention for ``attention`` routes and the artifacts of ``inputs``; evaluate's
protocol card prints ``describe``. Adding a route = adding its module (docs/extending/route.md).

A route module imports its record type from pipeline/registry.py, and neither pipeline.config
(the config reads the registry) nor torch at module level (the stage's process-pool workers
discover every route and should start fast)."""
from pipeline.registry import ROUTES, Route  # noqa: F401 (the table, filled by the registry)
from pipeline.registry import get_route as get  # noqa: F401
