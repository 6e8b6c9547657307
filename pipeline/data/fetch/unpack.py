"""Unpacking of `wsss fetch`: archives are verified before they are unpacked (download.py),
and a data set is unpacked into a temporary folder beside its target, completed there,
marked, and renamed into place: a half-unpacked tree never sits where `wsss data check`
looks."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Optional

from pipeline.data.fetch.download import FetchError

log = logging.getLogger("wsss")

MARKER = ".wsss-fetch-complete"  # written last into a fetched data set, before it is renamed into place


def fetched_or_absent(target: Path) -> bool:
    """True when `wsss fetch` made target, or target is missing or empty."""
    target = Path(target)
    return (target / MARKER).exists() or not target.exists() or not any(target.iterdir())


def fresh_target(target: Path) -> bool:
    """True when target is already a completed fetch; raise if something else is there."""
    if (target / MARKER).exists():
        log.info("%s: already fetched (%s present)", target, MARKER)
        return True
    if target.exists() and any(target.iterdir()):
        raise FetchError(f"{target} exists but was not completed by `wsss fetch` (no {MARKER}); "
                         "move it away or pass --dest")
    return False


def build_beside(target: Path, build: Callable[[Path], Path], info: dict) -> None:
    """Build the tree in a temp folder beside target; the marker goes in last, then one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):  # left by a killed run (we hold the lock)
        log.info("removing %s, left by an interrupted unpack", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        tree = build(tmp)
        (tree / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked by fresh_target)
        os.rename(tree, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def untar(archive: Path, dest: Path, members: Optional[Callable[[str], bool]] = None) -> None:
    try:
        with tarfile.open(archive) as tf:
            sel = [m for m in tf.getmembers() if members is None or members(m.name)]
            # "data" filter: no absolute paths, links out of dest or device files (3.11.4+)
            tf.extractall(dest, members=sel, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FetchError(f"{archive}: cannot unpack ({e})") from None


def unzip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{archive}: cannot unpack ({e})") from None
