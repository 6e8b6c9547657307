"""pseudo_masks: CAM seeds of the exported split -> label PNGs (the dataset's
palette) in <out>/masks/<id>.png, by cfg.pseudo_masks.method (argmax | crf |
affinity | affinity_crf, see pipeline/refine_masks.py; sam: FMA-WSSS's labelling
of the sam_masks stage's masks, pipeline/sam_seeding.py). That is the route
train_segmentation trains on; each of cfg.pseudo_masks.extra_methods is a
further route in <out>/masks_<method>/<id>.png, which evaluate scores beside
it. With cfg.pseudo_masks.coco_json also <out>/pseudo_masks_coco.json
(pipeline/coco_export.py) of the trained route.

Per-image stage: items / run_shard / finalize. run_shard skips PNGs already
written (each is written atomically) and spreads the images over a process
pool of cfg.run.processes workers (0 = all cores). The affinity methods run
the mask generator in this process for the patch attention and hand it to the
workers with the image.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.cam_store import CamStore, fixed_sample, store_path
from pipeline.config import Config
from pipeline.data.datasets import LabelTable, read_image, read_mask
from pipeline.refine_masks import seed_labels, write_masks
from pipeline.utils import num_processes, progress
from stages.contract import Stage
from stages.sources import cam_stage, cams_dir

log = logging.getLogger("wsss")
AFFINITY = ("affinity", "affinity_crf")
COCO_JSON = "pseudo_masks_coco.json"


def inputs(cfg: Config) -> tuple[str, ...]:
    """The affinity methods use the attention of the mask generator that made the CAMs;
    the sam route the masks of sam_masks; imported CAMs (export_cams.source: import) have no model."""
    sam = ('sam_masks',) if "sam" in cfg.pseudo_masks.routes else ()
    model = () if cfg.export_cams.source == "import" else (cfg.export_cams.source,)
    return ('prepare_data', cam_stage(cfg)) + model + sam


def route_dir(cfg: Config, out: Path, method: str) -> Path:
    """<out>/masks for the trained route, <out>/masks_<method> for the others."""
    return Path(out) / ("masks" if method == cfg.pseudo_masks.method else f"masks_{method}")


def _split(cfg: Config) -> str:
    return cfg.export_cams.split


def items(cfg: Config, inputs) -> list[str]:
    return LabelTable.from_artifact(inputs["prepare_data"], _split(cfg)).ids()


def _attention_jobs(cfg: Config, inputs, table: LabelTable, todo: list[str]):
    """(id, path, patch attention, grid, patch size) with the mask generator's
    attention at scale 1.0, computed lazily while the pool works."""
    import torch
    from pipeline.models.mask_generator import load_mask_generator, normalize_numpy
    from pipeline.utils import get_device

    device = get_device(cfg.run.device)
    model = load_mask_generator(Path(inputs[cfg.export_cams.source]) / "model.pt", device)
    patch = getattr(model, "patch_size", None)
    if hasattr(model, "pad_input"):  # the random walk maps patches onto pixels: a padded grid covers the image
        model.pad_input = True
    for image_id in todo:
        rec = table[image_id]
        image = read_image(rec.image)
        with torch.no_grad():
            attn, grid = model.patch_attention(normalize_numpy(image)[None].to(device))
        if patch is None:  # a CNN: no padding, a grid cell is the feature stride
            patch = max(-(-image.shape[0] // grid[0]), -(-image.shape[1] // grid[1]))
        yield image_id, rec.image, attn[0].float().cpu().numpy(), tuple(grid), patch


def run_shard(cfg: Config, inputs, out: Path, ids: list[str]) -> int:
    written = 0
    for method in cfg.pseudo_masks.routes:
        written += _run_route(cfg, inputs, out, ids, method)
    return written


def _run_route(cfg: Config, inputs, out: Path, ids: list[str], method: str) -> int:
    mask_dir = route_dir(cfg, out, method)
    mask_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in ids if not (mask_dir / f"{i}.png").exists()]
    if not todo:
        return 0
    table = LabelTable.from_artifact(inputs["prepare_data"], _split(cfg))
    route_cfg = cfg.pseudo_masks.model_copy(update={"method": method, "extra_methods": []})
    if method in AFFINITY:
        jobs = _attention_jobs(cfg, inputs, table, todo)
    else:
        jobs = ((i, table[i].image, None, None, None) for i in todo)
    sam_dir = None
    if method == "sam":
        from stages.sam_masks import mask_dir as sam_mask_dir
        sam_dir = str(sam_mask_dir(inputs["sam_masks"], _split(cfg)))  # = sam.split (validated)
    init = (str(store_path(cams_dir(inputs), _split(cfg))), route_cfg.model_dump_json(), str(mask_dir),
            table.palette.tolist(), sam_dir)
    n = min(num_processes(cfg.run.processes), len(todo))
    desc = f"pseudo_masks ({method}, {n} proc)"
    CamStore(init[0])  # fail here, clearly, rather than in every worker
    for _ in progress(write_masks(jobs, init, n), desc, total=len(todo)):
        pass
    return len(todo)


def finalize(cfg: Config, inputs, out: Path) -> dict:
    from pipeline.plots import save_grid

    ids = items(cfg, inputs)
    pm = cfg.pseudo_masks
    for method in pm.routes:
        d = route_dir(cfg, out, method)
        missing = [i for i in ids if not (d / f"{i}.png").exists()]
        if missing:
            raise RuntimeError(f"{d}: {len(missing)} pseudo masks missing "
                               f"(e.g. {', '.join(missing[:5])}); run the missing shards")
    mask_dir = out / "masks"
    table = LabelTable.from_artifact(inputs["prepare_data"], _split(cfg))
    store = CamStore(store_path(cams_dir(inputs), _split(cfg)))
    rows = []
    for image_id in fixed_sample(ids, pm.gallery_size):
        cams, classes = store.read(image_id)
        rows.append([read_image(table[image_id].image),
                     seed_labels(cams.astype(np.float32), classes, pm.bg_threshold)]
                    + [read_mask(route_dir(cfg, out, m) / f"{image_id}.png") for m in pm.routes])
    if rows:
        save_grid(out / "pseudo_mask_gallery.png", rows,
                  titles=["image", f"seed (bg {pm.bg_threshold})", f"pseudo mask ({pm.method}, trained on)"]
                  + [f"pseudo mask ({m})" for m in pm.extra_methods], pal=table.palette)
    ignored = _ignored_fraction(mask_dir, fixed_sample(ids, 64))
    metrics = {"images": len(ids), "method": pm.method, "routes": pm.routes, "ignored_fraction_sample": ignored}
    if pm.coco_json:
        from pipeline.coco_export import export_coco
        items_ = ((i, table[i].image, read_mask(mask_dir / f"{i}.png")) for i in ids)
        n = export_coco(out / COCO_JSON, items_, table.classes, f"wsss pseudo masks of split '{_split(cfg)}' "
                        f"({pm.method})")
        metrics["coco_annotations"] = n["annotations"]
    return metrics


def _ignored_fraction(mask_dir: Path, ids: list[str]) -> Optional[float]:
    if not ids:
        return None
    masks = [read_mask(mask_dir / f"{i}.png") for i in ids]
    return float(sum((m == 255).sum() for m in masks) / sum(m.size for m in masks))


def run(cfg: Config, inputs, out: Path) -> dict:
    run_shard(cfg, inputs, out, items(cfg, inputs))  # all shards in one go: one model load / pool
    return finalize(cfg, inputs, out)


STAGE = Stage(name="pseudo_masks", inputs=inputs, run=run, items=items, run_shard=run_shard, finalize=finalize,
              # the CAMs' split and the mask generator behind them (affinity methods)
              sections=("pseudo_masks", "export_cams.split", "export_cams.source"),
              # 2: dataset palette in the PNGs, optional COCO JSON; 3: affinity on the padded grid;
              # 4: declares the export_cams fields it reads; 5: routes (sam, extra_methods); imported CAMs
              # change its inputs, not its computation
              version="5")
