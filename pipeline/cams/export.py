"""The work of the export_cams stage: multi-scale + flip CAMs of the mask generator of
stage cfg.export_cams.source over cfg.export_cams.split, into one zarr v3 group
(pipeline/cams/store.py; its place: pipeline/artifacts.py CamArtifact), one array per
image holding its patch-grid CAMs per scale and flip (layout "grid"; read back as the
float32 (C_present, H, W) maps).

items -> image ids; run_shard writes the CAMs of some ids (skipping complete arrays,
rewriting interrupted ones; per_image lets the runner remove damaged arrays first) with
the batched path of pipeline/cams/inference.py, a missing image in the batch of the
shard's ids it had, so a healed or resumed CAM equals the original bit for bit (with the
same export_cams.batch_size and run.shard_size):
DataLoader workers (run.num_workers) decode and resize, same-size batches
(export_cams.batch_size) run on the device, a thread pool (export_cams.writer_threads)
compresses and writes; memory is bounded by batches in flight, not by the split.
finalize checks that every image has its array and draws the CAM overlay gallery of a
fixed sample (kept by a heal).
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.artifacts import CamArtifact, ModelArtifact
from pipeline.cams.store import CamStore, fixed_sample, save_cam_gallery, verify_array
from pipeline.config import Config
from pipeline.data.datasets import LabelTable
from pipeline.store import PerImage
from pipeline.utils import tree_bytes

log = logging.getLogger("wsss")


def _no_model(cfg: Config) -> None:
    if cfg.export_cams.source == "import":
        raise ValueError("export_cams.source is 'import': the CAMs are import_cams' artifact, there is no mask "
                         "generator to run (`wsss stage import_cams`)")


def _table(cfg: Config, inputs) -> LabelTable:
    return LabelTable.from_artifact(inputs["prepare_data"], cfg.export_cams.split)


def items(cfg: Config, inputs) -> list[str]:
    return _table(cfg, inputs).ids()


def per_image(cfg: Config) -> tuple[PerImage, ...]:
    """One zarr array (a directory) per image in the split's group: what the runner checks
    (and removes when damaged) before a resume."""
    return (PerImage(CamArtifact(Path()).store(cfg.export_cams.split).as_posix(), "", verify_array, is_dir=True),)


def run_shard(cfg: Config, inputs, out: Path, ids: list[str]) -> int:
    """Write the CAMs of ``ids`` not yet complete; returns how many were written."""
    from pipeline.cams.inference import export_batched
    from pipeline.models.mask_generator import load_mask_generator
    from pipeline.precision import Precision
    from pipeline.utils import get_device, log_pending, progress

    _no_model(cfg)
    table = _table(cfg, inputs)
    store = CamStore(CamArtifact(out).store(cfg.export_cams.split), mode="a")
    todo = store.missing(ids)
    if not todo:
        return 0
    log_pending("export_cams", todo, len(ids))
    device = get_device(cfg.run.device)
    model = load_mask_generator(ModelArtifact(inputs[cfg.export_cams.source]).weights, device)
    ec = cfg.export_cams
    records = [table[i] for i in ids]  # all: the missing ones are batched as the full shard batches them
    for rec in records:  # before any work: a bad label fails the shard with nothing written
        bad = [c for c in rec.labels if not 1 <= c <= model.num_classes]
        if not rec.labels or bad:
            raise ValueError(f"image '{rec.id}': labels {rec.labels} not in 1..{model.num_classes}")
    return export_batched(model, records, store, ec.scales, ec.flip, ec.cam, device, batch_size=ec.batch_size,
                          num_workers=cfg.run.num_workers, prefetch_factor=ec.prefetch_batches,
                          writer_threads=ec.writer_threads,
                          precision=Precision.of(device, True),  # float16 AMP where the device has it (CUDA)
                          progress=lambda it, total: progress(it, f"export_cams {ec.split} batches", total),
                          caa=ec.caa if ec.caa.enabled else None, pending=set(todo))


def finalize(cfg: Config, inputs, out: Path) -> dict:
    table = _table(cfg, inputs)
    art = CamArtifact(out)
    path = art.store(cfg.export_cams.split)
    ids = table.ids()
    # one listing: a shard writes an array's complete flag last and fails the run if it cannot,
    # and the runner decodes every array of a partial artifact before it resumes (Store.heal)
    missing = per_image(cfg)[0].pending(out, ids)
    if missing:
        raise RuntimeError(f"{path}: {len(missing)} images have no CAM array "
                           f"(e.g. {', '.join(missing[:5])}); run the missing shards")
    if not art.gallery.exists():  # a heal keeps it
        save_cam_gallery(art.gallery, CamStore(path), table, fixed_sample(ids, cfg.export_cams.gallery_size),
                         "CAM per present class")
    n_bytes = tree_bytes(path)
    return {"images": len(ids), "split": cfg.export_cams.split, "store": path.name,
            "store_bytes": n_bytes, "bytes_per_image": n_bytes / max(len(ids), 1)}


def run(cfg: Config, inputs, out: Path) -> dict:
    _no_model(cfg)
    run_shard(cfg, inputs, out, items(cfg, inputs))  # all shards in one go: one model load / pool
    return finalize(cfg, inputs, out)
