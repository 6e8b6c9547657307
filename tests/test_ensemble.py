"""Ensemble of final models (stage ensemble, pipeline/segmentation/ensemble.py) against the
SemPLeS authors' FMA-WSSS fork, ProjectDisR/FMA-WSSS ensemble.py: mask[c] = a * prob_fma[c]
+ (1 - a) * prob_semples[c], argmax, a = 0.85."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.segmentation.ensemble import blend
from pipeline.segmentation.mmcv_compat import ensure_mmcv

ROOT = Path(__file__).resolve().parents[1]
ensure_mmcv()


def fork_ensemble(p1: np.ndarray, p2: np.ndarray, a: float) -> np.ndarray:
    """ensemble.py, written out for two models that give every class a probability."""
    mask = np.zeros(p1.shape)
    mask[0] = mask[0] + a * p1[0] + (1.0 - a) * p2[0]
    for c in range(1, p1.shape[0]):
        mask[c] = mask[c] + a * p1[c]
        mask[c] = mask[c] + (1.0 - a) * p2[c]
    return mask.argmax(axis=0).astype(np.uint8)


def test_blend_is_the_forks_weighted_sum_then_argmax():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p1, p2 = (torch.from_numpy(rng.dirichlet(np.ones(5), size=(6, 7)).transpose(2, 0, 1)) for _ in range(2))
        for a in (0.85, 1.0, 0.7):
            assert np.array_equal(blend([p1, p2], [a, 1 - a]), fork_ensemble(p1.numpy(), p2.numpy(), a))
    with pytest.raises(ValueError, match="2 models but 3 weights"):
        blend([p1, p2], [0.5, 0.3, 0.2])


def test_ensemble_config_is_checked():
    from pipeline.config import ConfigError, load_config
    base = {"run": {"work_dir": "/tmp/x"}}
    cfg = load_config(ROOT / "configs/voc-ensemble-smoke.yaml", overrides=base)
    assert cfg.ensemble.routes == ["argmax"] and cfg.ensemble.weights == [0.85, 0.15]
    for bad, msg in (({"ensemble": {"weights": [1.0]}}, "1 weights for 2 models"),
                     ({"ensemble": {"routes": ["affinity"], "weights": [0.5, 0.5]}}, "not in pseudo_masks.extra"),
                     ({"ensemble": {"weights": [-0.5, 1.5]}}, "ensemble.weights.*greater than or equal to 0"),
                     ({"ensemble": {"weights": [0.0, 0.0]}}, "not all zero")):
        with pytest.raises(ConfigError, match=msg):
            load_config(ROOT / "configs/voc-ensemble-smoke.yaml", overrides={**base, **bad})


def test_ensemble_stage_trains_the_second_model_and_scores_each_and_the_blend(tmp_path):
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable
    from stages.ensemble import STAGE as ensemble
    from stages.train_segmentation import STAGE as train_segmentation
    from stages.runner import run_stage
    cfg = load_config(ROOT / "configs/voc-ensemble-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 6},
        "train_segmentation": {"iters": 4, "val_interval": 4, "checkpoint_interval": 4, "batch_size": 2,
                               "gallery_size": 0}})
    prepared = run_stage(cfg, "prepare_data")
    pseudo = tmp_path / "pseudo"  # pseudo_masks-like: the trained route = GT, the extra route = GT shifted
    for d in ("masks", "masks_argmax"):
        (pseudo / d).mkdir(parents=True)
    for r in LabelTable.from_artifact(prepared, cfg.data.train_split).records:
        shutil.copy(r.mask, pseudo / "masks" / f"{r.id}.png")
        from pipeline.data.datasets import read_mask, write_mask
        write_mask(pseudo / "masks_argmax" / f"{r.id}.png", np.roll(read_mask(r.mask), 7, axis=1))
    main = tmp_path / "main"
    main.mkdir()
    train_segmentation.run(cfg, {"prepare_data": prepared, "pseudo_masks": pseudo}, main)
    inputs = {"prepare_data": prepared, "pseudo_masks": pseudo, "train_segmentation": main}
    out = tmp_path / "ens"
    out.mkdir()
    metrics = ensemble.run(cfg, inputs, out)
    vm = json.loads((out / "val_metrics.json").read_text())
    names = ["train_segmentation (crf)", "ensemble member (argmax)"]
    assert vm["models"] == names and vm["weights"] == [0.85, 0.15]
    assert set(vm["members"]) == set(names) and metrics["miou"] == vm["miou"]
    assert (out / "members/argmax/model_final.pth").exists()
    assert "masks_argmax" in (out / "members/argmax/lists/train.txt").read_text()
    val = [r for r in LabelTable.from_artifact(prepared, "val").records if r.mask]
    assert len(list((out / "predictions/val").glob("*.png"))) == len(val) == vm["num_images"]
    # the main model alone, by the ensemble's scoring, is train_segmentation's own val number
    own = json.loads((main / "val_metrics.json").read_text())["miou"]
    assert abs(vm["members"]["train_segmentation (crf)"]["miou"] - own) < 0.5
    # weights (1, 0): the blend is the main model; (0, 1): the member (a rerun keeps the trained member)
    for w, who in (([1.0, 0.0], names[0]), ([0.0, 1.0], names[1])):
        c = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"weights": w})})
        again = tmp_path / f"ens-{w[0]}"
        shutil.copytree(out / "members", again / "members")
        mtime = (again / "members/argmax/model_final.pth").stat().st_mtime
        ensemble.run(c, inputs, again)
        doc = json.loads((again / "val_metrics.json").read_text())
        assert doc["miou"] == pytest.approx(doc["members"][who]["miou"], abs=1e-9)
        assert (again / "members/argmax/model_final.pth").stat().st_mtime == mtime


def test_evaluate_takes_the_ensemble_only_when_routes_are_set():
    from pipeline.config import load_config
    from stages.runner import select, stage_inputs
    over = {"run": {"work_dir": "/tmp/x"}}
    with_ens = load_config(ROOT / "configs/voc-ensemble-smoke.yaml", overrides=over)
    plain = load_config(ROOT / "configs/voc-smoke.yaml", overrides=over)
    assert "ensemble" in stage_inputs(with_ens, "evaluate") and "ensemble" in select(cfg=with_ens)
    assert "ensemble" not in stage_inputs(plain, "evaluate") and "ensemble" not in select(cfg=plain)


@pytest.mark.parametrize("arch", ["mask2former", "deeplabv3plus"])
def test_class_probabilities_sum_to_one_and_argmax_to_the_models_own_prediction(tmp_path, arch):
    from mmseg.apis import init_model
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable
    from pipeline.segmentation.ensemble import class_probabilities
    from pipeline.segmentation.mmseg_config import build_config
    from pipeline.segmentation.train import _prepare, predict
    from stages.runner import run_stage
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 2},
        "train_segmentation": {"model": arch}})
    image = LabelTable.from_artifact(run_stage(cfg, "prepare_data"), "val").records[0].image
    mm = build_config(cfg.train_segmentation, dataset="voc", train_list=tmp_path / "t.txt", val_list=None,
                      work_dir=tmp_path / "wd")
    _prepare(mm)
    torch.manual_seed(0)
    model = init_model(mm, None, device="cpu")
    p = class_probabilities(model, image)
    assert p.shape[0] == 21 and p.min() >= 0
    torch.testing.assert_close(p.sum(0), torch.ones(p.shape[1:]), rtol=0, atol=1e-5)
    assert np.array_equal(p.argmax(0).numpy().astype(np.uint8), predict(model, image))
