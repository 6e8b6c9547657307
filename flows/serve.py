"""Serve deployments `wsss/<config name>` (every configs/*.yaml by default, not the
bases or ablations in its subfolders) against the Prefect API in PREFECT_API_URL, so that
`prefect deployment run wsss/voc-full` starts a run. Run it with
`wsss serve` or `python -m flows.serve`; it blocks, executing runs itself."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from prefect import serve

from pipeline.config import load_config
from flows.dag import wsss_flow, wsss_seeds_flow



def default_configs() -> list[str]:
    """configs/*.yaml of the directory `wsss serve` runs in (the project root), sorted."""
    return [str(p) for p in sorted(Path("configs").glob("*.yaml"))]


def deployments(configs: Optional[list[str]] = None):
    out = []
    for c in configs or default_configs():
        path = Path(c).resolve()
        if not path.exists():
            raise FileNotFoundError(f"{path}: config not found")
        out.append(wsss_flow.to_deployment(
            name=path.stem, parameters={"config": str(path)},
            description=f"SemPLeS pipeline with {path.name}", tags=["wsss", path.stem]))
        out.append(wsss_seeds_flow.to_deployment(  # -p seeds='[0, 1, 2]' (default: the config's run.seeds)
            name=path.stem, parameters={"config": str(path)},
            description=f"SemPLeS pipeline with {path.name}, once per seed, and the spread report",
            tags=["wsss", "seeds", path.stem]))
    return out


def serve_deployments(configs: Optional[list[str]] = None) -> None:
    for c in configs or default_configs():  # data paths may be absent on this machine: warn only
        try:
            load_config(c)
        except Exception as e:  # noqa: BLE001 - reported, the deployment still serves
            print(f"warning: {c}: {e}", file=sys.stderr)
    serve(*deployments(configs))


if __name__ == "__main__":
    serve_deployments(sys.argv[1:] or None)
