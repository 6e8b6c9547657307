"""Artifact store: one directory per stage run, named by its cache key.

key = "<stage>-<digest>", digest over the stage name, its resolved config
sections, the keys of its input artifacts and the stage version. An artifact
is complete only when manifest.json exists; the manifest is written last,
atomically (temp file + rename), and lists every file with size and sha256.
A directory without a manifest is partial: the stage resumes in it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
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


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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

    def clear(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def finalize(self, key: str, stage: str, config: dict, inputs: dict[str, str],
                 metrics: dict, started: float) -> dict:
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
                    "versions": package_versions()}
        write_json_atomic(d / MANIFEST, manifest)
        return manifest

    def size(self, key: str) -> int:
        m = self.manifest(key)
        if m:
            return sum(f["size"] for f in m["files"].values())
        d = self.path(key)
        return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.exists() else 0
