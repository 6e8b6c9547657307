"""Artifact store: one directory per stage run, named by its cache key.

key = "<stage>-<digest>", digest over the stage name, its resolved config
sections, the keys of its input artifacts and the stage version. An artifact
is complete only when manifest.json exists; the manifest is written last,
atomically (temp file + rename), and lists every file with size and sha256.
A directory without a manifest is partial: the stage resumes in it.

Several processes (and machines sharing the store's file system) may run
stages against one store: ArtifactLock lets one of them compute a given
artifact at a time while the others wait and then use its result.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

MANIFEST = "manifest.json"
State = Literal["cached", "partial", "missing", "corrupt"]
_VERSIONED = ("torch", "torchvision", "open_clip_torch", "timm", "mmsegmentation", "mmengine",
              "mmcv", "mmcv-lite", "zarr", "prefect", "numpy", "pydensecrf2")


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def artifact_key(stage: str, version: str, sections: dict, input_keys: dict[str, str]) -> str:
    return f"{stage}-" + digest({"stage": stage, "version": version, "config": sections,
                                 "inputs": input_keys})[:16]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def unique_tmp(path: Path) -> Path:
    """Temporary sibling of ``path`` for an atomic write (write, then os.replace):
    unique per process and thread, so two writers of one file never share it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")


def torch_save_atomic(obj: Any, path: Path) -> None:
    """torch.save via a unique temp file and a rename. Through a file object:
    given a path, torch names the archive's root folder after the (temp) file
    name, which would put the writer's pid into the bytes."""
    import torch
    tmp = unique_tmp(path)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = unique_tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


class Store:
    def __init__(self, work_dir: str | Path):
        self.root = Path(work_dir)

    def path(self, key: str) -> Path:
        return self.root / key

    def manifest(self, key: str) -> dict | None:
        p = self.path(key) / MANIFEST
        return json.loads(p.read_text()) if p.exists() else None

    def problems(self, key: str) -> list[str]:
        """Files of a finished artifact that are gone or no longer match their
        sha256. A file whose size and mtime are unchanged is trusted without
        rehashing (as rsync does), so checking a large CAM store stays cheap."""
        m = self.manifest(key)
        if m is None:
            return ["no manifest"]
        base = self.path(key)
        out = []
        for rel, info in m["files"].items():
            f = base / rel
            if not f.exists():
                out.append(f"{f}: missing")
                continue
            st = f.stat()
            if st.st_size != info["size"] or (st.st_mtime_ns != info.get("mtime_ns")
                                             and sha256_file(f) != info["sha256"]):
                out.append(f"{f}: changed since the manifest was written")
        return out

    def state(self, key: str, verify: bool = True) -> State:
        d = self.path(key)
        if not d.exists():
            return "missing"
        if not (d / MANIFEST).exists():
            return "partial"
        if verify and self.problems(key):
            return "corrupt"
        return "cached"

    def open(self, key: str) -> Path:
        """Directory to (re)run a stage in. A corrupt artifact loses its manifest
        so that the stage recomputes it; a partial one is kept to resume."""
        d = self.path(key)
        if (d / MANIFEST).exists():
            (d / MANIFEST).unlink()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def finalize(self, key: str, stage: str, config: dict, inputs: dict[str, str],
                 metrics: dict, started: float, resources: dict | None = None) -> dict:
        d = self.path(key)
        files = {}
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            rel = f.relative_to(d).as_posix()
            if rel == MANIFEST or f.name.startswith("."):
                continue
            st = f.stat()
            files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(f)}
        manifest = {"key": key, "stage": stage, "inputs": inputs, "config": config,
                    "metrics": metrics, "files": files,
                    "timings": {"started": started, "finished": time.time(),
                                "seconds": round(time.time() - started, 3)},
                    "resources": resources or {},  # pipeline.resources.Meter: wall time, device, peak memory
                    "versions": package_versions()}
        write_json_atomic(d / MANIFEST, manifest)
        return manifest

    def size(self, key: str) -> int:
        m = self.manifest(key)
        if m:
            return sum(f["size"] for f in m["files"].values())
        d = self.path(key)
        return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.exists() else 0


class LockLost(RuntimeError):
    """The lease on an artifact was taken over while this process computed it."""


class ArtifactLock:
    """The right to compute one artifact, across processes and machines.

    A filelock SoftFileLease: a marker file <store>/.locks/<key>.lock created
    with O_EXCL, naming host, pid and process start time, and touched by a
    heartbeat thread every lease_s / 3. Waiters poll it; they take it over
    at once when its holder is a dead process on their own host, and when
    the marker has not changed for lease_s (holder's machine lost or hung).
    The file system must give atomic exclusive create and rename, and show
    other clients' mtime changes within lease_s (NFSv3+: keep lease_s well
    above the attribute cache time, acregmax, 60 s by default).
    A holder whose lease was taken over notices it (on_compromise) and must
    not finish: check() raises LockLost before the manifest is written.
    """

    def __init__(self, store: Store, key: str, lease_s: float = 180.0, poll_s: float = 1.0):
        from filelock import SoftFileLease
        self.key = key
        self.path = store.root / ".locks" / f"{key}.lock"
        self.holder_file = self.path.with_suffix(".holder.json")  # who and since when, for waiters' logs
        self.lost: str | None = None
        self.waited = False
        self._lease = SoftFileLease(str(self.path), lease_duration=lease_s, poll_interval=poll_s,
                                    on_compromise=self._on_lost, thread_local=False)

    def _on_lost(self, compromise) -> None:
        self.lost = compromise.reason

    def holder(self) -> str:
        """'host:pid since <time>' of the current holder, as far as the lock files tell."""
        owner = self._lease.owner
        if owner is None:
            return "another process"
        who = f"{owner.hostname}:{owner.pid}"
        try:
            note = json.loads(self.holder_file.read_text())
            if note.get("holder") == who:
                return f"{who} since {note['since']}"
        except (OSError, ValueError, KeyError):
            pass
        return who

    def acquire(self, log=None, report_every_s: float = 60.0) -> "ArtifactLock":
        from filelock import Timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lease.acquire(blocking=False)
        except Timeout:
            self.waited = True
            started = time.monotonic()
            while True:
                if log:
                    log(f"waiting for {self.key} held by {self.holder()} "
                        f"(waited {time.monotonic() - started:.0f} s)")
                try:
                    self._lease.acquire(timeout=report_every_s)
                    break
                except Timeout:
                    continue
        owner = self._lease.owner
        write_json_atomic(self.holder_file, {
            "holder": f"{owner.hostname}:{owner.pid}" if owner else f"{socket.gethostname()}:{os.getpid()}",
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z")})
        return self

    def check(self) -> None:
        if self.lost:
            raise LockLost(f"{self.path}: this process lost its lease on {self.key} ({self.lost}); another "
                           "process took it over after the lease expired, so this one does not finish it")

    def release(self) -> None:
        if self.lost is None:
            self.holder_file.unlink(missing_ok=True)
        self._lease.release()

