"""`wsss predict` on a folder mixing good and bad images predicts every good image, names every
bad one with advice for the prediction folder, writes predictions_coco.json for what it
predicted and exits non-zero (issue #35, item 4). A 2-iteration tiny final model on fake
pseudo masks (the ground truth) stands in for a trained one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from pipeline.config import load_config
from pipeline.data.datasets import LabelTable
from pipeline.store import Store

ROOT = Path(__file__).resolve().parents[1]


def test_predict_goes_past_bad_images_and_exits_non_zero(tmp_path):
    from flows.cli import app
    from pipeline.pseudo_masks.coco_export import decode
    from stages.runner import run_stage, stage_inputs, stage_keys, stage_sections
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\n"
                        f"run: {{work_dir: {tmp_path / 'runs'}, device: cpu}}\ndata: {{max_images: 4}}\n"
                        "train_segmentation: {iters: 2, val_interval: 2, checkpoint_interval: 2, log_interval: 1, "
                        "gallery_size: 1}\n")
    cfg = load_config(cfg_path)
    keys, store = stage_keys(cfg), Store(cfg.run.work_dir)
    records = LabelTable.from_artifact(run_stage(cfg, "prepare_data", keys=keys), "train").records
    pm = store.open(keys["pseudo_masks"])
    (pm / "masks").mkdir()
    for r in LabelTable.from_artifact(store.path(keys["prepare_data"]), "train").records:
        shutil.copy(r.mask, pm / "masks" / f"{r.id}.png")
    store.finalize(keys["pseudo_masks"], "pseudo_masks", stage_sections(cfg, "pseudo_masks"),
                   {i: keys[i] for i in stage_inputs(cfg, "pseudo_masks")}, {}, 0.0)
    run_stage(cfg, "train_segmentation", keys=keys)

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    good = {"a": records[0].image, "c": records[1].image, "sub__e": records[2].image}
    for name, src in good.items():
        shutil.copy(src, folder / (name.replace("__", "/") + ".jpg"))
    (folder / "b.jpg").write_bytes(Path(records[3].image).read_bytes()[:300])  # truncated
    (folder / "d.png").write_text("not an image")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["predict", "--config", str(cfg_path), "--images", str(folder), "--out", str(out)])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert doc["images"] == 3 and len(doc["failed"]) == 2, doc
    for bad, msg in zip(("b.jpg", "d.png"), doc["failed"]):
        assert msg.startswith(str(folder / bad)) and "wsss predict" in msg and "wsss fetch" not in msg, msg
    assert sorted(p.stem for p in (out / "labels").glob("*.png")) == sorted(good)
    assert sorted(decode(out / "predictions_coco.json")) == sorted(good)
