"""train_segmentation: mmseg models on CPU with mmcv-lite, on the
vendored tiny VOC data. Pseudo masks here are copies of the real GT PNGs
(real data, standing in for the pseudo_masks stage's output)."""
from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.segmentation.mmcv_compat import MissingMmcvOpError, ensure_mmcv, has_full_mmcv

ROOT = Path(__file__).resolve().parents[1]
ensure_mmcv()


def _fake_pseudo_masks(prepared: Path, split: str, dest: Path) -> Path:
    """A pseudo_masks-like artifact: masks/<id>.png copied from the GT."""
    from pipeline.data.datasets import LabelTable
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    for r in LabelTable.from_artifact(prepared, split).records:
        shutil.copy(r.mask, dest / "masks" / f"{r.id}.png")
    return dest


def _small_cfg(tmp_path, **seg):
    from pipeline.config import load_config
    over = {"run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 8},
            "train_segmentation": {"log_interval": 1, "val_interval": 1000, "gallery_size": 2, **seg}}
    return load_config(ROOT / "configs/voc-smoke.yaml", overrides=over)


def _recomputed_miou(out: Path, records) -> float:
    """mIoU of the exported model's predictions on the real val masks, by our own metrics code."""
    from mmengine.config import Config
    from pipeline.data.datasets import read_mask
    from pipeline.evaluation.metrics import confusion, scores
    from pipeline.segmentation.train import load_model, predict
    model = load_model(Config.fromfile(out / "mmseg_config.py"), out / "model_final.pth")
    cm, missed = np.zeros((21, 21), np.int64), np.zeros(21, np.int64)
    for r in records:
        c, m = confusion(predict(model, r.image), read_mask(r.mask), 21)
        cm, missed = cm + c, missed + m
    return scores(cm, missed)["miou"]


# ----------------------------------------------------------------- mmcv
def test_smoke_config_is_offline(smoke_cfg):
    sec = smoke_cfg.train_segmentation
    assert sec.tiny and sec.pretrained is None


def test_mmcv_stand_in_raises_clear_error():
    import torch
    import mmcv.ops
    if has_full_mmcv():
        pytest.skip("full mmcv installed: nothing is patched")
    with pytest.raises(MissingMmcvOpError, match="install full mmcv 2.1.0"):
        mmcv.ops.nms(torch.rand(3, 4) * 10, torch.rand(3), 0.5)


# ----------------------------------------------------------------- full configs
FULL = [("voc-full.yaml", {"data": {"root": "data/voc-tiny"}}, 21),
        ("coco-full.yaml", {"data": {"root": "data/coco-tiny", "splits": {
            "train": {"images": "images/train2017", "annotations": "annotations/instances_train2017.json"},
            "val": {"images": "images/val2017", "annotations": "annotations/instances_val2017.json"}}}}, 81)]


@pytest.mark.parametrize("name,over,n_cls", FULL, ids=["voc-full", "coco-full"])
def test_full_configs_load_and_build(tmp_path, name, over, n_cls):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from pipeline.config import load_config
    from pipeline.segmentation.mmseg_config import build_config
    from pipeline.segmentation.train import _prepare
    cfg = load_config(ROOT / "configs" / name, overrides=over)
    sec = cfg.train_segmentation
    assert (sec.model, sec.backbone, sec.tiny) == ("mask2former", "swin_l", False)
    mm = build_config(sec, dataset=cfg.data.dataset, train_list=tmp_path / "train.txt",
                      val_list=tmp_path / "val.txt", work_dir=tmp_path / "wd")
    mm.dump(str(tmp_path / "cfg.py"))
    text = (tmp_path / "cfg.py").read_text()
    assert "SyncBN" not in text and "torchvision://" not in text  # CPU, single process
    loaded = Config.fromfile(str(tmp_path / "cfg.py"))
    # Swin-L ImageNet-22k weights are named (downloaded on users' machines), not loaded here
    assert loaded.model.backbone.init_cfg.checkpoint.endswith("swin_large_patch4_window12_384_22k_20220412-6580f57d.pth")
    _prepare(loaded)
    head = loaded.model.decode_head
    assert head.type == "IgnoreAwareMask2FormerHead" and head.num_classes == n_cls
    assert loaded.model.backbone.embed_dims == 192  # Swin-L
    assert len(loaded.train_dataloader.dataset.metainfo["classes"]) == n_cls
    model = MODELS.build(loaded.model)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 150e6, n_params  # Swin-L + Mask2Former head (~215M)
    del model
    gc.collect()


@pytest.mark.parametrize("arch", ["deeplabv3plus", "deeplabv2"])
def test_deeplab_full_configs_build(tmp_path, arch):
    from mmseg.registry import MODELS
    from pipeline.config import TrainSegmentationCfg
    from pipeline.segmentation.mmseg_config import build_config
    from pipeline.segmentation.train import _prepare
    mm = build_config(TrainSegmentationCfg(model=arch, backbone="resnet101"), dataset="voc",
                      train_list=tmp_path / "t.txt", val_list=tmp_path / "v.txt", work_dir=tmp_path)
    _prepare(mm)
    assert mm.model.backbone.depth == 101 and mm.model.backbone.norm_cfg.type == "BN"
    want = {"deeplabv3plus": ("DepthwiseSeparableASPPHead", (1, 12, 24, 36)),
            "deeplabv2": ("DeepLabV2Head", (6, 12, 18, 24))}[arch]
    assert (mm.model.decode_head.type, tuple(mm.model.decode_head.dilations)) == want
    model = MODELS.build(mm.model)
    assert sum(p.numel() for p in model.parameters()) > 40e6
    # SyncBN only for several CUDA processes, and not for DeepLab-v2's frozen BN
    mm2 = build_config(TrainSegmentationCfg(model=arch), dataset="voc", train_list=tmp_path / "t.txt",
                       val_list=tmp_path / "v.txt", work_dir=tmp_path, device="cuda", nproc=2)
    assert mm2.model.backbone.norm_cfg.type == ("BN" if arch == "deeplabv2" else "SyncBN")


# ----------------------------------------------------------------- real training
def test_overfits_one_image(tmp_path, prepared):
    """Trained on the GT of one image, the model predicts that image well: the
    val mIoU (mmseg IoUMetric on the real mask) is high and matches our own
    metric on the exported model's predictions."""
    from pipeline.config import TrainSegmentationCfg
    from pipeline.data.datasets import LabelTable, read_mask
    from pipeline.segmentation.mmseg_config import build_config
    from pipeline.segmentation.train import export_weights, train, val_history
    recs = LabelTable.from_artifact(prepared, "val").records
    # an image with one object class covering a good part of it
    rec = max((r for r in recs if len(r.labels) == 1),
              key=lambda r: min(np.mean(read_mask(r.mask) == 0), np.mean(read_mask(r.mask) == r.labels[0])))
    (tmp_path / "train.txt").write_text(f"{rec.image}\t{rec.mask}\n" * 4)
    (tmp_path / "val.txt").write_text(f"{rec.image}\t{rec.mask}\n")
    sec = TrainSegmentationCfg(model="deeplabv3plus", tiny=True, crop_size=96, batch_size=2, iters=40,
                               optimizer="adamw", lr=5e-3, weight_decay=0.0, val_interval=40,
                               checkpoint_interval=40, log_interval=10)
    mm = build_config(sec, dataset="voc", train_list=tmp_path / "train.txt", val_list=tmp_path / "val.txt",
                      work_dir=tmp_path / "wd", num_workers=0, augment=False)
    mm.dump(str(tmp_path / "mmseg_config.py"))
    train(mm)
    hist = val_history(tmp_path / "wd")
    assert [h["iter"] for h in hist] == [40]
    assert hist[-1]["mIoU"] > 70, hist[-1]
    export_weights(tmp_path / "wd", tmp_path / "model_final.pth")
    ours = _recomputed_miou(tmp_path, [rec])
    assert abs(ours - hist[-1]["mIoU"]) < 0.5, (ours, hist[-1]["mIoU"])


_INTERRUPTED_RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from pipeline.config import load_config
    from pipeline.segmentation import final as ts
    cfg = load_config("configs/voc-smoke.yaml", overrides=json.loads(sys.argv[1]))
    ts.run(cfg, {"prepare_data": Path(sys.argv[2]), "pseudo_masks": Path(sys.argv[3])}, Path(sys.argv[4]))
""")


def test_stage_deeplab_resumes_after_interruption(tmp_path):
    from pipeline.data.datasets import LabelTable
    from pipeline.segmentation import final as ts
    from stages.runner import run_stage
    cfg = _small_cfg(tmp_path, iters=8, checkpoint_interval=4, batch_size=2)
    prepared = run_stage(cfg, "prepare_data")
    pseudo = _fake_pseudo_masks(prepared, cfg.data.train_split, tmp_path / "pseudo")
    out = tmp_path / "out"
    out.mkdir()
    # 1) a real interruption: kill -9 the training process once the iter-4 checkpoint exists
    over = {"run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 8},
            "train_segmentation": cfg.section("train_segmentation")}
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_RUN, json.dumps(over), str(prepared),
                             str(pseudo), str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last = out / "work_dir/last_checkpoint"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the first run never wrote a checkpoint"
    assert last.read_text().strip().endswith("iter_4.pth")
    assert not (out / "model_final.pth").exists()
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(out / "tensorboard")) as w:  # as if the killed run had logged iteration 6
        w.add_scalar("loss", 999.0, 6)
    # 2) rerun in the same artifact dir: continues at iteration 5
    metrics = ts.run(cfg, {"prepare_data": prepared, "pseudo_masks": pseudo}, out)
    runs = sorted(p for p in (out / "work_dir").iterdir() if p.is_dir())
    assert len(runs) == 2
    iters = [json.loads(line)["iter"] for line in (runs[1] / "vis_data/scalars.json").read_text().splitlines()
             if '"loss"' in line]
    assert iters == [5, 6, 7, 8], iters
    assert "resumed" in next(runs[1].glob("*.log")).read_text().lower()
    # mmengine's TensorBoard curves continue too, each iteration once (mm_modules.TensorboardResume)
    from test_tensorboard import scalars
    assert [s for s, _ in scalars(out / "tensorboard")["loss"]] == list(range(1, 9))
    assert 999.0 not in [v for _, v in scalars(out / "tensorboard")["loss"]]
    # outputs
    import torch
    ck = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ck["meta"]["iter"] == 8 and "optimizer" not in ck
    vm = json.loads((out / "val_metrics.json").read_text())
    assert vm["iter"] == 8 and metrics["miou"] == vm["miou"]
    val = LabelTable.from_artifact(prepared, "val").records
    assert vm["num_images"] == len(val) == 8
    assert set(vm["per_class_iou"]) == set(LabelTable.from_artifact(prepared, "val").classes)
    assert 0 <= vm["miou"] <= 100 and vm["per_class_iou"]["background"] is not None
    for f in ("mmseg_config.py", "gallery.png", "per_class_iou.png", "lists/train.txt", "lists/val.txt"):
        assert (out / f).exists(), f
    assert not list((out / "work_dir").glob("iter_*.pth"))
    # the metrics are those of the model's real predictions on the real val masks
    assert abs(_recomputed_miou(out, val) - vm["miou"]) < 0.5


def test_stage_mask2former(tmp_path):
    from pipeline.segmentation import final as ts
    from stages.runner import run_stage
    cfg = _small_cfg(tmp_path, model="mask2former", iters=3, checkpoint_interval=3, batch_size=2, lr=1e-3,
                     weight_decay=0.05)
    prepared = run_stage(cfg, "prepare_data")
    pseudo = _fake_pseudo_masks(prepared, cfg.data.train_split, tmp_path / "pseudo")
    out = tmp_path / "out"
    out.mkdir()
    metrics = ts.run(cfg, {"prepare_data": prepared, "pseudo_masks": pseudo}, out)
    vm = json.loads((out / "val_metrics.json").read_text())
    assert vm["model"] == "mask2former" and vm["iter"] == 3 and metrics["iters"] == 3
    assert 0 <= vm["miou"] <= 100 and len(vm["per_class_iou"]) == 21
    assert "Mask2FormerHead" in (out / "mmseg_config.py").read_text()
    assert (out / "model_final.pth").exists() and (out / "gallery.png").exists()
    assert (out / "val_curve.png").stat().st_size > 1000 and (out / "per_class_iou.png").stat().st_size > 1000


def test_missing_pseudo_mask_is_named(tmp_path):
    from pipeline.data.datasets import DataError
    from pipeline.segmentation import final as ts
    from stages.runner import run_stage
    cfg = _small_cfg(tmp_path)
    prepared = run_stage(cfg, "prepare_data")
    pseudo = _fake_pseudo_masks(prepared, cfg.data.train_split, tmp_path / "pseudo")
    victim = sorted((pseudo / "masks").glob("*.png"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=victim.stem):
        ts.data_lists(cfg, {"prepare_data": prepared, "pseudo_masks": pseudo}, tmp_path / "out")
