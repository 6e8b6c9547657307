"""The final model as the papers train it. Tiny random-init models
on CPU; the DeepLab-v2 weight conversion uses a real ResNet-101 layout with
random values."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.segmentation.mmcv_compat import ensure_mmcv

ensure_mmcv()
ROOT = Path(__file__).resolve().parents[1]


def _mm(tmp_path, **kw):
    from pipeline.config import TrainSegmentationCfg
    from pipeline.segmentation.mmseg_config import build_config
    from pipeline.segmentation.train import _prepare
    converted = kw.pop("converted_weights", None)
    mm = build_config(TrainSegmentationCfg(**kw), dataset="voc", train_list=tmp_path / "t.txt",
                      val_list=tmp_path / "v.txt", work_dir=tmp_path / "wd", converted_weights=converted)
    _prepare(mm)
    return mm


def _build(mm):
    from mmseg.registry import MODELS
    return MODELS.build(mm.model)


def _samples(gt: torch.Tensor):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    out = []
    for g in gt:
        s = SegDataSample(metainfo=dict(img_shape=tuple(g.shape), pad_shape=tuple(g.shape)))
        s.gt_sem_seg = PixelData(data=g[None].long())
        out.append(s)
    return out


def _gt_with_ignored(h=32, w=32):
    """Two images: classes 0/5/12, the right third of each marked 255."""
    gt = torch.zeros(2, h, w, dtype=torch.long)
    gt[0, 4:20, 2:18] = 5
    gt[1, 10:28, 6:30] = 12
    gt[0, 18:, 8:14] = 12
    ignored = torch.zeros_like(gt, dtype=torch.bool)
    ignored[:, :, 2 * w // 3:] = True
    return gt.masked_fill(ignored, 255), ignored


# ------------------------------------------------------------ Swin weight decay (point 2)
def test_swin_block_and_downsample_norms_get_no_decay(tmp_path):
    """mmseg's Swin recipe: every norm of the backbone, the position tables and
    the query embeddings have decay 0; other backbone weights decay 0.05 at lr x0.1."""
    from mmengine.optim import build_optim_wrapper
    mm = _mm(tmp_path, model="mask2former", tiny=True, lr=1e-4, weight_decay=0.05)
    model = _build(mm)
    groups = {id(p): g for g in build_optim_wrapper(model, mm.optim_wrapper).optimizer.param_groups
              for p in g["params"]}
    names = dict(model.named_parameters())
    block_norms = [n for n in names if re.match(r"backbone\.stages\.\d+\.(blocks\.\d+|downsample)\.norm", n)]
    assert len(block_norms) == 2 * (4 * 2 + 3)  # tiny Swin: 1 block x 2 norms per stage, 3 downsamples
    no_decay = block_norms + [n for n in names if "relative_position_bias_table" in n or
                              n.startswith(("backbone.norm", "backbone.patch_embed.norm"))]
    for n in no_decay:
        assert groups[id(names[n])]["weight_decay"] == 0.0, n
        assert groups[id(names[n])]["lr"] == pytest.approx(1e-5), n
    qkv = "backbone.stages.0.blocks.0.attn.w_msa.qkv.weight"
    assert groups[id(names[qkv])]["weight_decay"] == pytest.approx(0.05)
    assert groups[id(names[qkv])]["lr"] == pytest.approx(1e-5)
    for n in names:  # head: query embeddings no decay, other weights full decay at lr x1
        if n.startswith("decode_head.query_"):
            assert groups[id(names[n])]["weight_decay"] == 0.0, n
    assert groups[id(names["decode_head.cls_embed.weight"])]["weight_decay"] == pytest.approx(0.05)


# ------------------------------------------------------------ 255 pixels ignored (point 3)
def _m2f_loss(head, gt, mask_preds, cls_scores, seed=0):
    gts, metas = head._seg_data_to_instance_data(_samples(gt))
    torch.manual_seed(seed)
    losses = head.loss_by_feat(cls_scores, mask_preds, gts, metas)
    return sum(v for v in losses.values())


@pytest.fixture(scope="module")
def m2f_heads(tmp_path_factory):
    from mmseg.registry import MODELS
    mm = _mm(tmp_path_factory.mktemp("m2f"), model="mask2former", tiny=True)
    ours = MODELS.build(mm.model.decode_head)
    stock = MODELS.build(dict(mm.model.decode_head, type="Mask2FormerHead"))
    return ours, stock


def _m2f_inputs(head, gt, seed=1):
    g = torch.Generator().manual_seed(seed)
    n_layers = head.num_transformer_decoder_layers + 1
    b, (h, w) = gt.shape[0], gt.shape[1:]
    cls = torch.randn(n_layers, b, head.num_queries, head.num_classes + 1, generator=g)
    # mask logits at the label resolution, so "the prediction at an ignored pixel" is one entry
    masks = torch.randn(n_layers, b, head.num_queries, h, w, generator=g).requires_grad_()
    return cls, masks


def test_mask2former_ignored_pixels_get_no_gradient(m2f_heads):
    ours, stock = m2f_heads
    gt, ignored = _gt_with_ignored()
    cls, masks = _m2f_inputs(ours, gt)
    _m2f_loss(ours, gt, masks, cls).backward()
    grad_at = masks.grad.abs().amax(dim=(0, 2))  # (B, H, W)
    assert grad_at[ignored].max() == 0
    assert grad_at[~ignored].max() > 0
    # mmseg's head counts them as negatives of every class mask: the same check fails there
    cls, masks = _m2f_inputs(stock, gt)
    _m2f_loss(stock, gt, masks, cls).backward()
    assert masks.grad.abs().amax(dim=(0, 2))[ignored].max() > 0


def test_mask2former_loss_ignores_predictions_at_ignored_pixels(m2f_heads):
    """Matching costs and every loss term: changing the predictions at 255
    pixels (same random points) leaves the loss unchanged."""
    ours, _ = m2f_heads
    gt, ignored = _gt_with_ignored()
    cls, masks = _m2f_inputs(ours, gt)
    with torch.no_grad():
        base = _m2f_loss(ours, gt, masks, cls)
        other = masks.detach().clone()
        at_ignored = ignored[None, :, None].expand_as(other)
        other[at_ignored] = torch.randn(int(at_ignored.sum())) * 10
        assert _m2f_loss(ours, gt, other, cls) == pytest.approx(base.item(), rel=1e-6)


def test_mask2former_without_ignored_pixels_is_mmdets_loss(m2f_heads):
    ours, stock = m2f_heads
    gt, _ = _gt_with_ignored()
    gt[gt == 255] = 0
    cls, masks = _m2f_inputs(ours, gt)
    with torch.no_grad():
        assert _m2f_loss(ours, gt, masks, cls).item() == pytest.approx(_m2f_loss(stock, gt, masks, cls).item(),
                                                                        rel=1e-5)


def test_mask2former_all_ignore_crop_gets_no_classification_loss(m2f_heads):
    """An image whose crop is all 255 has no gt mask; mmdet would still train every one of its
    queries towards "no object". Ours: no gradient reaches its class scores (any decoder layer),
    the other image's do, and the stock head's check fails."""
    ours, stock = m2f_heads
    gt, _ = _gt_with_ignored()
    gt[1] = 255
    for head, expect_zero in ((ours, True), (stock, False)):
        cls, masks = _m2f_inputs(head, gt)
        cls.requires_grad_()
        _m2f_loss(head, gt, masks, cls).backward()
        grad = cls.grad.abs().sum(dim=(0, 2, 3))  # per image
        assert grad[0] > 0
        assert (grad[1] == 0) == expect_zero, (type(head).__name__, grad)
    # a batch of only all-ignore crops: zero loss, no NaN
    cls, masks = _m2f_inputs(ours, torch.full_like(gt, 255))
    assert _m2f_loss(ours, torch.full_like(gt, 255), masks, cls).item() == 0.0


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv3plus"])
def test_deeplab_cross_entropy_ignores_255(tmp_path, arch):
    """mmseg's decode head passes ignore_index=255 to CrossEntropyLoss (avg over labelled pixels)."""
    head = _build(_mm(tmp_path, model=arch, tiny=True)).decode_head
    assert head.ignore_index == 255
    gt, ignored = _gt_with_ignored()
    logits = torch.randn(2, 21, 32, 32, requires_grad=True)  # at label size: no resize in the loss
    loss = head.loss_by_feat(logits, _samples(gt))["loss_ce"]
    loss.backward()
    grad_at = logits.grad.abs().amax(1)
    assert grad_at[ignored].max() == 0 and grad_at[~ignored].max() > 0
    other = logits.detach().clone()
    other.permute(0, 2, 3, 1)[ignored] = torch.randn(int(ignored.sum()), 21) * 10
    assert head.loss_by_feat(other, _samples(gt))["loss_ce"].item() == pytest.approx(loss.item(), rel=1e-6)


# ------------------------------------------------------------ DeepLab-v2 (point 4)
def test_deeplabv2_head_frozen_bn_and_head_lr(tmp_path):
    from mmengine.optim import build_optim_wrapper
    mm = _mm(tmp_path, model="deeplabv2", tiny=True, lr=2.5e-4)
    model = _build(mm)
    model.init_weights()
    head = model.decode_head
    convs = list(head.classifiers)
    assert [(c.dilation[0], c.padding[0], c.kernel_size) for c in convs] == [(d, d, (3, 3)) for d in (6, 12, 18, 24)]
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in head.modules())  # no image pooling
    assert not hasattr(head, "conv_seg")
    x = torch.randn(1, 3, 64, 64)
    feat = model.extract_feat(x)
    assert torch.equal(head(feat), sum(c(feat[0]) for c in convs))  # summed branches: same ops, same order
    # frozen BatchNorm: eval mode under model.train(), no gradient
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in bns)
    # deeplab-pytorch main.py: backbone lr x1, classifier weights lr x10 (both decayed), classifier
    # biases lr x20 without weight decay
    groups = {id(p): g for g in build_optim_wrapper(model, mm.optim_wrapper).optimizer.param_groups
              for p in g["params"]}
    for c in convs:
        assert (groups[id(c.weight)]["lr"], groups[id(c.weight)]["weight_decay"]) == \
            (pytest.approx(2.5e-3), pytest.approx(5e-4))
        assert (groups[id(c.bias)]["lr"], groups[id(c.bias)]["weight_decay"]) == (pytest.approx(5e-3), 0.0)
    assert (groups[id(model.backbone.conv1.weight)]["lr"], groups[id(model.backbone.conv1.weight)]["weight_decay"]) \
        == (pytest.approx(2.5e-4), pytest.approx(5e-4))
    assert mm.param_scheduler[0]["eta_min"] == 0.0


def test_deeplabv2_preset_numbers():
    from pipeline.config import load_config
    for name, data in [("voc-deeplabv2.yaml", {"root": "data/voc-tiny"}),
                       ("coco-deeplabv2.yaml", {"root": "data/coco-tiny", "splits": {
                           "train": {"images": "images/train2017", "annotations": "annotations/instances_train2017.json"},
                           "val": {"images": "images/val2017", "annotations": "annotations/instances_val2017.json"}}})]:
        sec = load_config(ROOT / "configs" / name, overrides={
            "data": data, "train_segmentation": {"pretrained": None}}).train_segmentation
        assert (sec.model, sec.backbone, sec.batch_size, sec.lr, sec.crop_size, sec.frozen_bn) == \
            ("deeplabv2", "resnet101", 10, 2.5e-4, 321, True)
    assert sec.iters == 100000
    voc = load_config(ROOT / "configs/voc-deeplabv2.yaml", overrides={
        "data": {"root": "data/voc-tiny"}, "train_segmentation": {"pretrained": None}}).train_segmentation
    assert voc.iters == 20000 and voc.pretrained_format == "pytorch"


def _isht7_state_dict(num_classes: int) -> dict:
    """The key names and shapes of isht7's MS_Deeplab (ResNet-101 [3, 4, 23, 3],
    Classifier_Module 2048 -> classes), random values; written from that
    code's structure, not from our model."""
    g = torch.Generator().manual_seed(0)
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"Scale.{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.01

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            sd[f"Scale.{name}.{p}"] = torch.rand(c, generator=g) + 0.5
    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 23), (512, 3)], 1):
        for b in range(blocks):
            pre = f"layer{li}.{b}"
            conv(f"{pre}.conv1", planes, inplanes, 1)
            bn(f"{pre}.bn1", planes)
            conv(f"{pre}.conv2", planes, planes, 3)
            bn(f"{pre}.bn2", planes)
            conv(f"{pre}.conv3", planes * 4, planes, 1)
            bn(f"{pre}.bn3", planes * 4)
            if b == 0:
                conv(f"{pre}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{pre}.downsample.1", planes * 4)
            inplanes = planes * 4
    for i in range(4):
        sd[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.randn(num_classes, 2048, 3, 3, generator=g) * 0.01
        sd[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.randn(num_classes, generator=g)
    return sd


def test_deeplabv2_caffe_coco_weights_convert_and_load(tmp_path):
    """Scale.* weights -> every backbone and classifier tensor of the full
    DeepLab-v2 ResNet-101, loaded through the config's init_cfg."""
    from pipeline.segmentation.pretrained import convert_deeplabv2_checkpoint
    sd = _isht7_state_dict(21)
    src = tmp_path / "MS_DeepLab_resnet_pretrained_COCO_init.pth"
    torch.save(sd, src)
    with pytest.raises(ValueError, match="pretrained_format"):
        convert_deeplabv2_checkpoint(src, tmp_path / "conv.pth", 21, "pytorch")
    info = convert_deeplabv2_checkpoint(src, tmp_path / "conv.pth", 21, "caffe")
    assert info["has_head"] and info["dropped"] == []
    mm = _mm(tmp_path, model="deeplabv2", backbone="resnet101", pretrained_format="caffe",
             converted_weights=(tmp_path / "conv.pth", True))
    assert mm.model.backbone.style == "caffe" and mm.model.data_preprocessor.bgr_to_rgb is False
    model = _build(mm)
    model.init_weights()
    state = model.state_dict()
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    converted = {k.replace("Scale.", "backbone.", 1).replace("backbone.layer5.conv2d_list", "decode_head.classifiers"): v
                 for k, v in sd.items()}
    assert set(converted) == expected  # a bijection onto the model's tensors
    for k, v in converted.items():
        assert torch.equal(state[k], v), k
    # a 21-class head does not fit COCO's 81 classes: backbone only
    info81 = convert_deeplabv2_checkpoint(src, tmp_path / "conv81.pth", 81, "caffe")
    assert not info81["has_head"] and len(info81["dropped"]) == 8


def test_deeplabv2_torchvision_layout_and_unknown_layout(tmp_path):
    from pipeline.segmentation.pretrained import convert_deeplabv2_state_dict
    tv = {k[len("Scale."):]: v for k, v in _isht7_state_dict(21).items() if "layer5" not in k}
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    out, info = convert_deeplabv2_state_dict(tv, 21)
    assert info["layout"] == "torchvision ResNet" and not info["has_head"]
    assert info["dropped"] == ["fc.weight", "fc.bias"] and all(k.startswith("backbone.") for k in out)
    with pytest.raises(ValueError, match="unrecognised weight layout.*layer1.block1"):
        convert_deeplabv2_state_dict({"layer1.block1.reduce.conv.weight": torch.zeros(1)}, 21)


# ------------------------------------------------------------ selection, TTA, CRF, labels (points 1, 5)
def test_stage_best_checkpoint_tta_crf_are_labelled(tmp_path):
    """save_best on val mIoU + multi-scale/flip TTA + CRF in one tiny run: the
    final model is the best iteration's, the reported numbers say how they were
    obtained, and the test loop's numbers are the model's real predictions."""
    from mmengine.config import Config
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable, read_image, read_mask
    from pipeline.evaluation.metrics import Confusion
    from pipeline.pseudo_masks.threshold import crf_index
    from pipeline.segmentation.train import load_model, predict, test
    from pipeline.evaluation import evaluate
    from pipeline.segmentation import final as ts
    from stages.runner import run_stage
    from test_segmentation import _fake_pseudo_masks
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 4},
        "train_segmentation": {"model": "deeplabv2", "iters": 4, "val_interval": 1, "checkpoint_interval": 4,
                               "batch_size": 2, "crop_size": 64, "lr": 0.05, "gallery_size": 0,
                               "checkpoint_selection": "best_val_miou", "tta": True, "tta_scales": [0.75, 1.0],
                               "crf": {"iterations": 2}}})
    prepared = run_stage(cfg, "prepare_data")
    pseudo = _fake_pseudo_masks(prepared, cfg.data.train_split, tmp_path / "pseudo")
    out = tmp_path / "out"
    out.mkdir()
    ts.run(cfg, {"prepare_data": prepared, "pseudo_masks": pseudo}, out)
    vm = json.loads((out / "val_metrics.json").read_text())
    hist = json.loads((out / "work_dir/val_history.json").read_text())
    assert [h["iter"] for h in hist] == [1, 2, 3, 4]
    best = max(hist, key=lambda h: (h["mIoU"], -h["iter"]))
    assert vm["iter"] == best["iter"] and vm["single_scale"]["miou"] == pytest.approx(best["mIoU"])
    assert vm["selected_on_ground_truth"] and vm["tta"] and vm["crf"]
    assert "selected on ground truth (val)" in vm["label"] and "flip" in vm["label"] and "CRF" in vm["label"]
    assert (out / "val_curve.png").exists() and not list((out / "work_dir").glob("best_*.pth"))
    ck = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ck["meta"]["iter"] == best["iter"]

    # the CRF metric = our CRF on the model's own single-scale predictions, scored by our metrics code
    mm = Config.fromfile(out / "mmseg_config.py")
    crf_res = test(mm, out / "model_final.pth", tmp_path / "t1", tta=False)
    model = load_model(mm, out / "model_final.pth")
    conf = Confusion(21)
    for r in LabelTable.from_artifact(prepared, "val").records:
        pred = predict(model, r.image)
        present, index = np.unique(pred, return_inverse=True)
        refined = present[crf_index(read_image(r.image), index.reshape(pred.shape).astype(np.uint8), len(present),
                                    cfg.train_segmentation.crf)]
        conf.add(refined, read_mask(r.mask))
    assert crf_res["mIoU"] == pytest.approx(conf.summary()["miou"], abs=0.05)

    # evaluate's report carries the label and the ground-truth-selection note
    final = evaluate._final_model({"train_segmentation": out})
    assert final.selected_on_ground_truth and final.label == vm["label"]


# ------------------------------------------------------------ TTA = average over the views
@pytest.mark.parametrize("arch", ["mask2former", "deeplabv3plus"])
def test_tta_prediction_is_the_average_over_scaled_and_flipped_views(tmp_path, arch):
    """mmseg's SegTTAModel on the config's tta_pipeline, for two val images, against a hand-made
    average: each view (the image rescaled by mmcv.imrescale as Resize(keep_ratio) does,
    optionally flipped) through the plain model, its logits flipped back and resized bilinearly
    to the image, softmaxed, averaged over the views, argmax. Both paths run the same float32
    model on the same view pixels, so the per-view logits agree to float rounding (atol 1e-5 of
    their scale) and the labels agree wherever the two best averaged probabilities differ by
    more than 1e-6 (the averaged probabilities' rounding is ~1e-7); elsewhere the TTA label is
    one of the classes within 1e-6 of the best."""
    import mmcv
    import torch.nn.functional as F
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    init_default_scope("mmseg")
    scales = [0.75, 1.0]
    mm = _mm(tmp_path, model=arch, tiny=True, crop_size=64, tta_scales=scales)
    torch.manual_seed(0)
    model = MODELS.build(mm.model)
    model.init_weights()
    with torch.no_grad():  # a fresh random model predicts one class everywhere: perturb it so labels vary
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    tta = MODELS.build(dict(type="SegTTAModel", module=model))
    seen = []  # what the TTA model merges: per-view logits at the image size (a spy; merging still runs)
    merge = tta.merge_preds
    tta.merge_preds = lambda lists: seen.append([d.seg_logits.data.clone() for d in lists[0]]) or merge(lists)
    voc = ROOT / "data/voc-tiny"
    ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()[:2]
    pipe = Compose(mm.tta_pipeline)
    short = mm.tta_pipeline[1]["transforms"][0][1]["scale"][1]  # the test scale's short side (scale 1.0)
    for n, i in enumerate(ids):
        sample = pipe(dict(img_path=str(voc / f"JPEGImages/{i}.jpg"), reduce_zero_label=False, seg_fields=[],
                           seg_map_path=str(voc / f"SegmentationClass/{i}.png")))
        assert len(sample["inputs"]) == 2 * len(scales)  # every scale with and without flip
        with torch.no_grad():  # one image per batch, as the test loader
            pred = tta.test_step(pseudo_collate([sample]))[0].pred_sem_seg.data[0]
            img = mmcv.imread(str(voc / f"JPEGImages/{i}.jpg"))  # BGR, as LoadImageFromFile
            logits = []
            for r in scales:
                view = mmcv.imrescale(img, (round(4 * short * r), round(short * r)), interpolation="bilinear")
                for flip in (False, True):
                    v = np.ascontiguousarray(view[:, ::-1] if flip else view)
                    ds = SegDataSample(metainfo=dict(ori_shape=v.shape[:2], img_shape=v.shape[:2]))
                    out = model.test_step(dict(inputs=[torch.from_numpy(v).permute(2, 0, 1)], data_samples=[ds]))
                    lg = out[0].seg_logits.data[None]
                    lg = lg.flip(-1) if flip else lg
                    logits.append(F.interpolate(lg, size=img.shape[:2], mode="bilinear", align_corners=False)[0])
        merged = sorted(seen[n], key=lambda t: t.sum().item())
        for ours, theirs in zip(sorted(logits, key=lambda t: t.sum().item()), merged):
            assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())
        avg = torch.stack([lg.softmax(0) for lg in logits]).mean(0)
        top2 = avg.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > 1e-6
        assert pred.shape == img.shape[:2] and clear.float().mean() > 0.5
        assert torch.equal(pred[clear], avg.argmax(0)[clear])
        # elsewhere (a random Mask2Former's saturated scores tie exactly) TTA picks one of the tied best
        near_best = avg >= top2[0] - 1e-6
        assert near_best.gather(0, pred[None].long()).all()
        # the check can fail: the single-scale unflipped view alone labels pixels otherwise
        assert (logits[2].argmax(0) != pred).any() and len(pred.unique()) > 1
