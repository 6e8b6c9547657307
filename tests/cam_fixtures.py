"""Helpers shared by the CAM / pseudo-mask / evaluation tests: a real (random
init) mask generator saved as a refine artifact, and CAM stores built from
ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cam_store import CamStore, store_path
from pipeline.data.datasets import LabelTable, read_mask


def fake_refine(cfg, d: Path, seed: int = 0) -> Path:
    """A refine artifact dir holding a random-init tiny mask generator (a real model)."""
    import torch
    from pipeline.models.mask_generator import build_mask_generator, save_mask_generator
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_mask_generator(cfg.mask_generator, 20, load_weights=False)
    save_mask_generator(model, d / "model.pt", cfg.mask_generator, 20)
    return d


def gt_store(prepared: Path, split: str, export_dir: Path) -> list[str]:
    """A CAM export whose CAMs are the one-hot ground truth of the present classes."""
    table = LabelTable.from_artifact(prepared, split)
    store = CamStore(store_path(export_dir, split), mode="a")
    for r in table.records:
        gt = read_mask(r.mask)
        cams = np.stack([(gt == c).astype(np.float32) for c in r.labels])
        store.write(r.id, cams, r.labels, gt.shape)
    return table.ids()
