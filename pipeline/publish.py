"""What a run shows beside its artifacts (the Prefect UI, through flows/dag.py), as plain data:
a ``Publication`` is a markdown page or a table. A stage declares its own with its record's
``publish`` hook (stages/contract.py); every stage gets its metrics table (``metrics_table``).
The viewer cannot read files of the store, so PNGs are inlined as data: URIs (up to
INLINE_MAX bytes) and named by path."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

INLINE_MAX = 2 ** 21  # bytes: larger PNGs are named by path only, not inlined


@dataclass(frozen=True)
class Publication:
    """One page (``markdown``) or table (``table``: rows of {column: value}); ``name`` is
    appended to the key of what it belongs to ('' for none)."""
    name: str
    description: str
    markdown: Optional[str] = None
    table: Optional[list[dict]] = None

    def __post_init__(self):
        if (self.markdown is None) == (self.table is None):
            raise TypeError(f"publication '{self.name}': a markdown page or a table, one of them")


def inline_png(path: Path, alt: str) -> str:
    """Markdown of a PNG: inlined when small enough, and its path."""
    md = ""
    if path.stat().st_size <= INLINE_MAX:
        md = f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})\n\n"
    return md + f"File: `{path}`\n"


def metrics_table(path: Path) -> Publication:
    """A finished artifact's manifest metrics, seconds and resources (wall time aside)."""
    manifest = json.loads((path / "manifest.json").read_text())
    rows = [{"metric": k, "value": v} for k, v in manifest["metrics"].items()]
    rows.append({"metric": "seconds", "value": manifest["timings"]["seconds"]})
    rows += [{"metric": k, "value": v} for k, v in (manifest.get("resources") or {}).items() if k != "wall_s"]
    return Publication("", f"{manifest['stage']} metrics; artifact {path}", table=rows)
