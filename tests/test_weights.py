"""Hub weights offline: one paragraph naming the model and the config key, before any
stage writes; cached weights and local files pass; smoke configs check nothing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.weights import WeightsUnavailable
from stages import ORDER
from stages.plan import RunPlan
from stages.runner import hub_weights, preflight, run_all, select

ROOT = Path(__file__).resolve().parents[1]
DEAD_URL = "https://127.0.0.1:9/checkpoints/swin_test-0123abcd.pth"  # port 9: refused at once, no network


def _cfg_file(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\nrun: {{work_dir: {tmp_path / 'runs'}}}\n{extra}")
    return p


def _wsss(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    # HF_HUB_OFFLINE: the hub is not even asked (fast and deterministic here); an empty HF cache
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _assert_one_paragraph(res: subprocess.CompletedProcess, *names: str) -> None:
    assert res.returncode != 0, res.stdout[-2000:]
    err = res.stderr
    assert "Traceback" not in err, err[-3000:]
    line = next(l for l in err.splitlines() if l.startswith("error: "))
    for n in names:
        assert n in line, (n, line)
    assert "set " in line and "Nothing was written" in line


@pytest.mark.slow
def test_offline_timm_weights_fail_with_one_paragraph_before_any_write(tmp_path):
    cfg = _cfg_file(tmp_path, "mask_generator: {pretrained: true}\n")
    for args in (["stage", "train_cam"], ["run"]):
        res = _wsss(tmp_path, *args, "--config", str(cfg))
        _assert_one_paragraph(res, "deit_tiny_patch16_224", "mask_generator.pretrained", "train_cam.init_checkpoint",
                              "LocalEntryNotFoundError")
        assert not (tmp_path / "runs").exists(), args  # no artifact directory, not even the store


@pytest.mark.slow
def test_offline_clip_openai_fails_with_one_paragraph_before_any_write(tmp_path):
    cfg = _cfg_file(tmp_path, "clip: {factory: null, model: ViT-B-32-quickgelu, pretrained: openai}\n")
    res = _wsss(tmp_path, "run", "--config", str(cfg))
    _assert_one_paragraph(res, "ViT-B-32-quickgelu", "'openai'", "clip.pretrained", "match")
    assert not (tmp_path / "runs").exists()


def test_which_hub_weights_a_run_needs():
    smoke = load_config(ROOT / "configs/voc-smoke.yaml")
    assert hub_weights(smoke, select(cfg=smoke)) == []  # smoke (its stages: no sam_masks): nothing to check
    full = load_config(ROOT / "configs/voc-full.yaml", overrides={"data": {"root": str(ROOT / "data/voc-tiny")}})
    assert [w.key for w in hub_weights(full, ORDER)] == ["mask_generator.pretrained", "clip.pretrained",
                                                           "sam.checkpoint", "train_segmentation.pretrained"]
    assert [w.key for w in hub_weights(full, ["pseudo_masks", "evaluate"])] == []
    assert [w.key for w in hub_weights(full, ["refine"])] == ["clip.pretrained"]
    imported = full.model_copy(update={"train_cam": full.train_cam.model_copy(
        update={"init_checkpoint": "/x/checkpoint_best_mIoU.pth"})})
    assert "mask_generator.pretrained" not in [w.key for w in hub_weights(imported, ORDER)]


def test_segmentation_url_resolves_through_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    tiny = load_config(_cfg_file(tmp_path, f"train_segmentation: {{pretrained: '{DEAD_URL}', tiny: true}}\n"))
    assert hub_weights(tiny, ["train_segmentation"]) == []  # random-initialised: loads no weights
    cfg = load_config(_cfg_file(tmp_path, f"train_segmentation: {{pretrained: '{DEAD_URL}', tiny: false}}\n"))
    # not cached, not downloadable: the run stops before its first stage, naming the key
    with pytest.raises(WeightsUnavailable, match=r"train_segmentation\.pretrained: https://127\.0\.0\.1:9/") as e:
        run_all(cfg)
    assert "torch.hub's checkpoint cache" in str(e.value) and "download the file from" in str(e.value)
    assert not (tmp_path / "runs").exists()
    # a cached train_segmentation artifact loads nothing: not checked (unless forced)
    from pipeline.store import Store
    from stages.runner import stage_keys
    keys = stage_keys(cfg)
    done = Store(cfg.run.work_dir).path(keys["train_segmentation"])
    done.mkdir(parents=True)
    (done / "manifest.json").write_text('{"files": {}}')
    preflight(RunPlan(cfg, ["train_segmentation", "evaluate"], keys=keys))
    with pytest.raises(WeightsUnavailable):
        preflight(RunPlan(cfg, ["train_segmentation"], force=["train_segmentation"], keys=keys))
    # in torch.hub's cache (where mmengine's load_from_http looks): resolved without the network
    cached = tmp_path / "torch/hub/checkpoints/swin_test-0123abcd.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"weights")
    preflight(RunPlan(cfg, ["train_segmentation"], force=["train_segmentation"]))
