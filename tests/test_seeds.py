"""Several seeds of one config: which artifacts the seeds share (the stage contract's run.seed
declarations), the spread statistics, and the DeepLab-v2 head that export-model rewrites."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipeline.config import Config, load_config
from stages import ORDER, STAGES
from stages.runner import select, stage_inputs, stage_keys
from stages.seeds import seeds_of, with_seed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base_" not in p.parts)
SEED_FREE = {"prepare_data", "sam_masks"}  # never depend on run.seed, whatever the config


def _seed_dependent(cfg: Config) -> set[str]:
    """Stages that declare run.seed, and everything downstream of them."""
    out = set()
    for n in ORDER:
        if STAGES[n].seeded(cfg) or set(stage_inputs(cfg, n)) & out:
            out.add(n)
    return out


def _changed(cfg: Config) -> set[str]:
    """Stages this config runs whose key differs between seed 0 and seed 1."""
    a, b = stage_keys(with_seed(cfg, 0)), stage_keys(with_seed(cfg, 1))
    return {n for n in select(cfg=cfg) if a[n] != b[n]}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_seed_changes_exactly_the_seeded_stages(path):
    cfg = load_config(path, check_paths=False)
    assert _changed(cfg) == _seed_dependent(cfg) & set(select(cfg=cfg))
    assert not SEED_FREE & _changed(cfg)
    assert {"train_cam", "train_segmentation"} & set(select(cfg=cfg)) <= _changed(cfg)  # imported CAMs: no train_cam
    assert "train_segmentation" in _changed(cfg)


def test_an_imported_warm_start_and_its_cams_are_shared_by_all_seeds():
    """train_cam.init_checkpoint: nothing random happens in train_cam, so its key, and with
    export_cams.source train_cam the CAMs and pseudo masks, are the same for every seed."""
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", check_paths=False)
    d = cfg.resolved()
    d["train_cam"]["init_checkpoint"] = "weaktr.pth"
    d["export_cams"]["source"] = "train_cam"
    imported = Config.model_validate(d)
    assert _changed(imported) == {"train_segmentation", "evaluate"}
    assert _seed_dependent(imported) & set(select(cfg=imported)) == {"train_segmentation", "evaluate"}
    d["export_cams"]["source"] = "refine"  # the phases still train with the seed
    assert _changed(Config.model_validate(d)) == {"match", "learn_prompts", "refine", "export_cams", "pseudo_masks",
                                                  "train_segmentation", "evaluate"}


def test_run_seeds_is_part_of_no_key_and_each_seed_once():
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", check_paths=False)
    d = cfg.resolved()
    d["run"]["seeds"] = [0, 1, 2]
    multi = Config.model_validate(d)
    assert stage_keys(multi) == stage_keys(cfg)
    assert seeds_of(multi) == [0, 1, 2] and seeds_of(multi, [4, 5]) == [4, 5] and seeds_of(cfg) == []
    with pytest.raises(ValueError, match="each seed once"):
        seeds_of(cfg, [1, 1])


def test_spread_statistics_by_hand():
    from pipeline.evaluation.spread import Stat
    st = Stat.of({"0": 50.0, "1": 52.0, "2": 57.0, "3": None})
    assert (st.mean, st.min, st.max, st.n) == (53.0, 50.0, 57.0, 3)
    assert st.std == pytest.approx(math.sqrt((9 + 1 + 16) / 2), rel=1e-15)  # sample std, ddof=1
    assert Stat.of({"0": 1.0}).std is None and Stat.of({"0": None}) is None


def test_seeds_option_takes_several_values():
    from flows.cli import spread_option
    assert spread_option(["wsss", "run", "--seeds", "0", "1", "2", "-c", "x.yaml"], "--seeds") == [
        "wsss", "run", "--seeds", "0", "--seeds", "1", "--seeds", "2", "-c", "x.yaml"]


def test_deeplabv2_head_exports_as_an_equal_mmseg_fcn_head():
    """export-model rewrites DeepLabV2Head (4 dilated 3x3 convs summed) as mmseg's FCNHead with one
    9x9 conv at dilation 6: the same taps and weights, so the logits agree to float32 summation
    order: 4 x 9 x C products per output, |x| ~ 1, |w| ~ 0.1: ~1e-6 relative; 1e-4 is far below a
    wrong tap placement (differences of order 1)."""
    import torch
    from mmseg.registry import MODELS

    from pipeline.segmentation import mm_modules  # noqa: F401  (registers DeepLabV2Head)
    from pipeline.segmentation.export import deeplabv2_as_fcn
    torch.manual_seed(0)
    head_cfg = dict(type="DeepLabV2Head", dilations=(6, 12, 18, 24), in_channels=8, in_index=0, channels=8,
                    dropout_ratio=0.0, num_classes=5, align_corners=False)
    v2 = MODELS.build(head_cfg).eval()
    for p in v2.parameters():
        torch.nn.init.normal_(p, std=0.1)
    state = {f"decode_head.{k}": v for k, v in v2.state_dict().items()}
    fcn_cfg, new_state = deeplabv2_as_fcn(head_cfg, dict(state))
    fcn = MODELS.build(fcn_cfg).eval()
    fcn.load_state_dict({k[len("decode_head."):]: v for k, v in new_state.items()}, strict=True)
    x = [torch.randn(2, 8, 40, 33)]
    with torch.no_grad():
        a, b = v2(x), fcn(x)
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    state["decode_head.classifiers.1.weight"] = state["decode_head.classifiers.1.weight"].flip(-1)
    wrong = MODELS.build(fcn_cfg).eval()
    wrong.load_state_dict({k[len("decode_head."):]: v for k, v in deeplabv2_as_fcn(head_cfg, state)[1].items()})
    with torch.no_grad():
        assert (wrong(x) - a).abs().max() > 1e-2
