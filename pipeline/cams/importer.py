"""Import a folder of per-image CAM files (pipeline/cams/formats/) into a CAM store, checking
each file against the image it belongs to, and export a store back into those formats. Also the
work of the import_cams stage (run): the folder of cfg.import_cams, checked against
the label table of export_cams.split, as the same CAM store export_cams writes
(pipeline/artifacts.py ImportedCamArtifact), so pseudo_masks (every route), evaluate and the
galleries read it the same way when export_cams.source is 'import'. The key covers the folder's
fingerprint (names + sizes + mtimes, or sha256 with import_cams.hash: full).

Checks (each error names the file): every image of the split has a file; no class outside the
image's labels (``extra_classes``: error | drop); every label has a map (``missing_classes``:
error | zero: an all-zero map); maps of the image's size (else error, or bilinear resize with
``resize``, align_corners=False as the official generation scripts upsample); finite values;
values in [0, 1] (else error, or per-class min-max normalisation with ``normalize``, eps 1e-8 as
export_cams). All files, missing ones included, are checked before the error is raised, which
lists the first 20 problems and their count; the store is then removed, so a failed import
leaves no CAMs and no empty store behind.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.artifacts import ImportedCamArtifact
from pipeline.cams.formats import (CamFormatError, ClassIndex, get_format, read_cam_file,
                                   write_cam_file)
from pipeline.cams.store import CamStore, CamWriter, fixed_sample, save_cam_gallery, verify_complete
from pipeline.store import PerImage

log = logging.getLogger("wsss")

MAX_LISTED = 20


class CamImportError(ValueError):
    """CAM files that do not fit the dataset, listing the files."""


@dataclass(frozen=True)
class ImportOptions:
    fmt: str
    index: ClassIndex = ClassIndex()
    extra_classes: str = "error"    # error | drop
    missing_classes: str = "error"  # error | zero
    resize: bool = False
    normalize: bool = False
    options: dict = field(default_factory=dict)  # the format's own options (CamFormat.options)

    @classmethod
    def from_cfg(cls, ic) -> "ImportOptions":
        """From the import_cams config section."""
        from pipeline.data.classes import COCO_CATEGORY_IDS
        ids = tuple(COCO_CATEGORY_IDS) if ic.class_index == "coco_category" else None
        own = get_format(ic.format).options
        return cls(fmt=ic.format, index=ClassIndex(ic.class_base, ids), extra_classes=ic.extra_classes,
                   missing_classes=ic.missing_classes, resize=ic.resize, normalize=ic.normalize,
                   options={k: getattr(ic, k) for k in (own.model_fields if own else ())})


def cam_file(folder: Path, image_id: str, fmt: str) -> Path:
    return Path(folder) / f"{image_id}{get_format(fmt).suffix}"


def _resize(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    if cams.shape[0] == 0:
        return np.zeros((0, *size), np.float32)
    return F.interpolate(torch.from_numpy(cams)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()


def conform(path: Path, cams: np.ndarray, classes: list[int], labels: Sequence[int], size: tuple[int, int],
            opts: ImportOptions, counts: Optional[dict] = None) -> np.ndarray:
    """The file's CAMs as (len(labels), H, W) float32 in [0, 1], one map per image label in
    ``labels`` order; CamFormatError naming the file and the problem."""
    counts = counts if counts is not None else {}
    if not np.isfinite(cams).all():
        raise CamFormatError(f"{path}: {int((~np.isfinite(cams)).sum())} non-finite values (NaN/inf)")
    extra, missing = [c for c in classes if c not in labels], [c for c in labels if c not in classes]
    for found, policy, counted, why in (
            (extra, opts.extra_classes, "dropped_classes", f"classes {extra} are not among the image's labels "
             f"{list(labels)} (import_cams.extra_classes: drop ignores them)"),
            (missing, opts.missing_classes, "zero_filled_classes", f"no CAM for the image's classes {missing} "
             f"(labels {list(labels)}; import_cams.missing_classes: zero fills an all-zero map)")):
        if found and policy == "error":
            raise CamFormatError(f"{path}: {why}")
        if found:
            counts[counted] = counts.get(counted, 0) + len(found)
    if cams.shape[0] and tuple(cams.shape[1:]) != tuple(size):
        if not opts.resize:
            raise CamFormatError(f"{path}: CAMs of size {cams.shape[1]}x{cams.shape[2]} (HxW), the image is "
                                 f"{size[0]}x{size[1]} (import_cams.resize: true resizes bilinearly)")
        cams = _resize(cams, size)
        counts["resized_images"] = counts.get("resized_images", 0) + 1
    pos = {c: i for i, c in enumerate(classes)}
    out = np.stack([cams[pos[c]] if c in pos else np.zeros(size, np.float32) for c in labels]) if labels \
        else np.zeros((0, *size), np.float32)
    if opts.normalize:
        lo = out.min(axis=(1, 2), keepdims=True) if out.size else 0
        hi = out.max(axis=(1, 2), keepdims=True) if out.size else 0
        out = (out - lo) / (hi - lo + 1e-8)
        counts["normalized_images"] = counts.get("normalized_images", 0) + 1
    elif out.size and (out.min() < 0 or out.max() > 1):
        raise CamFormatError(f"{path}: values in [{out.min():.4g}, {out.max():.4g}], outside [0, 1] "
                             "(import_cams.normalize: true min-max normalises each class)")
    return out.astype(np.float32)


def import_folder(records: Sequence, folder: Path, opts: ImportOptions, store: CamStore, num_classes: int,
                  threads: int = 4, progress: Callable = lambda it, total: it,
                  pending: Optional[Sequence[str]] = None) -> dict:
    """Import the CAM file of every record (id, labels, height, width) into ``store``; complete
    images already in the store are kept (a resumed import). ``pending``: the ids still to import
    where the caller knows them (the import_cams stage, healed by the runner: the ids without an
    array); by default those without a complete array. Returns counts."""
    folder = Path(folder)
    counts: dict = {}
    problems: list[str] = []  # every file's, a missing one's too (read_cam_file: "file missing")
    from pipeline.utils import read_ahead

    def load(r):
        path = cam_file(folder, r.id, opts.fmt)
        try:
            cams, classes = read_cam_file(path, opts.fmt, opts.index, num_classes, **opts.options)
            return conform(path, cams, classes, r.labels, (r.height, r.width), opts, counts), None
        except CamFormatError as e:
            return None, str(e)

    try:
        if not folder.is_dir():
            raise CamImportError(f"{folder}: CAM folder not found (import_cams.dir)")
        missing = set(store.missing([r.id for r in records]) if pending is None else pending)
        todo = [r for r in records if r.id in missing]
        with CamWriter(store, threads=threads, max_pending=2 * max(threads, 1)) as writer:
            for r, (cams, problem) in progress(read_ahead(todo, load, max(threads, 1)), len(todo)):
                if problem:
                    problems.append(problem)
                elif not problems:  # after the first problem: check the rest, write nothing more
                    writer.submit(r.id, cams, r.labels, (r.height, r.width))
        if problems:
            more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            raise CamImportError(f"{len(problems)} of {len(records)} CAM files in {folder} do not fit the dataset "
                                 f"(format {opts.fmt}):\n  " + "\n  ".join(problems[:MAX_LISTED]) + more)
    except CamImportError:
        shutil.rmtree(store.path, ignore_errors=True)  # no CAMs, nor an empty store, after a failed import
        raise
    stems = {p.stem for p in folder.glob(f"*{get_format(opts.fmt).suffix}")}
    counts["files_not_in_split"] = len(stems - {r.id for r in records})
    counts["imported"] = len(todo)
    return counts


def export_store(store: CamStore, ids: Sequence[str], fmt: str, out_dir: Path, index: ClassIndex = ClassIndex(),
                 progress: Callable = lambda it, total: it) -> int:
    """Write the CAMs of ``ids`` from ``store`` as ``fmt`` files into ``out_dir``; returns how many."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for image_id in progress(ids, len(ids)):
        cams, classes = store.read(image_id)
        write_cam_file(out_dir, image_id, fmt, cams, classes, index)
    return len(ids)


# ------------------------------------------------------------------ the import_cams stage
def per_image(cfg) -> tuple[PerImage, ...]:
    """One zarr array per image in the split's group: before a resume the runner removes the whole
    array of a file that fails its manifest entry (or, without a manifest, every incomplete array),
    so the resume imports the images without one (one listing, no array opened)."""
    folder = ImportedCamArtifact(Path()).store(cfg.export_cams.split).as_posix()
    return (PerImage(folder, "", verify_complete, is_dir=True),)


def source_label(folder, fmt: str) -> str:
    return f"imported: {Path(folder).resolve()}, {fmt}"


def run(cfg, inputs, out: Path) -> dict:
    from pipeline.data.datasets import LabelTable
    from pipeline.fileio import write_json_atomic
    from pipeline.store import layout_bytes
    from pipeline.utils import progress

    ic, split, art = cfg.import_cams, cfg.export_cams.split, ImportedCamArtifact(out)
    if ic.dir is None:
        raise ValueError("import_cams.dir is not set: name the folder of CAM files")
    table = LabelTable.from_artifact(inputs["prepare_data"], split).with_sizes()
    path, (layout,) = art.store(split), per_image(cfg)
    todo = layout.pending(out, table.ids())  # the runner has healed the store: an array there is complete
    counts = import_folder(table.records, Path(ic.dir), ImportOptions.from_cfg(ic), CamStore(path, mode="a"),
                           table.num_classes, threads=cfg.export_cams.writer_threads,
                           progress=lambda it, n: progress(it, f"import_cams {split} ({ic.format})", total=n),
                           pending=todo)
    store = CamStore(path)
    label = source_label(ic.dir, ic.format)
    write_json_atomic(art.source, {"dir": str(Path(ic.dir).resolve()), "format": ic.format, "label": label})
    if not art.gallery.exists():  # a heal keeps it
        save_cam_gallery(art.gallery, store, table, fixed_sample(table.ids(), ic.gallery_size),
                         f"imported CAM per class ({ic.format})")
    if counts.get("files_not_in_split"):
        log.info("import_cams: %d files in %s belong to no image of split '%s' (ignored)",
                 counts["files_not_in_split"], ic.dir, split)
    return {"images": len(table), "split": split, "format": ic.format, "source": label, **counts,
            "store": path.name, "store_bytes": layout_bytes(out, layout, todo)}
