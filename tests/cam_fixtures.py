"""Helpers shared by the CAM / pseudo-mask / evaluation tests: a real (random
init) mask generator saved as a refine artifact, CAM stores built from ground
truth, and the one-image-at-a-time export the batched one is checked against."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cams.store import CamStore, store_path
from pipeline.data.datasets import LabelTable, read_image, read_mask


def fake_refine(cfg, d: Path, seed: int = 0) -> Path:
    """A refine artifact dir holding a random-init tiny mask generator (a real model)."""
    import torch
    from pipeline.models.mask_generator import build_mask_generator, save_mask_generator
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_mask_generator(cfg.mask_generator, 20, load_weights=False)
    save_mask_generator(model, d / "model.pt", cfg.mask_generator, 20)
    return d


def finish(cfg, keys: dict[str, str], name: str, fill) -> Path:
    """A finished artifact of stage ``name`` in cfg's store (no metrics), its files written by ``fill(dir)``."""
    from pipeline.store import Store
    from stages.runner import stage_inputs, stage_sections
    store = Store(cfg.run.work_dir)
    fill(store.open(keys[name]))
    store.finalize(keys[name], name, stage_sections(cfg, name), {i: keys[i] for i in stage_inputs(cfg, name)}, {}, 0.0)
    return store.path(keys[name])


def ready_to_export(cfg) -> dict[str, str]:
    """prepare_data run and export_cams.source faked (fake_refine) in cfg's store: the next
    stage is export_cams, without training. Returns the stage keys."""
    from stages.runner import run_stage, stage_keys
    keys = stage_keys(cfg)
    run_stage(cfg, "prepare_data", keys=keys)
    finish(cfg, keys, cfg.export_cams.source, lambda d: fake_refine(cfg, d))
    return keys


def gt_store(prepared: Path, split: str, export_dir: Path) -> list[str]:
    """A CAM export whose CAMs are the one-hot ground truth of the present classes."""
    table = LabelTable.from_artifact(prepared, split)
    store = CamStore(store_path(export_dir, split), mode="a")
    for r in table.records:
        gt = read_mask(r.mask)
        cams = np.stack([(gt == c).astype(np.float32) for c in r.labels])
        store.write(r.id, cams, r.labels, gt.shape)
    return table.ids()


def export_per_image(model, records, store: CamStore, scales, flip: bool, cam: str, device) -> int:
    """infer_cams and write, one image at a time on this thread: the reference export."""
    from pipeline.cams.inference import infer_cams
    for rec in records:
        cams = infer_cams(model, read_image(rec.image), rec.labels, scales, flip, cam, device)
        store.write(rec.id, cams, rec.labels, cams.shape[1:])
    return len(records)
