"""import_masks: pseudo masks made by another code base (a folder of <image id>.png label maps
of data.train_split, pipeline/pseudo_masks/imported.py) checked against the label table and
written as this pipeline's mask layout, <out>/masks/<id>.png (palette PNGs), which
train_segmentation trains on and evaluate scores when import_masks.dir is set. Also
<out>/mask_source.json (the label evaluate reports) and mask_gallery.png.

The key covers the folder's fingerprint (names + sizes + mtimes, or sha256 with
import_masks.hash: full).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.cam_store import fixed_sample
from pipeline.cams.formats import folder_fingerprint
from pipeline.config import Config
from pipeline.data.classes import IGNORE
from pipeline.data.datasets import LabelTable, read_image, read_mask
from pipeline.store import write_json_atomic
from stages.contract import Stage

SOURCE = "mask_source.json"


def source_label(folder) -> str:
    return f"imported: {Path(folder).resolve()}"


def fingerprint(cfg: Config) -> str:
    return folder_fingerprint(cfg.import_masks.dir, [".png"], cfg.import_masks.hash)


def run(cfg: Config, inputs, out: Path) -> dict:
    from pipeline.cam_inference import image_size
    from pipeline.plots import save_grid
    from pipeline.pseudo_masks.imported import import_masks
    from pipeline.utils import progress

    im, split = cfg.import_masks, cfg.data.train_split
    if im.dir is None:
        raise ValueError("import_masks.dir is not set: name the folder of mask PNGs")
    table = LabelTable.from_artifact(inputs["prepare_data"], split)
    for r in table.records:
        if not (r.height and r.width):
            r.height, r.width = image_size(r)
    res = import_masks(table.records, Path(im.dir), out / "masks", table.palette, table.num_classes,
                       progress=lambda it, n: progress(it, f"import_masks {split}", total=n))
    write_json_atomic(out / SOURCE, {"dir": str(Path(im.dir).resolve()), "label": source_label(im.dir)})
    rows = [[read_image(table[i].image), read_mask(out / "masks" / f"{i}.png")]
            for i in fixed_sample(table.ids(), im.gallery_size)]
    if rows:
        save_grid(out / "mask_gallery.png", rows, titles=["image", "imported pseudo mask"], pal=table.palette)
    px = res["pixels"]
    return {"images": len(table), "split": split, "source": source_label(im.dir),
            "ignored_fraction": float(px[IGNORE] / max(int(px.sum()), 1))}


STAGE = Stage(name="import_masks", inputs=("prepare_data",), sections=("import_masks", "data.train_split"),
              run=run, fingerprint=fingerprint, version="1")
