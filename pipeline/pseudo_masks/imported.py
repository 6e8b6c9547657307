"""Pseudo masks made elsewhere: a folder of ``<image id>.png`` label maps imported as this
pipeline's mask layout (palette PNGs of the dataset's palette), and masks exported as PNGs.
Also the work of the import_masks stage (run, fingerprint): the folder of cfg.import_masks for
the images of data.train_split, written as pipeline/artifacts.py ImportedMaskArtifact (masks/
like pseudo_masks' trained route), which train_segmentation trains on and evaluate scores when
import_masks.dir is set.

Accepted PNGs: palette (P: the indices are the class ids, whatever the palette's colours),
greyscale (L, or 16-bit I;16 / I: the grey values are the class ids) or RGB(A) painted with the
dataset's palette (each colour -> its class id). Ids are 0..K-1 or 255 (ignored in training).
Checks, each naming the file: every image of the split has a PNG; its size equals the image's;
no unknown id (or colour). All files, missing ones included, are checked before the error is
raised (first 20 listed, and their count); the masks written so far are then removed.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from pipeline.artifacts import ImportedMaskArtifact
from pipeline.cams.formats import folder_fingerprint
from pipeline.data.classes import IGNORE
from pipeline.data.datasets import write_mask

MAX_LISTED = 20


class MaskImportError(ValueError):
    """Mask files that do not fit the dataset, listing the files."""


def read_label_png(path: Path, pal: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids of a label PNG (see the module docstring); ValueError naming the file."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            a = np.asarray(im)
    except FileNotFoundError:
        raise ValueError(f"{path}: file missing") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable PNG ({e})") from None
    if mode in ("P", "L", "I;16", "I"):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"{path}: values {sorted(set(np.unique(a)) - set(range(256)))[:10]} are no class ids")
        return a.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        rgb = a[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        colours = np.asarray(pal, np.int64).reshape(-1, 3)
        table = {int((c[0] << 16) | (c[1] << 8) | c[2]): i for i, c in enumerate(colours)}
        table.setdefault(0xE0E0C0, IGNORE)  # VOC's ignore colour (224, 224, 192)
        u, inv = np.unique(code, return_inverse=True)
        unknown = [f"#{int(c):06x}" for c in u if int(c) not in table]
        if unknown:
            raise ValueError(f"{path}: RGB colours {unknown[:10]} are not in the dataset's palette")
        return np.array([table[int(c)] for c in u], np.uint8)[inv.reshape(code.shape)]
    raise ValueError(f"{path}: PNG mode {mode}; need palette (P), greyscale (L) or RGB in the dataset's palette")


def import_masks(records: Sequence, folder: Path, dst: Path, pal: np.ndarray, num_classes: int,
                 progress: Callable = lambda it, total: it) -> dict:
    """Check and copy the mask of every record (id, height, width) into ``dst/<id>.png`` as a
    palette PNG; PNGs already in ``dst`` are kept (a resumed import). Returns class pixel counts."""
    folder, dst = Path(folder), Path(dst)
    if not folder.is_dir():
        raise MaskImportError(f"{folder}: mask folder not found (import_masks.dir)")
    dst.mkdir(parents=True, exist_ok=True)
    counts = np.zeros(256, np.int64)
    problems: list[str] = []
    try:
        for r in progress(records, len(records)):
            out = dst / f"{r.id}.png"
            if out.exists() and not problems:
                counts += np.bincount(np.asarray(Image.open(out)).ravel(), minlength=256)
                continue
            path = folder / f"{r.id}.png"
            try:
                m = read_label_png(path, pal)
                if m.shape != (r.height, r.width):
                    raise ValueError(f"{path}: mask of size {m.shape[0]}x{m.shape[1]} (HxW), the image is "
                                     f"{r.height}x{r.width}")
                bad = sorted(set(np.unique(m).tolist()) - set(range(num_classes)) - {IGNORE})
                if bad:
                    raise ValueError(f"{path}: class ids {bad} unknown (0..{num_classes - 1} or {IGNORE})")
            except ValueError as e:
                problems.append(str(e))
                continue
            if not problems:
                write_mask(out, m, pal)
                counts += np.bincount(m.ravel(), minlength=256)
    finally:
        if problems:
            shutil.rmtree(dst, ignore_errors=True)
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise MaskImportError(f"{len(problems)} of {len(records)} masks in {folder} do not fit the dataset:\n  "
                              + "\n  ".join(problems[:MAX_LISTED]) + more)
    return {"pixels": counts}


def export_masks(src: Path, ids: Sequence[str], out_dir: Path) -> int:
    """Copy the palette PNGs of ``ids`` from a mask folder of this pipeline into ``out_dir``."""
    src, out_dir = Path(src), Path(out_dir)
    missing = [i for i in ids if not (src / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: no mask for {len(missing)} images, e.g. {', '.join(missing[:5])}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copyfile(src / f"{i}.png", out_dir / f"{i}.png")
    return len(ids)


# ------------------------------------------------------------------ the import_masks stage
def source_label(folder) -> str:
    return f"imported: {Path(folder).resolve()}"


def fingerprint(cfg) -> str:
    return folder_fingerprint(cfg.import_masks.dir, [".png"], cfg.import_masks.hash)


def run(cfg, inputs, out: Path) -> dict:
    from pipeline.cams.store import fixed_sample
    from pipeline.data.datasets import LabelTable, read_image, read_mask
    from pipeline.plots import save_grid
    from pipeline.fileio import write_json_atomic
    from pipeline.utils import progress

    im, split, art = cfg.import_masks, cfg.data.train_split, ImportedMaskArtifact(out)
    if im.dir is None:
        raise ValueError("import_masks.dir is not set: name the folder of mask PNGs")
    table = LabelTable.from_artifact(inputs["prepare_data"], split).with_sizes()
    res = import_masks(table.records, Path(im.dir), art.trained, table.palette, table.num_classes,
                       progress=lambda it, n: progress(it, f"import_masks {split}", total=n))
    write_json_atomic(art.source, {"dir": str(Path(im.dir).resolve()), "label": source_label(im.dir)})
    rows = [[read_image(table[i].image), read_mask(art.trained / f"{i}.png")]
            for i in fixed_sample(table.ids(), im.gallery_size)]
    if rows:
        save_grid(art.gallery, rows, titles=["image", "imported pseudo mask"], pal=table.palette)
    px = res["pixels"]
    return {"images": len(table), "split": split, "source": source_label(im.dir),
            "ignored_fraction": float(px[IGNORE] / max(int(px.sum()), 1))}
