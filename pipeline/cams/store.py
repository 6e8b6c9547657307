"""CAM seeds of one split in one zarr v3 group, one array per image, in one of two layouts
(attrs "layout"); the only reader/writer of CAM stores. ``read`` returns the image-size
float32 (C_present, H, W) maps in [0, 1] and the class ids, whatever the layout.

- "grid" (export_cams): what the network computes, not what is derived from it. The
  patch-grid CAMs of every scale and flip, the image's labels only, as the model emitted
  them (float32; float16 under AMP), flattened into one 1-D array. attrs: "shapes"
  [[F, C, h, w] per scale], "inputs" [[h, w] of each scaled input], "flip", "patch",
  "pad_input" (pipeline/cams/grids.py Geometry). ``read`` rebuilds the maps with
  pipeline/cams/grids.py assemble, the code the export itself would run, so they are the
  float32 maps of infer_cams (docs/reference/architecture.md, "The CAM store": the same in numpy).
- "image" (import_cams: CAMs of other code bases): the maps themselves, (C, H, W),
  float16 when given float16, else float32.

Common attrs: "classes" [ids], "size" [H, W], "complete". An array counts as written
only once ``complete`` is set, which happens after its data is stored, and while its
chunks are all there (every chunk is stored, zeros too, so a missing chunk file is
damage, not a fill value); anything else (a crash mid-write, a deleted chunk) is
rewritten. ``verify`` decodes an array, for the resume of a partial export
(pipeline.store.heal). Arrays are independent directories, so several processes may
write different images of the same group at once.

Writing many images: ``CamWriter`` runs the writes (compression + file I/O; blosc
releases the GIL) on a thread pool with a bounded queue.

Compression: one chunk per image (a read is one file), blosc-zstd with shuffle, then a
crc32c of the compressed bytes (zarr's codec: a damaged chunk fails its read instead of
decoding to garbage). Image maps: level 5, byte shuffle (the smooth maps' exponent bytes
compress well); grids: level 9, bit shuffle. bench/bench_cam_store.py prints the sizes.
"""
from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from pipeline.artifacts import CamArtifact
from pipeline.cams.grids import Geometry
from pipeline.fileio import advice, decoding, writing

# a checksum of the compressed chunk: blosc decodes a cut-short uncompressed ("memcpyed") chunk
# into garbage without an error, so a truncated chunk is caught by the crc instead
def _codecs(layout: str, dtype) -> tuple:
    size = np.dtype(dtype).itemsize
    if layout == "grid":
        return BloscCodec(cname="zstd", clevel=9, shuffle="bitshuffle", typesize=size), Crc32cCodec()
    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=size), Crc32cCodec()


class CamStoreError(ValueError):
    """A CAM store problem, naming the store and image."""


def _advice(path: Path) -> str:
    return advice(path, otherwise="write it again (`wsss run --force export_cams`)")


def store_path(export_dir: str | Path, split: str) -> Path:
    """The CAM store of ``split`` in an export_cams artifact."""
    return CamArtifact(export_dir).store(split)


class CamStore:
    def __init__(self, path: str | Path, mode: str = "r"):
        """mode 'r': an existing store; 'a': create if missing."""
        self.path = Path(path)
        if mode == "r" and not (self.path / "zarr.json").exists():
            raise CamStoreError(f"{self.path}: no CAM store (zarr group) here; {_advice(self.path)}")
        with decoding(self.path / "zarr.json", "CAM store (zarr group)", _advice(self.path)):
            self.group = zarr.open_group(str(self.path), mode=mode, zarr_format=3)
        self.writable = mode != "r"

    # ------------------------------------------------------------ writing
    def _create(self, image_id: str, data: np.ndarray, attrs: dict) -> None:
        if not self.writable:
            raise CamStoreError(f"{self.path}: opened read-only")
        if not np.isfinite(data).all():
            raise CamStoreError(f"{self.path}/{image_id}: CAMs hold NaN/inf")
        with writing(self.path / image_id):  # a full disk names the array, not just Errno 28
            arr = self.group.create_array(
                image_id, shape=data.shape, dtype=data.dtype, chunks=data.shape,
                compressors=_codecs(attrs["layout"], data.dtype), fill_value=0, overwrite=True,
                config={"write_empty_chunks": True}, attributes={**attrs, "complete": False})
            arr[...] = data
            arr.update_attributes({"complete": True})  # last: marks the data as trustworthy

    def write(self, image_id: str, cams: np.ndarray, classes: Iterable[int], size: tuple[int, int]) -> None:
        """Layout "image": image-size maps (C, H, W), kept float16 if given so, else float32."""
        classes = [int(c) for c in classes]
        cams = np.asarray(cams)
        if cams.ndim != 3 or cams.shape[0] != len(classes) or tuple(cams.shape[1:]) != tuple(size):
            raise CamStoreError(f"{self.path}/{image_id}: CAMs of shape {cams.shape} do not match "
                                f"{len(classes)} classes x size {tuple(size)}")
        dtype = np.float16 if cams.dtype == np.float16 else np.float32
        self._create(image_id, np.ascontiguousarray(cams, dtype=dtype),
                     {"layout": "image", "classes": classes, "size": [int(size[0]), int(size[1])]})

    def write_grids(self, image_id: str, grids: Sequence[np.ndarray], classes: Iterable[int],
                    size: tuple[int, int], inputs: Sequence[tuple[int, int]], flip: bool, geom: Geometry) -> None:
        """Layout "grid": per scale the (F, C, h, w) CAM grids of the image (F = 2 with flip: the
        image, then its mirror) and the scaled input size; kept float16 if all are, else float32."""
        classes = [int(c) for c in classes]
        grids = [np.asarray(g) for g in grids]
        F = 2 if flip else 1
        bad = [g.shape for g in grids if g.ndim != 4 or g.shape[:2] != (F, len(classes))]
        if not grids or bad or len(inputs) != len(grids):
            raise CamStoreError(f"{self.path}/{image_id}: CAM grids {[g.shape for g in grids]} for {len(inputs)} "
                                f"scaled inputs do not match {F} view(s) x {len(classes)} classes")
        dtype = np.float16 if all(g.dtype == np.float16 for g in grids) else np.float32
        flat = np.concatenate([g.astype(dtype, copy=False).ravel() for g in grids])
        self._create(image_id, flat, {
            "layout": "grid", "classes": classes, "size": [int(size[0]), int(size[1])],
            "shapes": [list(map(int, g.shape)) for g in grids], "inputs": [[int(h), int(w)] for h, w in inputs],
            "flip": bool(flip), **geom.to_dict()})

    # ------------------------------------------------------------ reading
    def _array(self, image_id: str):
        """The image's array, or None when it is absent, unfinished or short of a chunk."""
        try:
            arr = self.group[image_id]
        except (KeyError, FileNotFoundError, ValueError):  # ValueError: metadata that does not parse
            return None
        if not arr.attrs.get("complete") or arr.nchunks_initialized < arr.nchunks:
            return None
        return arr

    def is_complete(self, image_id: str) -> bool:
        return self._array(image_id) is not None

    def _decoded(self, image_id: str) -> tuple[np.ndarray, dict]:
        """(the stored values, attrs), checked for consistency."""
        where = self.path / image_id
        arr = self._array(image_id)
        if arr is None:
            what = "no CAMs" if not where.exists() else "an incomplete CAM array (interrupted write or lost chunk)"
            raise CamStoreError(f"{where}: {what} for image '{image_id}'; {_advice(where)}")
        with decoding(where, "CAM array", _advice(where)):
            data, attrs = arr[...], dict(arr.attrs)
        layout, n = attrs.get("layout", "image"), len(attrs.get("classes", []))
        if layout == "grid":
            ok = data.ndim == 1 and data.size == sum(int(np.prod(s)) for s in attrs["shapes"]) \
                and all(s[1] == n for s in attrs["shapes"])
        else:
            ok = data.ndim == 3 and data.shape[0] == n
        if not ok:
            raise CamStoreError(f"{where}: {layout} CAMs of shape {data.shape} do not match their attributes "
                                f"({n} classes); {_advice(where)}")
        return data, attrs

    def read(self, image_id: str) -> tuple[np.ndarray, list[int]]:
        """(cams float32 (C_present, H, W) in [0, 1], class ids), rebuilt from the grids where the
        layout is "grid"."""
        data, attrs = self._decoded(image_id)
        classes = list(attrs["classes"])
        if attrs.get("layout", "image") == "image":
            return data.astype(np.float32, copy=False), classes
        return reconstruct(unflatten(data, attrs["shapes"]), attrs), classes

    def read_grids(self, image_id: str) -> tuple[list[np.ndarray], dict]:
        """A "grid" array as stored: (per scale the (F, C, h, w) grids, attrs)."""
        data, attrs = self._decoded(image_id)
        if attrs.get("layout") != "grid":
            raise CamStoreError(f"{self.path / image_id}: layout '{attrs.get('layout', 'image')}', not grid")
        return unflatten(data, attrs["shapes"]), attrs

    def verify(self, image_id: str) -> None:
        """Decode the image's array; raises (naming it) unless it reads back whole."""
        self._decoded(image_id)

    def ids(self) -> list[str]:
        """Every image with an array (complete or not), sorted: one listing of the group's
        directory, no metadata read (zarr's array_keys opens every array)."""
        with os.scandir(self.path) as it:
            return sorted(e.name for e in it if e.is_dir() and os.path.exists(os.path.join(e.path, "zarr.json")))

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ``ids`` without a complete array (as ``is_complete``): each array's zarr.json read as
        plain JSON and its chunk files looked up, not opened through zarr (~20x cheaper per image),
        and only these ids' (an export shard asks of its own arrays, not of the whole store)."""
        return [i for i in ids if not _complete_on_disk(self.path / i)]

    def nbytes_stored(self, image_id: str) -> int:
        d = self.path / image_id
        return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _complete_on_disk(array_dir: Path) -> bool:
    """``complete`` set in the array's metadata and every chunk file of its regular grid there
    (zarr's nchunks_initialized == nchunks), read from the files this module's writer lays out."""
    try:
        meta = json.loads((array_dir / "zarr.json").read_bytes())
        if meta.get("node_type") != "array" or meta.get("attributes", {}).get("complete") is not True:
            return False
        shape, chunks = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        encoding = meta["chunk_key_encoding"]
        sep = encoding.get("configuration", {}).get("separator", "/" if encoding["name"] == "default" else ".")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    grid = itertools.product(*(range(-(-n // c) if c else 0) for n, c in zip(shape, chunks)))
    prefix = ["c"] if encoding["name"] == "default" else []
    return all((array_dir / sep.join(prefix + [str(i) for i in idx] or ["0"])).is_file() for idx in grid)


def unflatten(flat: np.ndarray, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The per-scale grids out of a "grid" array's 1-D values."""
    out, at = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[at:at + n].reshape(shape))
        at += n
    return out


def reconstruct(grids: Sequence[np.ndarray], attrs: dict) -> np.ndarray:
    """(C, H, W) float32 maps of one image from its stored grids and attrs (on the CPU, in
    float32: the same operations as the export's assemble), on one intra-op thread: torch's
    CPU bilinear upsampling rounds some elements differently with another thread count (its
    vectorised and scalar loops split the rows by thread), and a CAM must read the same in a
    pool worker, a Dask worker and the flow's process. The setting is this thread's only
    (OpenMP) and is restored."""
    import torch

    from pipeline.cams.grids import assemble
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            maps = assemble([torch.from_numpy(np.ascontiguousarray(g)) for g in grids],
                            [tuple(s) for s in attrs["inputs"]], tuple(attrs["size"]), bool(attrs["flip"]),
                            Geometry(attrs.get("patch"), bool(attrs.get("pad_input", False))))
    finally:
        torch.set_num_threads(threads)
    return maps[0].numpy()


def verify_array(path: str | Path) -> None:
    """``CamStore.verify`` of the array at ``path`` (<store>/<image id>): the
    per-image check of export_cams' layout."""
    path = Path(path)
    CamStore(path.parent).verify(path.name)


def verify_complete(path: str | Path) -> None:
    """Raise unless the array at ``path`` is complete (``missing``'s check, nothing decoded):
    the per-image check of import_cams' layout."""
    if not _complete_on_disk(Path(path)):
        raise CamStoreError(f"{path}: an incomplete CAM array (interrupted write or lost chunk)")


class CamWriter:
    """``store.write`` (``submit``) and ``store.write_grids`` (``submit_grids``) on ``threads``
    background threads (0: on the caller's
    thread). ``submit`` blocks while ``max_pending`` writes are queued, so
    memory stays flat; a failed write is raised by the next ``submit`` or by
    leaving the ``with`` block, which waits for every queued write."""

    def __init__(self, store: CamStore, threads: int = 4, max_pending: int = 16):
        self.store, self.max_pending = store, max(1, max_pending)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="cam-writer") if threads else None
        self.pending: set[Future] = set()

    def submit(self, image_id: str, cams: np.ndarray, classes: Iterable[int], size: tuple[int, int]) -> None:
        self._submit(self.store.write, image_id, cams, list(classes), tuple(size))

    def submit_grids(self, image_id: str, grids: Sequence[np.ndarray], classes: Iterable[int],
                     size: tuple[int, int], inputs: Sequence[tuple[int, int]], flip: bool, geom: Geometry) -> None:
        self._submit(self.store.write_grids, image_id, grids, list(classes), tuple(size), inputs, flip, geom)

    def _submit(self, write: Callable, *args) -> None:
        if self.pool is None:
            write(*args)
            return
        while len(self.pending) >= self.max_pending:
            self._collect(FIRST_COMPLETED)
        self.pending.add(self.pool.submit(write, *args))

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


def save_cam_gallery(path: Path, store: CamStore, table, image_ids: Sequence[str], title: str) -> None:
    """The CAM overlay gallery of ``image_ids`` (a fixed sample) of ``table`` (a LabelTable): per
    row the image and a heat overlay per present class, labelled with its classes; nothing for no ids."""
    if not image_ids:
        return
    from pipeline.data.datasets import read_image
    from pipeline.plots import heat_overlay, save_grid  # matplotlib: only where a gallery is drawn
    rows, labels = [], []
    for image_id in image_ids:
        cams, classes = store.read(image_id)
        image = read_image(table[image_id].image)
        rows.append([image] + [heat_overlay(image, c.astype(np.float32)) for c in cams])
        labels.append(image_id + ": " + ", ".join(table.classes[c] for c in classes))
    save_grid(path, rows, titles=["image", title], row_labels=labels)


def fixed_sample(ids: list[str], n: int) -> list[str]:
    """n ids spread evenly over the sorted list: the same pictures on every run."""
    ids = sorted(ids)
    if n <= 0 or not ids:
        return []
    return [ids[i] for i in np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(int)]
