"""A finished training artifact whose model.pt is intact and whose manifest is sound is not
retrained because its resume checkpoint (checkpoint.pt) is damaged or gone: the checkpoint is
dropped, file and manifest entry, and the artifact stays cached (issue #35, item 8)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.artifacts import ModelArtifact
from pipeline.config import load_config
from pipeline.store import MANIFEST, Store

ROOT = Path(__file__).resolve().parents[1]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_damaged_resume_checkpoint_does_not_retrain_a_finished_stage(tmp_path, caplog):
    from stages.runner import run_stage, stage_keys
    caplog.set_level(logging.INFO, logger="wsss")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\nrun: {{work_dir: {tmp_path / 'runs'}}}\n"
                        "data: {max_images: 4}\ntrain_cam: {epochs: 1, batch_size: 4, seed_eval_every: 0, "
                        "gallery_size: 1}\n")
    cfg = load_config(cfg_path)
    keys, store = stage_keys(cfg), Store(cfg.run.work_dir)
    run_stage(cfg, "prepare_data", keys=keys)
    art = ModelArtifact(run_stage(cfg, "train_cam", keys=keys))
    assert "train_cam epoch 1/1" in caplog.text
    model = art.weights.stat().st_mtime_ns
    for damage in (_truncate, Path.unlink):
        if not art.checkpoint.exists():  # the first round dropped it: put one back to damage again
            art.checkpoint.write_bytes(b"x")
            store.finalize(keys["train_cam"], "train_cam", {}, {}, {}, 0.0)
        damage(art.checkpoint)
        caplog.clear()
        assert run_stage(cfg, "train_cam", keys=keys) == art.path
        assert "train_cam epoch" not in caplog.text and art.weights.stat().st_mtime_ns == model
        assert store.state(keys["train_cam"]) == "cached"
        files = json.loads((art.path / MANIFEST).read_text())["files"]
        assert not art.checkpoint.exists() and art.checkpoint.name not in files and art.weights.name in files
    _truncate(art.weights)  # the result itself damaged: that is a reason to recompute
    assert store.state(keys["train_cam"]) == "corrupt"
