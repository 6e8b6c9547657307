"""The training-phase registry (pipeline/semples/phase.py) and the training loop's callbacks
(pipeline/semples/callbacks.py): phases are found in pipeline/semples/phases/ in Config order,
export_cams.source accepts exactly the phases that make CAMs (and 'import'), the phase-derived
rules read the records, and an extra callback sees the loop's hooks in order."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ConfigError, cam_labels, load_config, phase_sections
from pipeline.data.datasets import LabelTable
from pipeline.data.image_checks import cam_splits
from pipeline.models.mask_generator import build_mask_generator
from pipeline.semples.callbacks import Callback, KeepBest, SeedEval, callbacks_for
from pipeline.semples.losses import train_cam_step
from pipeline.evaluation.report import selection_label
from pipeline.semples.phases import phase, phases
from pipeline.semples.training import FitSpec, TrainImages, fit
from test_semples_stages import ROOT, tiny_cfg


def test_phases_are_found_in_config_order_and_name_their_cams():
    assert [p.name for p in phases()] == ["train_cam", "match", "learn_prompts", "refine"]
    assert list(cam_labels()) == ["train_cam", "match", "refine"] and cam_labels()["refine"] == "full SemPLeS (phase 3)"
    assert phase("match").trainable.startswith("match.trainable")
    with pytest.raises(KeyError, match="unknown training phase 'nope'; phases: train_cam, match"):
        phase("nope")


def test_export_cams_source_is_validated_against_the_registry():
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={"export_cams": {"source": "match"}})
    assert cfg.export_cams.source == "match"
    for bad in ("learn_prompts", "refin"):
        with pytest.raises(ConfigError, match=rf"export_cams.source: '{bad}' is neither a training "
                                              r"phase that makes CAMs \(train_cam, match, refine\) nor 'import'"):
            load_config(ROOT / "configs/voc-smoke.yaml", overrides={"export_cams": {"source": bad}})


def test_phase_rules_read_the_records():
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "data": {"eval_split": "val"}, "match": {"seed_eval_every": 1, "select": "gt_miou"},
        "train_cam": {"init_checkpoint": "open-mmlab://weaktr"}})
    assert list(phase_sections(cfg)) == [p.name for p in phases()]
    assert list(phase_sections(cfg, cams_only=True)) == list(cam_labels())
    assert cam_splits(cfg) == [cfg.export_cams.split, "val"]
    assert selection_label(cfg, "match") == "best epoch by seed mIoU on val (uses ground truth)"
    assert selection_label(cfg, "train_cam").startswith("imported from open-mmlab://weaktr")
    assert selection_label(cfg, "refine") == "last epoch (no pixel labels)"
    from stages import get
    from stages.contract import view
    seen = phase_sections(view(cfg, get("evaluate")), cams_only=True)  # what evaluate's run sees
    assert list(seen) == list(cam_labels()) and seen["match"].selects_on_gt()
    assert [n for n, s in seen.items() if s.imported_from()] == ["train_cam"]


def test_callbacks_are_chosen_once_and_an_extra_one_sees_every_hook(tmp_path, prepared):
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={"train_cam": {"epochs": 2}}, check_paths=False)
    spec = FitSpec(tmp_path, cfg.train_cam, 0, None, None, train_cam_step, torch.device("cpu"))
    assert not any(isinstance(c, (SeedEval, KeepBest)) for c in callbacks_for(spec))
    gt = cfg.train_cam.model_copy(update={"select": "gt_miou", "seed_eval_every": 1})
    with pytest.raises(ValueError, match="select 'gt_miou' needs a seed evaluation"):
        callbacks_for(FitSpec(tmp_path, gt, 0, None, None, train_cam_step, torch.device("cpu")))


    class Spy(Callback):
        def __init__(self):
            self.calls = []

        def on_fit_start(self, state):
            self.calls.append(("start", state.start))

        def on_train_epoch_end(self, state, epoch, rec):
            self.calls.append(("train_end", epoch))

        def on_epoch_end(self, state, epoch, rec):
            self.calls.append(("end", epoch, rec["seed_miou"], (tmp_path / "fit" / "checkpoint.pt").exists()))

        def on_fit_end(self, state, finished):
            self.calls.append(("fit_end", finished, state.best["epoch"]))

    tiny = tiny_cfg(tmp_path, epochs=2)
    tiny.train_cam.select, tiny.train_cam.seed_eval_every = "gt_miou", 1
    table = LabelTable.from_artifact(prepared, "train")
    torch.manual_seed(0)
    model = build_mask_generator(tiny.mask_generator, 20, load_weights=False)
    spy, out = Spy(), tmp_path / "fit"
    out.mkdir()
    m = fit(FitSpec(out, tiny.train_cam, 0, TrainImages(table, 64, seed=0, ids=table.ids()[:4]), model,
                    train_cam_step, torch.device("cpu"), epoch_eval=lambda mod, e: {"seed_miou": 3.0 - e},
                    callbacks=[spy]))
    # after SeedEval, KeepBest and Checkpoint: the record has the seed numbers, the checkpoint is written
    assert spy.calls == [("start", 0), ("train_end", 0), ("end", 0, 2.0, True), ("train_end", 1),
                         ("end", 1, 1.0, True), ("fit_end", True, 1)]
    assert m["selected_epoch"] == 1
