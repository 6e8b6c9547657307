"""The worked examples of the extending guides (docs/extending/*.md), taken out of the
page itself, so a guide cannot rot: every fenced code block whose opening line carries
``title="some/path"`` is one file of the example, written to that path (relative to the
repository root) in a temporary copy of the tracked tree; blocks without a title are prose.
Tests then run ``wsss`` inside that copy, whose own modules come first on PYTHONPATH."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r'^(?P<fence>```+|~~~+)[^\n]*?title="(?P<path>[^"]+)"[^\n]*\n(?P<body>.*?)^(?P=fence)\s*$',
                    re.MULTILINE | re.DOTALL)


def example_files(page: str | Path) -> dict[str, str]:
    """{path: text} of the titled code blocks of one guide page, in page order. A path given
    twice is an error (the page would be ambiguous about which text the reader should keep)."""
    text = (ROOT / page).read_text()
    files: dict[str, str] = {}
    for m in _BLOCK.finditer(text):
        path = m.group("path")
        if path in files:
            raise ValueError(f"{page}: two code blocks titled '{path}'")
        files[path] = m.group("body")
    if not files:
        raise ValueError(f"{page}: no code block with a title=\"path\"")
    return files


def checkout_with(dest: Path, files: dict[str, str]) -> Path:
    """A copy of the tracked tree at ``dest`` (vendored data included), with ``files`` written
    over it: what a reader who follows the guide in a fresh clone has."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel, text in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"example file '{rel}' must be a path inside the repository")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest


def run_wsss(checkout: Path, args: list[str], env: dict | None = None,
             timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m flows.cli ARGS`` in ``checkout`` with its modules first on the path."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_HOME", str(checkout / "runs" / "prefect"))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=timeout)
