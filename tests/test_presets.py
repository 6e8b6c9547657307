"""The final-model numbers of the full presets, pinned against a table that names each
number's source. The values are read from the mmseg config the stage generates (what
trains), not from the YAML alone, so a changed default in mmseg_config fails here too."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.segmentation.mmcv_compat import ensure_mmcv

ensure_mmcv()
ROOT = Path(__file__).resolve().parents[1]
COCO_DATA = {"root": "data/coco-tiny", "splits": {
    "train": {"images": "images/train2017", "annotations": "annotations/instances_train2017.json"},
    "val": {"images": "images/val2017", "annotations": "annotations/instances_val2017.json"}}}

M2F = "mmseg configs/mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py + _r50_ base"
FMA = "FMA-WSSS README (HAL-42/FMA-WSSS): 2 GPUs x 2 images, crop 512"
VOC_PIPE = "mmseg configs/_base_/datasets/pascal_voc12.py train pipeline"
DLV2 = "DeepLab-v2 (Chen et al. TPAMI 2017) VOC protocol, kazuto1011/deeplab-pytorch configs + main.py"

# preset -> {number: (value, source)}
MASK2FORMER = {
    "optimizer": ("AdamW", M2F), "lr": (1e-4, M2F), "weight_decay": (0.05, M2F), "eps": (1e-8, M2F),
    "betas": ((0.9, 0.999), M2F), "grad_clip": ((0.01, 2), M2F), "poly": ((0.9, 0.0), M2F),
    "backbone_lr_mult": (0.1, M2F), "drop_path": (0.3, M2F), "queries": (100, M2F), "decoder_layers": (9, M2F),
    "no_object_weight": (0.1, M2F), "points": ((12544, 3.0, 0.75), M2F),
    "loss_weights": ((2.0, 5.0, 5.0), M2F), "match_cost_weights": ((2.0, 5.0, 5.0), M2F),
    "batch": (4, FMA), "crop": (512, FMA),
    "train_pipeline": ((["LoadImageFromFile", "LoadAnnotations", "RandomResize", "RandomCrop", "RandomFlip",
                         "PhotoMetricDistortion", "PackSegInputs"], (2048, 512), (0.5, 2.0), 0.75, 0.5), VOC_PIPE),
}
PRESETS = {
    "voc-full": MASK2FORMER | {"iters": (80000, "FMA-WSSS README (VOC 80k)")},
    "coco-full": MASK2FORMER | {"iters": (100000, "FMA-WSSS README (COCO 100k)")},
}
DEEPLABV2 = {
    "optimizer": ("SGD", DLV2), "momentum": (0.9, DLV2), "lr": (2.5e-4, DLV2), "weight_decay": (5e-4, DLV2),
    "batch": (10, DLV2), "crop": (321, DLV2), "poly": ((0.9, 0.0), DLV2), "grad_clip": (None, DLV2),
    "classifier_lr": ((10.0, 20.0, 0.0), "deeplab-pytorch main.py get_params: 10x weights, 20x biases, wd 0"),
    "frozen_bn": (True, DLV2), "scales": ([0.5, 0.75, 1.0, 1.25, 1.5], "deeplab-pytorch configs/voc12.yaml SCALES"),
    "rates": ((6, 12, 18, 24), DLV2),
}
PRESETS |= {"voc-deeplabv2": DEEPLABV2 | {"iters": (20000, DLV2)},
            "coco-deeplabv2": DEEPLABV2 | {"iters": (100000, "our assumption (docs/reference/fidelity.md: no source "
                                                         "fixes it)")}}


def _mm(name: str, tmp_path: Path):
    from pipeline.config import load_config
    from pipeline.segmentation.mmseg_config import build_config
    coco = name.startswith("coco")
    cfg = load_config(ROOT / f"configs/{name}.yaml", overrides={  # pretrained: no hub, no local file
        "data": COCO_DATA if coco else {"root": "data/voc-tiny"}, "train_segmentation": {"pretrained": None}})
    sec = cfg.train_segmentation
    return sec, build_config(sec, dataset="coco" if coco else "voc", train_list=tmp_path / "t.txt",
                             val_list=tmp_path / "v.txt", work_dir=tmp_path / "wd")


def _read(sec, mm) -> dict:
    opt, wrap, sched = mm.optim_wrapper.optimizer, mm.optim_wrapper, mm.param_scheduler[0]
    clip = wrap.get("clip_grad")
    out = {"optimizer": opt.type, "lr": opt.lr, "weight_decay": opt.weight_decay,
           "batch": mm.train_dataloader.batch_size,
           "iters": mm.train_cfg.max_iters, "crop": mm.model.data_preprocessor["size"][0],
           "grad_clip": (clip.max_norm, clip.norm_type) if clip else None, "poly": (sched.power, sched.eta_min)}
    head, pipe = mm.model.decode_head, mm.train_dataloader.dataset.pipeline
    keys = wrap.get("paramwise_cfg", {}).get("custom_keys", {})
    if sec.model == "mask2former":
        tc = head.train_cfg
        out |= {"eps": opt.eps, "betas": tuple(opt.betas), "backbone_lr_mult": keys["backbone"]["lr_mult"],
                "drop_path": mm.model.backbone.drop_path_rate, "queries": head.num_queries,
                "decoder_layers": head.transformer_decoder.num_layers,
                "no_object_weight": head.loss_cls.class_weight[-1],
                "points": (tc.num_points, tc.oversample_ratio, tc.importance_sample_ratio),
                "loss_weights": (head.loss_cls.loss_weight, head.loss_mask.loss_weight, head.loss_dice.loss_weight),
                "match_cost_weights": tuple(c["weight"] for c in tc.assigner.match_costs),
                "train_pipeline": ([t["type"] for t in pipe], pipe[2]["scale"], pipe[2]["ratio_range"],
                                   pipe[3]["cat_max_ratio"], pipe[4]["prob"])}
        assert set(head.loss_cls.class_weight[:-1]) == {1.0}
    else:
        bias = keys["decode_head.classifiers.0.bias"]
        resize = pipe[2]["transforms"]
        out |= {"momentum": opt.momentum,
                "frozen_bn": sec.frozen_bn and not mm.model.backbone.norm_cfg["requires_grad"],
                "classifier_lr": (keys["decode_head"]["lr_mult"], bias["lr_mult"], bias["decay_mult"]),
                "scales": [r[0]["scale_factor"] for r in resize], "rates": tuple(head.dilations)}
        assert [t["type"] for t in pipe] == ["LoadImageFromFile", "LoadAnnotations", "RandomChoice", "RandomCrop",
                                             "RandomFlip", "PackSegInputs"] and pipe[4]["prob"] == 0.5
    return out


@pytest.mark.parametrize("name", list(PRESETS))
def test_final_model_numbers_match_their_sources(name, tmp_path):
    sec, mm = _mm(name, tmp_path)
    got = _read(sec, mm)
    wrong = {k: (got[k], v, src) for k, (v, src) in PRESETS[name].items() if not _same(got[k], v)}
    assert not wrong, "\n".join(f"{k}: {g!r}, source says {v!r} ({s})" for k, (g, v, s) in wrong.items())


def _same(a, b) -> bool:
    """Numbers to float precision (a YAML 2.5e-4 vs a product), everything else exactly."""
    if isinstance(b, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
        return a == pytest.approx(b, rel=1e-12)
    if isinstance(b, (tuple, list)) and isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b if isinstance(b, bool) else a == b


def test_mask2former_numbers_equal_mmsegs_own_swin_l_config(tmp_path):
    """The M2F table's source, read from the installed mmsegmentation package: our generated
    config carries the same recipe numbers (crop, batch and iterations come from FMA-WSSS)."""
    import mmseg
    from mmengine.config import Config
    path = (Path(mmseg.__file__).parent / ".mim/configs/mask2former"
            / "mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py")
    if not path.exists():
        pytest.skip(f"{path}: mmseg installed without its configs")
    ref = Config.fromfile(str(path))
    sec, mm = _mm("voc-full", tmp_path)
    ours = _read(sec, mm)
    opt, head, sched = ref.optim_wrapper.optimizer, ref.model.decode_head, ref.param_scheduler[0]
    tc = head.train_cfg
    theirs = {"optimizer": opt.type, "lr": opt.lr, "weight_decay": opt.weight_decay, "eps": opt.eps,
              "betas": tuple(opt.betas), "grad_clip": (ref.optim_wrapper.clip_grad.max_norm,
                                                       ref.optim_wrapper.clip_grad.norm_type),
              "poly": (sched.power, sched.eta_min),
              "backbone_lr_mult": ref.optim_wrapper.paramwise_cfg.custom_keys["backbone"]["lr_mult"],
              "drop_path": ref.model.backbone.drop_path_rate, "queries": head.num_queries,
              "decoder_layers": head.transformer_decoder.num_layers, "no_object_weight": head.loss_cls.class_weight[-1],
              "points": (tc.num_points, tc.oversample_ratio, tc.importance_sample_ratio),
              "loss_weights": (head.loss_cls.loss_weight, head.loss_mask.loss_weight, head.loss_dice.loss_weight),
              "match_cost_weights": tuple(c["weight"] for c in tc.assigner.match_costs)}
    for k, v in theirs.items():
        assert _same(ours[k], v), (k, ours[k], v)
