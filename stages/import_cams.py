"""import_cams: CAMs made by another code base (a folder of per-image files in the format
cfg.import_cams.format, pipeline/cams/formats.py) checked against the label table of
export_cams.split and written as this pipeline's CAM artifact: <out>/cams_<split>.zarr, the same
store export_cams writes, so pseudo_masks (every route), evaluate and the galleries read it the
same way when export_cams.source is 'import'. Also <out>/cam_source.json (folder, format: the
label evaluate reports) and cam_gallery.png.

The key covers the folder's fingerprint (names + sizes + mtimes, or sha256 with
import_cams.hash: full), so a replaced file reruns this stage and what depends on it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.cam_store import CamStore, fixed_sample, store_path
from pipeline.cams.formats import SUFFIX, folder_fingerprint
from pipeline.config import Config
from pipeline.data.datasets import LabelTable, read_image
from pipeline.store import write_json_atomic
from stages.contract import Stage

log = logging.getLogger("wsss")
SOURCE = "cam_source.json"


def source_label(folder, fmt: str) -> str:
    return f"imported: {Path(folder).resolve()}, {fmt}"


def fingerprint(cfg: Config) -> str:
    ic = cfg.import_cams
    return folder_fingerprint(ic.dir, [SUFFIX[ic.format]], ic.hash)


def run(cfg: Config, inputs, out: Path) -> dict:
    from pipeline.cam_inference import image_size
    from pipeline.cams.importer import ImportOptions, import_folder
    from pipeline.plots import heat_overlay, save_grid
    from pipeline.utils import progress

    ic, split = cfg.import_cams, cfg.export_cams.split
    if ic.dir is None:
        raise ValueError("import_cams.dir is not set: name the folder of CAM files")
    table = LabelTable.from_artifact(inputs["prepare_data"], split)
    for r in table.records:
        if not (r.height and r.width):
            r.height, r.width = image_size(r)
    path = store_path(out, split)
    store = CamStore(path, mode="a")
    counts = import_folder(table.records, Path(ic.dir), ImportOptions.from_cfg(ic), store, table.num_classes,
                           threads=cfg.export_cams.writer_threads,
                           progress=lambda it, n: progress(it, f"import_cams {split} ({ic.format})", total=n))
    store = CamStore(path)
    write_json_atomic(out / SOURCE, {"dir": str(Path(ic.dir).resolve()), "format": ic.format,
                                     "label": source_label(ic.dir, ic.format)})
    rows, labels = [], []
    for image_id in fixed_sample(table.ids(), ic.gallery_size):
        cams, classes = store.read(image_id)
        image = read_image(table[image_id].image)
        rows.append([image] + [heat_overlay(image, c.astype(np.float32)) for c in cams])
        labels.append(image_id + ": " + ", ".join(table.classes[c] for c in classes))
    if rows:
        save_grid(out / "cam_gallery.png", rows, titles=["image", f"imported CAM per class ({ic.format})"],
                  row_labels=labels)
    n_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if counts.get("files_not_in_split"):
        log.info("import_cams: %d files in %s belong to no image of split '%s' (ignored)",
                 counts["files_not_in_split"], ic.dir, split)
    return {"images": len(table), "split": split, "format": ic.format, "source": source_label(ic.dir, ic.format),
            **counts, "store": path.name, "store_bytes": n_bytes}


STAGE = Stage(name="import_cams", inputs=("prepare_data",), sections=("import_cams", "export_cams.split"),
              run=run, fingerprint=fingerprint, version="1")
