"""TensorBoard event files of the training loop (pipeline/semples/callbacks.py TensorBoard), the
store leaving them out of a stage's result, and the `wsss tensorboard` logdir of links. The smoke
run's event files of all five training stages: tests/test_flow.py."""
from __future__ import annotations

import errno
import logging

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.datasets import LabelTable
from pipeline.models.mask_generator import build_mask_generator
from pipeline.semples.losses import train_cam_step
from pipeline.semples.training import FitSpec, TrainImages, fit, write_gallery
from pipeline.store import Store
from stages.tensorboard import build_logdir
from test_semples_stages import ROOT, tiny_cfg


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard's own reader gives them (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]} | \
           {t: [(e.step, None) for e in acc.Images(t)] for t in acc.Tags()["images"]}


def _fit(cfg, table, out, stop_after=None):
    """train_cam's loop on 8 images, batch 4: 2 updates per epoch; a gallery and a fake seed score."""
    torch.manual_seed(0)
    model = build_mask_generator(cfg.mask_generator, 20, load_weights=False)
    gal = TrainImages(table, 64, train=False, ids=table.ids()[:2])
    fit(FitSpec(out, cfg.train_cam, 0, TrainImages(table, 64, seed=0, ids=table.ids()[:8]), model, train_cam_step,
                torch.device("cpu"), stop_after=stop_after, epoch_eval=lambda m, e: {"seed_miou": 10.0 * e},
                gallery=lambda p: write_gallery(p, model.cams, gal, list(table.classes[1:]), "cpu")))


def test_resumed_fit_continues_the_curves_without_a_step_twice(tmp_path, prepared):
    from torch.utils.tensorboard import SummaryWriter
    cfg = tiny_cfg(tmp_path, epochs=2)
    cfg.train_cam.seed_eval_every = 1
    table, out = LabelTable.from_artifact(prepared, "train"), tmp_path / "fit"
    out.mkdir()
    _fit(cfg, table, out, stop_after=1)
    with SummaryWriter(str(out / "tensorboard")) as w:  # a killed run got one update past its checkpoint
        w.add_scalar("step/loss", 999.0, 3)
    _fit(cfg, table, out)
    tags = scalars(out / "tensorboard")
    assert [s for s, _ in tags["step/loss"]] == [1, 2, 3, 4] and 999.0 not in [v for _, v in tags["step/loss"]]
    for tag in ("epoch/loss", "lr/group0", "throughput/images_per_s", "cams/gallery"):
        assert [s for s, _ in tags[tag]] == [2, 4], tag
    assert tags["seed/miou_gt"] == [(2, 10.0), (4, 20.0)]
    assert not list((out / "tensorboard").glob(".*"))  # the gallery's picture file is gone


def test_a_failing_event_file_stops_writing_not_training_but_a_full_disk_stops_both(tmp_path, prepared, caplog,
                                                                                     monkeypatch):
    from torch.utils.tensorboard import SummaryWriter
    cfg = tiny_cfg(tmp_path, epochs=1)
    table, out = LabelTable.from_artifact(prepared, "train"), tmp_path / "fit"
    out.mkdir()
    (out / "tensorboard").write_text("a file where the folder goes")
    with caplog.at_level(logging.WARNING, logger="wsss"):
        _fit(cfg, table, out)
    assert (out / "checkpoint.pt").exists()
    assert [r.message for r in caplog.records if "TensorBoard" in r.message][0].startswith(
        "TensorBoard event files stop here, the training goes on")
    (out / "tensorboard").unlink()
    (out / "checkpoint.pt").unlink()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    with pytest.raises(OSError, match="No space left"):
        _fit(cfg, table, out)


def test_event_files_are_not_part_of_the_result(tmp_path):
    store = Store(tmp_path)
    d = store.open("train_cam-0123456789abcdef")
    (d / "model.pt").write_bytes(b"weights")
    for folder in (d / "tensorboard", d / "members" / "crf" / "tensorboard"):  # an ensemble member's too
        folder.mkdir(parents=True)
        (folder / "events.out.tfevents.1.host").write_bytes(b"curves")
    manifest = store.finalize("train_cam-0123456789abcdef", "train_cam", {}, {}, {}, 0.0)
    assert list(manifest["files"]) == ["model.pt"]
    (d / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"damaged")
    (d / "members" / "crf" / "tensorboard" / "events.out.tfevents.1.host").unlink()
    assert store.state("train_cam-0123456789abcdef") == "cached"


def test_logdir_names_runs_stages_and_seeds(tmp_path):
    work = tmp_path / "runs"
    one = load_config(ROOT / "configs/voc-smoke.yaml", overrides={"run": {"work_dir": str(work)}})
    seeds = load_config(ROOT / "configs/voc-smoke.yaml", overrides={"run": {"work_dir": str(work), "seeds": [0, 1],
                                                                            "name": "sweep"}})
    logdir, lines = build_logdir([one, seeds, one], tmp_path / "logdir")
    stages = ("train_cam", "match", "learn_prompts", "refine", "train_segmentation")
    links = {p.relative_to(logdir).as_posix(): p.readlink() for p in logdir.rglob("*") if p.is_symlink()}
    assert set(links) == {f"{run}/{s}" for run in ("voc-smoke", "voc-smoke (3)") for s in stages} | \
        {f"sweep/{s}/seed{k}" for s in stages for k in (0, 1)}
    assert all(t.parent.parent == work and t.name == "tensorboard" and t.parent.name.startswith(s.split("/")[1])
               for s, t in links.items())
    assert links["sweep/refine/seed0"] != links["sweep/refine/seed1"]
    assert lines[-1] == f"logdir: {logdir}"
    build_logdir([one], logdir)  # again: the links are replaced
    (logdir / "voc-smoke" / "match").unlink()
    (logdir / "voc-smoke" / "match").mkdir()
    with pytest.raises(FileExistsError, match="voc-smoke/match: is in the way"):
        build_logdir([one], logdir)
