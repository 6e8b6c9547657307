"""The work of the pseudo_masks stage: every route of the run (pipeline/pseudo_masks/routes/)
over the images of the exported CAM split, one label PNG per image and route (the dataset's
palette, pipeline/artifacts.py MaskArtifact), spread over a process pool.

items / run_shard / finalize as the stage calls them. run_shard skips PNGs already written
(each is written atomically; per_image lets the runner remove damaged ones first) and
spreads the images over cfg.run.processes workers (0 = all cores). The routes with
``attention`` run the mask generator in this process for the patch attention and hand it
to the workers with the image."""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from pipeline.artifacts import MaskArtifact, ModelArtifact, cam_artifact
from pipeline.cams.store import CamStore, fixed_sample
from pipeline.config import Config, PseudoMasksCfg
from pipeline.data.datasets import LabelTable, read_image, read_mask, write_mask
from pipeline.lifetime import worker_of
from pipeline.pseudo_masks import routes
from pipeline.store import PerImage
from pipeline.utils import log_pending, num_processes, progress


def _split(cfg: Config) -> str:
    return cfg.export_cams.split


def _table(cfg: Config, inputs) -> LabelTable:
    return LabelTable.from_artifact(inputs["prepare_data"], _split(cfg))


def _route_dir(cfg: Config, out: Path, method: str) -> Path:
    return MaskArtifact(out).route(method, cfg.pseudo_masks.method)


def items(cfg: Config, inputs) -> list[str]:
    return _table(cfg, inputs).ids()


def _layout(cfg: Config, method: str) -> PerImage:
    return PerImage(_route_dir(cfg, Path(), method).as_posix(), ".png", read_mask)


def per_image(cfg: Config) -> tuple[PerImage, ...]:
    """One label PNG per image and route: what the runner checks before a resume."""
    return tuple(_layout(cfg, m) for m in cfg.pseudo_masks.routes)


@dataclass(frozen=True)
class Job:
    """One image for a worker; ``attention`` = (patch attention, grid, patch size) for the attention routes."""
    image_id: str
    image_path: str
    attention: Optional[tuple] = None


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker process of one route loads once."""
    cams: str  # the CAM store
    cfg_json: str  # the PseudoMasksCfg, method = the route
    mask_dir: str
    split: str
    palette: Optional[list] = None
    inputs: dict = field(default_factory=dict)  # the route's further input artifacts (stage -> dir)


def _attention_jobs(cfg: Config, inputs, table: LabelTable, todo: list[str]) -> Iterator[Job]:
    """Jobs with the mask generator's attention at scale 1.0, computed lazily while the pool works."""
    import torch

    from pipeline.models.mask_generator import load_mask_generator, normalize_numpy
    from pipeline.utils import get_device

    device = get_device(cfg.run.device)
    model = load_mask_generator(ModelArtifact(inputs[cfg.export_cams.source]).weights, device)
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
        yield Job(image_id, rec.image, (attn[0].float().cpu().numpy(), tuple(grid), patch))


def run_shard(cfg: Config, inputs, out: Path, ids: list[str]) -> int:
    written = 0
    for method in cfg.pseudo_masks.routes:
        written += _run_route(cfg, inputs, out, ids, method)
    return written


def _run_route(cfg: Config, inputs, out: Path, ids: list[str], method: str) -> int:
    mask_dir = _route_dir(cfg, out, method)
    mask_dir.mkdir(parents=True, exist_ok=True)
    todo = _layout(cfg, method).pending(out, ids)
    if not todo:
        return 0
    log_pending("pseudo_masks", todo, len(ids), method)
    route = routes.get(method)
    table = _table(cfg, inputs)
    route_cfg = cfg.pseudo_masks.model_copy(update={"method": method, "extra_methods": []})
    if route.attention:
        jobs = _attention_jobs(cfg, inputs, table, todo)
    else:
        jobs = (Job(i, table[i].image) for i in todo)
    setup = WorkerSetup(str(cam_artifact(inputs).store(_split(cfg))), route_cfg.model_dump_json(),
                        str(mask_dir), _split(cfg), table.palette.tolist(),
                        {i: str(inputs[i]) for i in route.inputs})
    n = min(num_processes(cfg.run.processes), len(todo))
    desc = f"pseudo_masks ({method}, {n} proc)"
    CamStore(setup.cams)  # fail here, clearly, rather than in every worker
    for _ in progress(write_masks(jobs, setup, n), desc, total=len(todo)):
        pass
    return len(todo)


def finalize(cfg: Config, inputs, out: Path) -> dict:
    from pipeline.pseudo_masks.threshold import seed_labels

    ids = items(cfg, inputs)
    pm = cfg.pseudo_masks
    for method in pm.routes:
        d = _route_dir(cfg, out, method)
        missing = _layout(cfg, method).pending(out, ids)
        if missing:
            raise RuntimeError(f"{d}: {len(missing)} pseudo masks missing "
                               f"(e.g. {', '.join(missing[:5])}); run the missing shards")
    art = MaskArtifact(out)
    table = _table(cfg, inputs)
    store = CamStore(cam_artifact(inputs).store(_split(cfg)))
    rows = []
    for image_id in [] if art.gallery.exists() else fixed_sample(ids, pm.gallery_size):  # a heal keeps it
        cams, classes = store.read(image_id)
        rows.append([read_image(table[image_id].image),
                     seed_labels(cams.astype(np.float32), classes, pm.bg_threshold)]
                    + [read_mask(_route_dir(cfg, out, m) / f"{image_id}.png") for m in pm.routes])
    if rows:
        from pipeline.plots import save_grid  # not on a heal that keeps the gallery
        save_grid(art.gallery, rows,
                  titles=["image", f"seed (bg {pm.bg_threshold})", f"pseudo mask ({pm.method}, trained on)"]
                  + [f"pseudo mask ({m})" for m in pm.extra_methods], pal=table.palette)
    ignored = _ignored_fraction(art.trained, fixed_sample(ids, 64))
    metrics = {"images": len(ids), "method": pm.method, "routes": pm.routes, "ignored_fraction_sample": ignored}
    if pm.coco_json:
        from pipeline.pseudo_masks.coco_export import export_coco
        items_ = ((i, table[i].image, read_mask(art.trained / f"{i}.png")) for i in ids)
        n = export_coco(art.coco_json, items_, table.classes, f"wsss pseudo masks of split '{_split(cfg)}' "
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


# ------------------------------------------------------------ process pool
# Workers import this module, the route modules (numpy, pydensecrf, zarr) and the CAM store, which brings
# torch: it rebuilds the maps from the grids with the export's torch code (pipeline/cams/grids.py), and the
# sam route's seeding is the official float32 torch maths.
_W: dict = {}


def _init(setup: WorkerSetup) -> None:
    cfg = PseudoMasksCfg.model_validate_json(setup.cfg_json)
    _W.update(setup=setup, cfg=cfg, store=CamStore(setup.cams), dir=Path(setup.mask_dir),
              pal=None if setup.palette is None else np.asarray(setup.palette, np.uint8),
              route_mask=routes.get(cfg.method).mask)


def _work(job: Job) -> str:
    cams, classes = _W["store"].read(job.image_id)
    image = read_image(job.image_path)
    if cams.shape[1:] != image.shape[:2]:
        raise ValueError(f"image '{job.image_id}': CAMs are {cams.shape[2]}x{cams.shape[1]} but {job.image_path} "
                         f"is {image.shape[1]}x{image.shape[0]}")
    try:
        mask = _W["route_mask"](image, cams.astype(np.float32), classes, _W["cfg"], job, _W["setup"])
        if not (isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.shape == image.shape[:2]):
            raise ValueError(f"route '{_W['cfg'].method}' returned {getattr(mask, 'dtype', type(mask).__name__)} "
                             f"{getattr(mask, 'shape', '')}, not a {image.shape[0]}x{image.shape[1]} uint8 label map")
    except Exception as e:
        raise RuntimeError(f"image '{job.image_id}': {e}") from e
    write_mask(_W["dir"] / f"{job.image_id}.png", mask, _W["pal"])
    return job.image_id


def _context():
    """forkserver: workers fork from a clean single-threaded server (safe beside
    torch / Prefect threads, unlike fork) that has this module and the routes
    preloaded, so they start in milliseconds; spawn where forkserver does not exist."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, routes.__name__])
    return ctx


def _pool_map(n: int, setup: WorkerSetup, jobs: Iterator[Job]) -> Iterator[str]:
    """_work over jobs in n worker processes, at most 2n jobs in flight so
    lazily computed inputs do not pile up; a failing worker raises here
    instead of hanging the pool."""
    with ProcessPoolExecutor(n, mp_context=_context(), initializer=worker_of,  # workers end with this process
                             initargs=(os.getpid(), _init, setup)) as ex:
        pending = set()
        for job in jobs:
            pending.add(ex.submit(_work, job))
            if len(pending) >= 2 * n:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        for f in as_completed(pending):
            yield f.result()


def write_masks(jobs: Iterable[Job], setup: WorkerSetup, n: int) -> Iterator[str]:
    """Write the pseudo mask of every job with n processes; yields image ids as they finish."""
    if n > 1 and mp.current_process().daemon:
        # e.g. a Dask worker (daemon by default) may not start processes; the
        # flow already spreads shards over workers, so run this shard inline
        n = 1
    if n <= 1:
        _init(setup)
        return map(_work, jobs)
    return _pool_map(n, setup, jobs)
