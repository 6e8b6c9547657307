"""Artifact store: one directory per stage run, named by its cache key.

key = "<stage>-<digest>", digest over the stage name, its resolved config
sections, the keys of its input artifacts and the stage version. An artifact
is complete only when manifest.json exists; the manifest is written last,
atomically (temp file + rename), and lists every file with size and sha256.
A directory without a manifest is partial: the stage resumes in it.

Before a damaged (corrupt) or partial artifact is resumed, ``Store.heal``
removes what cannot be trusted, so that a per-image stage, which skips the
images whose output exists, redoes exactly those: files that fail their
manifest entry, or (no manifest) per-image outputs that do not decode.
A stage declares its per-image outputs as ``PerImage`` layouts. A training stage's
resume checkpoint is not part of its result: a damaged one is dropped (RESUME_ONLY).

Several processes may compute against one store: pipeline/lock.py ArtifactLock
lets one of them compute a given artifact at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from pipeline.artifacts import Layout, ModelArtifact
from pipeline.fileio import UnreadableFile, atomic_write, decoding, json_rows, sha256_file
from pipeline.utils import files_under, tree_bytes

MANIFEST = "manifest.json"
PREVIOUS = ".manifest.previous.json"  # the manifest of a finished run being healed (Store.open -> finalize)
# files a stage reads only to resume an unfinished run (a training stage's checkpoint.pt): the finished
# result does not depend on them, so a damaged or missing one is dropped from a finished artifact (file
# and manifest entry) rather than making it corrupt, whose recomputation would train from scratch
RESUME_ONLY = (ModelArtifact.checkpoint.name,)
# TensorBoard event files (pipeline/artifacts.py Layout.tensorboard, also an ensemble member's): written
# while training, not the result, so left out of the manifest: a damaged or missing one never retrains
NOT_RESULT = Layout.tensorboard.name
State = Literal["cached", "partial", "missing", "corrupt"]
_VERSIONED = ("torch", "torchvision", "open_clip_torch", "timm", "mmsegmentation", "mmengine",
              "mmcv", "mmcv-lite", "zarr", "prefect", "numpy", "pydensecrf2")


@dataclass(frozen=True)
class PerImage:
    """One output per image of a per-image stage: <artifact>/<folder>/<id><suffix>,
    a file, or with ``is_dir`` a directory (a zarr array). ``verify(path)``
    raises when the output cannot be decoded."""
    folder: str
    suffix: str
    verify: Callable[[Path], Any]
    is_dir: bool = False

    def path(self, out: Path, image_id: str) -> Path:
        return Path(out) / self.folder / f"{image_id}{self.suffix}"

    def pending(self, out: Path, ids: Sequence[str]) -> list[str]:
        """The ids without an output: what a resumed stage computes (one listing of the folder)."""
        d = Path(out) / self.folder
        try:
            with os.scandir(d) as it:
                present = {e.name for e in it}
        except FileNotFoundError:
            present = set()
        return [i for i in ids if f"{i}{self.suffix}" not in present]

    def unit_of(self, rel: str) -> Optional[str]:
        """The per-image output (relative path) that artifact file ``rel`` belongs to, if any."""
        if not rel.startswith(self.folder + "/"):
            return None
        first, _, below = rel[len(self.folder) + 1:].partition("/")
        if (self.is_dir and below) or (not self.is_dir and not below and first.endswith(self.suffix)
                                       and not first.startswith(".")):
            return f"{self.folder}/{first}"
        return None

    def image_of(self, unit: str) -> str:
        """The image id of per-image output ``unit`` (as ``unit_of`` returns it)."""
        name = unit[len(self.folder) + 1:]
        return name[:len(name) - len(self.suffix)] if self.suffix else name

    def outputs(self, out: Path) -> list[Path]:
        d = Path(out) / self.folder
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if not p.name.startswith(".") and p.name.endswith(self.suffix)
                      and (p.is_dir() if self.is_dir else p.is_file()))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _failure(verify: Callable[[Path], Any], path: Path) -> Optional[str]:
    try:
        verify(path)
    except Exception as e:  # whatever the decoder raises: the output is not trusted
        return f"{type(e).__name__}: {e}"
    return None


def previous_files(out: Path) -> dict:
    """The file table of the manifest ``Store.open`` set aside in artifact dir ``out`` ({} if none or unreadable)."""
    try:
        return dict(json.loads((Path(out) / PREVIOUS).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def layout_bytes(out: Path, layout: PerImage, redone: Sequence[str]) -> int:
    """Bytes of the files below out/<layout.folder> once a resume has (re)written the outputs of
    the images ``redone``: theirs and the folder's own files are stat-ed, the other outputs' sizes
    are the manifest's that ``Store.open`` set aside (the runner checked every file against it,
    and its heal removed the outputs of those that failed, so the others are as it says; one left
    by an interrupted heal: what that heal rewrote is the same output, so the same bytes). Without
    that manifest (a first or forced run) every file is stat-ed."""
    d, previous = Path(out) / layout.folder, previous_files(out)
    if not previous:
        return tree_bytes(d)
    units = {f"{layout.folder}/{i}{layout.suffix}" for i in redone}
    kept = sum(info["size"] for rel, info in previous.items() if (u := layout.unit_of(rel)) and u not in units)
    with os.scandir(d) as it:
        own = sum(e.stat().st_size for e in it if e.is_file() and not layout.unit_of(f"{layout.folder}/{e.name}"))
    return kept + own + sum(tree_bytes(Path(out) / u) for u in units)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def artifact_key(stage: str, version: str, sections: dict, input_keys: dict[str, str]) -> str:
    return f"{stage}-" + digest({"stage": stage, "version": version, "config": sections,
                                 "inputs": input_keys})[:16]


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# artifact dir -> (its manifest's signature, damage) of the last check in this process that found
# damage: the runner's recheck under the lock reuses it while the manifest is that same file (Store.check)
_CHECKED: dict[str, tuple[tuple, dict[str, str]]] = {}


def _signature(path: Path) -> Optional[tuple]:
    """(inode, size, mtime) of a file, None when there is none: a manifest is only ever replaced
    (atomic rename) or moved away, so an unchanged signature is an unchanged manifest."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def write_manifest(path: Path, manifest: dict) -> None:
    """The manifest as indented JSON with its file table last, one line per file (json_rows)."""
    head = json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=2, default=str)
    with atomic_write(path) as tmp:
        tmp.write_text(head[:-2] + ',\n  "files": ' + json_rows(manifest["files"], "  ") + "\n}")


class Store:
    def __init__(self, work_dir: str | Path):
        self.root = Path(work_dir)
        # by key: (layouts, image ids) of the finished artifact ``heal`` has just repaired, for
        # ``finalize``: the other images' outputs are as the set-aside manifest lists them
        self._healed: dict[str, tuple[tuple[PerImage, ...], frozenset[str]]] = {}

    def path(self, key: str) -> Path:
        return self.root / key

    def manifest(self, key: str) -> dict | None:
        p = self.path(key) / MANIFEST
        if not p.exists():
            return None
        with decoding(p, "artifact manifest"):
            doc = json.loads(p.read_text())
            if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
                raise ValueError("no 'files' table")
        return doc

    def damaged(self, key: str) -> dict[str, str]:
        """{relative path: reason} of the files of a finished artifact that are
        gone or no longer match their size / sha256. A file whose size and mtime
        are unchanged is trusted without rehashing (as rsync does), so checking a
        large CAM store stays cheap. A RESUME_ONLY file that fails is dropped
        here (file and manifest entry), not reported."""
        try:
            m = self.manifest(key)
        except UnreadableFile as e:
            return {MANIFEST: str(e)}
        if m is None:
            return {MANIFEST: "no manifest"}
        base, out = str(self.path(key)), {}
        for rel, info in m["files"].items():  # os.stat of strings: pathlib's objects cost more than the stat
            try:
                st = os.stat(os.path.join(base, rel))
            except (FileNotFoundError, NotADirectoryError):
                out[rel] = "missing"
                continue
            if st.st_size != info["size"]:
                out[rel] = f"size {st.st_size} bytes, the manifest says {info['size']}"
            elif st.st_mtime_ns != info.get("mtime_ns") and sha256_file(Path(base, rel)) != info["sha256"]:
                out[rel] = "content changed since the manifest was written (sha256)"
        resume_only = [rel for rel in out if rel in RESUME_ONLY]
        if resume_only:
            self._drop(key, m, resume_only)
        return {rel: why for rel, why in out.items() if rel not in resume_only}

    def _drop(self, key: str, manifest: dict, rels: Sequence[str]) -> None:
        """Remove files of a finished artifact and their manifest entries (RESUME_ONLY)."""
        try:
            for rel in rels:
                (self.path(key) / rel).unlink(missing_ok=True)
                manifest["files"].pop(rel)
            write_manifest(self.path(key) / MANIFEST, manifest)
        except OSError:  # a read-only store: the file stays, still no reason to recompute
            pass

    def problems(self, key: str, damage: Optional[dict[str, str]] = None) -> list[str]:
        """'path: reason' of every file of a finished artifact that fails its manifest entry
        (``damage``: what ``damaged`` found, when it has been asked already)."""
        base = self.path(key)
        return [f"{base / rel}: {why}" for rel, why in (self.damaged(key) if damage is None else damage).items()]

    def check(self, key: str, reuse: bool = False) -> tuple[State, dict[str, str]]:
        """The artifact's state and, when it is corrupt, what ``damaged`` found: one pass over its
        files, which the runner hands on to ``heal`` rather than making another. ``reuse`` (the
        recheck under the artifact's lock): the damage the last check in this process found, once,
        if the manifest is the same file since (``_CHECKED``); a run that finished or began the
        artifact meanwhile has replaced or moved it, and the files are looked at again. A check
        that found nothing is never reused: "cached" under the lock skips the computation."""
        d = self.path(key)
        if not d.exists():
            return "missing", {}
        seen = _signature(d / MANIFEST)
        if seen is None:
            return "partial", {}
        where = os.path.realpath(d)  # the flow's tasks see the store by its resolved path
        memo = _CHECKED.pop(where, None)
        if reuse and memo and memo[0] == seen:
            return "corrupt", memo[1]
        damage = self.damaged(key)
        if damage and _signature(d / MANIFEST) == seen:  # not rewritten meanwhile
            _CHECKED[where] = (seen, damage)
        return ("corrupt" if damage else "cached"), damage

    def state(self, key: str) -> State:
        return self.check(key)[0]

    def heal(self, key: str, layouts: Sequence[PerImage] = (), threads: int = 4,
             damage: Optional[dict[str, str]] = None) -> list[str]:
        """Remove what a resumed stage must not trust, before it resumes; returns
        'relative path: reason' of each removal. With a manifest (a corrupt
        artifact) every file that fails its entry goes, and with it the rest of
        its image's output (a zarr array's other files); files that pass are
        kept. Without one (a partial artifact) every per-image output is decoded
        by its layout's ``verify`` and removed if that fails, so an output cut
        short by a kill or a full disk is redone, not trusted. ``damage``: what ``damaged`` has
        just found (``check`` under the artifact's lock), not looked for again."""
        d = self.path(key)
        self._healed.pop(key, None)
        if not d.exists():
            return []
        removed = []
        if (d / MANIFEST).exists() and MANIFEST not in (bad := self.damaged(key) if damage is None else damage):
            redone = set()
            for rel, why in bad.items():
                lay, unit = next(((lay, u) for lay in layouts if (u := lay.unit_of(rel))), (None, None))
                _remove(d / (unit or rel))
                removed.append(f"{rel}: {why}")
                if unit:
                    redone.add(lay.image_of(unit))
            self._healed[key] = (tuple(layouts), frozenset(redone))
            return removed
        for lay in layouts:
            paths = lay.outputs(d)
            with ThreadPoolExecutor(max(1, threads)) as pool:  # decoders release the GIL (zlib, blosc)
                failures = list(pool.map(lambda p: _failure(lay.verify, p), paths))
            for p, why in zip(paths, failures):
                if why:
                    _remove(p)
                    removed.append(f"{p.relative_to(d).as_posix()}: {why}")
        return removed

    def open(self, key: str, fresh: bool = False) -> Path:
        """Directory to (re)run a stage in. A corrupt artifact loses its manifest
        so that the stage recomputes it; a partial one is kept to resume (call
        ``heal`` first); ``fresh`` empties it (a forced recomputation)."""
        d = self.path(key)
        if fresh:
            shutil.rmtree(d, ignore_errors=True)
        if (d / MANIFEST).exists():  # kept aside (a dot-file) for ``finalize`` to reuse its hashes
            os.replace(d / MANIFEST, d / PREVIOUS)
        else:  # partial (a set-aside manifest predates an interrupted run) or fresh: finalize lists all
            self._healed.pop(key, None)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _intact(self, key: str, previous: dict) -> dict[str, dict]:
        """{per-image output: its files' entries in the set-aside manifest} of the outputs that
        ``heal`` left (it has just checked every file against that manifest and removed the whole
        output of any image with a failing file; the resume writes only those images'). Empty
        unless this store healed this finished artifact and opened it since."""
        healed = self._healed.pop(key, None)
        if healed is None:
            return {}
        layouts, redone = healed
        intact: dict[str, dict] = {}
        for rel, info in previous.items():
            for lay in layouts:
                if (unit := lay.unit_of(rel)) is not None:
                    if lay.image_of(unit) not in redone:
                        intact.setdefault(unit, {})[rel] = info
                    break
        return intact

    def finalize(self, key: str, stage: str, config: dict, inputs: dict[str, str],
                 metrics: dict, started: float, resources: dict | None = None) -> dict:
        """Write the manifest: every file with size, mtime and sha256. A file whose size and mtime
        match its entry in the manifest of the previous run in this directory keeps that hash
        (the rule ``damaged`` trusts), so a heal hashes the files it rewrote, not the whole store.
        After ``heal`` of a finished artifact, the per-image outputs it left are taken from that
        manifest without a look (``_intact``): a heal lists what it rewrote, not the whole store."""
        d = self.path(key)
        previous, files = previous_files(d), {}
        intact = self._intact(key, previous)
        for rel, st in sorted(files_under(d, intact), key=lambda f: f[0].split("/")):  # the order of Path.rglob
            if st is None:
                files.update(intact[rel])
                continue
            if (rel == MANIFEST or rel.rpartition("/")[2].startswith(".")
                    or NOT_RESULT in rel.split("/")[:-1]):  # event files: not the result
                continue
            old = previous.get(rel) or {}
            same = old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns and old.get("sha256")
            files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                          "sha256": old["sha256"] if same else sha256_file(d / rel)}
        manifest = {"key": key, "stage": stage, "inputs": inputs, "config": config,
                    "metrics": metrics, "files": files,
                    "timings": {"started": started, "finished": time.time(),
                                "seconds": round(time.time() - started, 3)},
                    "resources": resources or {},  # pipeline.resources.Meter: wall time, device, peak memory
                    "versions": package_versions()}
        write_manifest(d / MANIFEST, manifest)
        (d / PREVIOUS).unlink(missing_ok=True)
        return manifest

    def size(self, key: str) -> int:
        try:
            m = self.manifest(key)
        except UnreadableFile:
            m = None
        if m:
            return sum(f["size"] for f in m["files"].values())
        return tree_bytes(self.path(key))
