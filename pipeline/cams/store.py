"""CAM seeds of one split in one zarr v3 group: one float16 array per image,
shape (C_present, H, W), attrs {"classes": [class ids], "size": [H, W],
"complete": bool}. The only reader/writer of CAM stores.

An array counts as written only once ``complete`` is set, which happens after
its data is stored; anything else (a crash mid-write) is rewritten. Arrays
are independent directories, so several processes may write different images
of the same group at once.

Writing many images: ``CamWriter`` runs ``write`` (compression + file I/O;
blosc releases the GIL) on a thread pool with a bounded queue.

Compression: one chunk per image (a read is one file), blosc-zstd level 5
with byte shuffle (typesize 2). CAMs are smooth upsampled maps, so the
shuffled float16 exponent bytes compress well: ~17% of the official float32
.npy dict on a 500x375 3-class map (bit-shuffle gave 25%, plain zstd 21%;
bench/bench_cam_store.py prints the figures).
"""
from __future__ import annotations

from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline.artifacts import CamArtifact

_COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=2)


class CamStoreError(ValueError):
    """A CAM store problem, naming the store and image."""


def store_path(export_dir: str | Path, split: str) -> Path:
    """The CAM store of ``split`` in an export_cams artifact."""
    return CamArtifact(export_dir).store(split)


class CamStore:
    def __init__(self, path: str | Path, mode: str = "r"):
        """mode 'r': an existing store; 'a': create if missing."""
        self.path = Path(path)
        if mode == "r" and not (self.path / "zarr.json").exists():
            raise CamStoreError(f"{self.path}: no CAM store (zarr group) here")
        self.group = zarr.open_group(str(self.path), mode=mode, zarr_format=3)
        self.writable = mode != "r"

    # ------------------------------------------------------------ writing
    def write(self, image_id: str, cams: np.ndarray, classes: Iterable[int], size: tuple[int, int]) -> None:
        classes = [int(c) for c in classes]
        if not self.writable:
            raise CamStoreError(f"{self.path}: opened read-only")
        if cams.ndim != 3 or cams.shape[0] != len(classes) or tuple(cams.shape[1:]) != tuple(size):
            raise CamStoreError(f"{self.path}/{image_id}: CAMs of shape {cams.shape} do not match "
                                f"{len(classes)} classes x size {tuple(size)}")
        if not np.isfinite(cams).all():
            raise CamStoreError(f"{self.path}/{image_id}: CAMs hold NaN/inf")
        arr = self.group.create_array(
            image_id, shape=cams.shape, dtype="float16", chunks=cams.shape, compressors=_COMPRESSOR,
            fill_value=0, overwrite=True,
            attributes={"classes": classes, "size": [int(size[0]), int(size[1])], "complete": False})
        arr[...] = np.asarray(cams, dtype=np.float16)
        arr.update_attributes({"complete": True})  # last: marks the data as trustworthy

    # ------------------------------------------------------------ reading
    def is_complete(self, image_id: str) -> bool:
        try:
            arr = self.group[image_id]
        except (KeyError, FileNotFoundError):
            return False
        return bool(arr.attrs.get("complete"))

    def read(self, image_id: str) -> tuple[np.ndarray, list[int]]:
        """(cams float16 (C_present, H, W), class ids)."""
        try:
            arr = self.group[image_id]
        except (KeyError, FileNotFoundError):
            raise CamStoreError(f"{self.path}: no CAMs for image '{image_id}'") from None
        attrs = arr.attrs.asdict()
        if not attrs.get("complete"):
            raise CamStoreError(f"{self.path}/{image_id}: array incomplete (interrupted write); rerun export_cams")
        return arr[...], list(attrs["classes"])

    def ids(self) -> list[str]:
        """Every image with an array (complete or not), sorted."""
        return sorted(self.group.array_keys())

    def missing(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if not self.is_complete(i)]

    def nbytes_stored(self, image_id: str) -> int:
        d = self.path / image_id
        return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


class CamWriter:
    """``store.write`` on ``threads`` background threads (0: on the caller's
    thread). ``submit`` blocks while ``max_pending`` writes are queued, so
    memory stays flat; a failed write is raised by the next ``submit`` or by
    leaving the ``with`` block, which waits for every queued write."""

    def __init__(self, store: CamStore, threads: int = 4, max_pending: int = 16):
        self.store, self.max_pending = store, max(1, max_pending)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="cam-writer") if threads else None
        self.pending: set[Future] = set()

    def submit(self, image_id: str, cams: np.ndarray, classes: Iterable[int], size: tuple[int, int]) -> None:
        if self.pool is None:
            self.store.write(image_id, cams, classes, size)
            return
        while len(self.pending) >= self.max_pending:
            self._collect(FIRST_COMPLETED)
        self.pending.add(self.pool.submit(self.store.write, image_id, cams, list(classes), tuple(size)))

    def _collect(self, when) -> None:
        done, self.pending = wait(self.pending, return_when=when)
        for f in done:
            f.result()  # re-raises the write's error

    def __enter__(self) -> "CamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is None:
            return
        try:  # queued writes finish even when the caller failed: what was computed is kept
            if exc_type is None:
                self._collect(ALL_COMPLETED)
            else:
                wait(self.pending)  # the caller's error wins over a write's
        finally:
            self.pool.shutdown(wait=True)


def fixed_sample(ids: list[str], n: int) -> list[str]:
    """n ids spread evenly over the sorted list: the same pictures on every run."""
    ids = sorted(ids)
    if n <= 0 or not ids:
        return []
    return [ids[i] for i in np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(int)]
