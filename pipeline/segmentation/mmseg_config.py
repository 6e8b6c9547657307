"""mmseg config generated from ``TrainSegmentationCfg``.

The result is a plain mmengine ``Config``; the stage dumps it as a ``.py``
file into its artifact, so ``python tools/train.py <artifact>/mmseg_config.py``
of mmsegmentation runs the same training (with this project installed, for
the ``custom_imports``).

Models
- ``deeplabv3plus``: mmseg's DeepLabV3+ (ResNetV1c-D8 + DepthwiseSeparableASPPHead
  + FCN auxiliary head), as in configs/deeplabv3plus.
- ``deeplabv2``: DeepLab-v2 as WSSS papers train it: plain ResNet (7x7 stem)
  at output stride 8 (dilation 2/4 in every block of stages 3/4), the
  ``DeepLabV2Head`` (four dilated 3x3 classifiers, rates 6/12/18/24, summed; no
  image pooling), frozen BatchNorm, classifier weights lr x10, biases lr x20
  and no weight decay (deeplab-pytorch main.py), SGD + poly to 0,
  discrete random scales 0.5-1.5, test at the original size.
- ``mask2former``: ``IgnoreAwareMask2FormerHead`` (mmseg's Mask2FormerHead on
  mmdet 3.3.0, MSDeformAttn pixel decoder; 255 pixels in no loss term) on Swin
  (T/S/B/L) or ResNet, as in configs/mask2former, with mmseg's Swin paramwise
  rules (every Swin norm, position table and query embedding: no decay).

``tiny=True`` ignores ``backbone`` and builds small random-initialised
variants (a 16-channel ResNet-18 for DeepLab, a 16-dim 1-block-per-stage Swin
for Mask2Former) that train in seconds on CPU.

Checkpoint selection: by default the final model is the last iteration's
(no ground truth involved). ``checkpoint_selection: best_val_miou`` adds
mmengine's ``save_best='mIoU'`` (what FMA-WSSS reports): selected on val GT.

``tta_model``/``tta_pipeline`` are always in the config (mmseg's tools/test.py
--tta uses them); the stage runs them only with ``tta: true``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from mmengine.config import Config

from pipeline.config import TrainSegmentationCfg
from pipeline.data.classes import ClassSet, builtin_classes
from pipeline.distributed import backend as dist_backend_of

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
# caffe-converted DeepLab-v2 weights: BGR channel means, no std (DeepLab's prototxt / isht7's port)
CAFFE_MEAN_BGR = [104.008, 116.669, 122.675]
DEEPLABV2_RATES = (6, 12, 18, 24)  # the four classifier dilations of DeepLab-v2 (ASPP-L)
DEEPLABV2_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5]  # random train scales of the deeplab-pytorch VOC config

# name: (embed_dims, depths, num_heads, window_size, pretrain_img_size)
SWIN = {
    "swin_t": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
    "swin_s": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
    "swin_b": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
    "swin_l": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
}
TINY_SWIN = (16, [1, 1, 1, 1], [1, 2, 4, 8], 4, 224)


def _resnet_depth(sec: TrainSegmentationCfg) -> int:
    if not sec.backbone.startswith("resnet"):
        raise ValueError(f"train_segmentation.backbone: {sec.model} needs a ResNet backbone "
                         f"(resnet18/50/101), got '{sec.backbone}'")
    depth = sec.depth or int(sec.backbone[len("resnet"):])
    if depth not in (18, 34, 50, 101, 152):
        raise ValueError(f"train_segmentation.depth: unsupported ResNet depth {depth}")
    return depth


def _init_cfg(sec: TrainSegmentationCfg) -> Optional[dict]:
    # None: random init (offline tests). A path or hub name (open-mmlab://..., https://...) is
    # loaded by mmengine's CheckpointLoader when the model initialises its weights.
    return dict(type="Pretrained", checkpoint=sec.pretrained) if sec.pretrained else None


def _frozen_bn(sec: TrainSegmentationCfg) -> bool:
    return sec.model == "deeplabv2" if sec.frozen_bn is None else sec.frozen_bn


def _deeplabv2(sec: TrainSegmentationCfg, n_cls: int, norm: dict, converted: Optional[tuple[Path, bool]]
               ) -> tuple[dict, dict]:
    depth, base, widths = (18, 16, [16, 32, 64, 128]) if sec.tiny else (_resnet_depth(sec), 64, None)
    widths = widths or ([64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048])
    # contract_dilation=False: the first block of a dilated stage is dilated too, as in DeepLab-v2
    backbone = dict(type="ResNet", depth=depth, stem_channels=base, base_channels=base, num_stages=4,
                    out_indices=(3,), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=norm,
                    norm_eval=_frozen_bn(sec), style="caffe" if sec.pretrained_format == "caffe" else "pytorch",
                    deep_stem=False, contract_dilation=False, init_cfg=None if sec.tiny else _init_cfg(sec))
    head_init = {}
    if converted:  # weights converted to model keys (pipeline.segmentation.pretrained)
        path, has_head = converted
        backbone["init_cfg"] = dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
        if has_head:
            head_init = dict(init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="decode_head."))
    head = dict(type="DeepLabV2Head", **head_init, dilations=DEEPLABV2_RATES, in_channels=widths[3], in_index=0,
                channels=widths[3], dropout_ratio=0.0, num_classes=n_cls, align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
                                 avg_non_ignore=True))  # mean over labelled pixels, ignore_index 255
    return dict(backbone=backbone, decode_head=head), {}


def _deeplab(sec: TrainSegmentationCfg, n_cls: int, norm: dict) -> tuple[dict, dict]:
    if sec.tiny:
        depth, base, widths = 18, 16, [16, 32, 64, 128]
    else:
        depth = _resnet_depth(sec)
        base = 64
        widths = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
    backbone = dict(type="ResNetV1c", depth=depth, stem_channels=base, base_channels=base, num_stages=4,
                    out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                    norm_cfg=norm, norm_eval=_frozen_bn(sec), style="pytorch", contract_dilation=True,
                    init_cfg=None if sec.tiny else _init_cfg(sec))
    ch = 32 if sec.tiny else 512
    common = dict(in_channels=widths[3], in_index=3, channels=ch, dropout_ratio=0.1, num_classes=n_cls,
                  norm_cfg=norm, align_corners=False,
                  loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
                                   avg_non_ignore=True))  # mean over labelled pixels: pseudo masks hold many 255s
    head = dict(type="DepthwiseSeparableASPPHead", dilations=(1, 12, 24, 36), c1_in_channels=widths[0],
                c1_channels=8 if sec.tiny else 48, **common)
    model = dict(backbone=backbone, decode_head=head)
    if not sec.tiny:
        model["auxiliary_head"] = dict(
            type="FCNHead", in_channels=widths[2], in_index=2, channels=256, num_convs=1, concat_input=False,
            dropout_ratio=0.1, num_classes=n_cls, norm_cfg=norm, align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4, avg_non_ignore=True))
    return model, {}


def _mask2former(sec: TrainSegmentationCfg, n_cls: int, norm: dict) -> tuple[dict, dict]:
    tiny = sec.tiny
    custom_keys = {"backbone": dict(lr_mult=0.1, decay_mult=1.0),
                   "query_embed": dict(lr_mult=1.0, decay_mult=0.0),
                   "query_feat": dict(lr_mult=1.0, decay_mult=0.0),
                   "level_embed": dict(lr_mult=1.0, decay_mult=0.0)}
    if tiny or sec.backbone.startswith("swin"):
        dims, depths, heads, window, pre_size = TINY_SWIN if tiny else SWIN[sec.backbone]
        backbone = dict(type="SwinTransformer", pretrain_img_size=pre_size, embed_dims=dims, depths=depths,
                        num_heads=heads, window_size=window, mlp_ratio=4, qkv_bias=True, qk_scale=None,
                        drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0 if tiny else 0.3,
                        patch_norm=True, out_indices=(0, 1, 2, 3), with_cp=False, frozen_stages=-1,
                        init_cfg=None if tiny else _init_cfg(sec))
        in_channels = [dims, dims * 2, dims * 4, dims * 8]
        # Swin norms and position tables: no decay, as mmseg's mask2former_swin-* configs. The
        # per-block and downsample norms need their own keys: mmengine applies the longest matching
        # custom key, and norm_decay_mult only where no key matches, so "backbone" would win.
        no_decay = dict(lr_mult=0.1, decay_mult=0.0)
        custom_keys.update({"backbone.patch_embed.norm": no_decay, "backbone.norm": no_decay,
                            "absolute_pos_embed": no_decay, "relative_position_bias_table": no_decay})
        custom_keys.update({f"backbone.stages.{i}.blocks.{j}.norm": no_decay
                            for i, n in enumerate(depths) for j in range(n)})
        custom_keys.update({f"backbone.stages.{i}.downsample.norm": no_decay for i in range(len(depths) - 1)})
    else:
        depth = _resnet_depth(sec)
        backbone = dict(type="ResNet", depth=depth, deep_stem=False, num_stages=4, out_indices=(0, 1, 2, 3),
                        frozen_stages=-1, norm_cfg=norm, style="pytorch", init_cfg=_init_cfg(sec))
        in_channels = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
    feat = 32 if tiny else 256
    attn_heads = 4 if tiny else 8
    ffn_enc, ffn_dec = (64, 64) if tiny else (1024, 2048)
    mha = dict(embed_dims=feat, num_heads=attn_heads, attn_drop=0.0, proj_drop=0.0, dropout_layer=None,
               batch_first=True)
    head = dict(
        type="IgnoreAwareMask2FormerHead", in_channels=in_channels, strides=[4, 8, 16, 32], feat_channels=feat,
        out_channels=feat, num_classes=n_cls, num_queries=8 if tiny else 100, num_transformer_feat_level=3,
        align_corners=False,
        pixel_decoder=dict(
            type="mmdet.MSDeformAttnPixelDecoder", num_outs=3,
            norm_cfg=dict(type="GN", num_groups=8 if tiny else 32), act_cfg=dict(type="ReLU"),
            encoder=dict(num_layers=1 if tiny else 6, layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=feat, num_heads=attn_heads, num_levels=3, num_points=4,
                                   im2col_step=64, dropout=0.0, batch_first=True, norm_cfg=None, init_cfg=None),
                ffn_cfg=dict(embed_dims=feat, feedforward_channels=ffn_enc, num_fcs=2, ffn_drop=0.0,
                             act_cfg=dict(type="ReLU", inplace=True))), init_cfg=None),
            positional_encoding=dict(num_feats=feat // 2, normalize=True), init_cfg=None),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=feat // 2, normalize=True),
        transformer_decoder=dict(return_intermediate=True, num_layers=3 if tiny else 9, layer_cfg=dict(
            self_attn_cfg=mha, cross_attn_cfg=mha,
            ffn_cfg=dict(embed_dims=feat, feedforward_channels=ffn_dec, num_fcs=2,
                         act_cfg=dict(type="ReLU", inplace=True), ffn_drop=0.0, dropout_layer=None,
                         add_identity=True)), init_cfg=None),
        loss_cls=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=False, loss_weight=2.0, reduction="mean",
                      class_weight=[1.0] * n_cls + [0.1]),
        loss_mask=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0),
        loss_dice=dict(type="mmdet.DiceLoss", use_sigmoid=True, activate=True, reduction="mean",
                       naive_dice=True, eps=1.0, loss_weight=5.0),
        train_cfg=dict(
            num_points=1024 if tiny else 12544, oversample_ratio=3.0, importance_sample_ratio=0.75,
            assigner=dict(type="mmdet.HungarianAssigner", match_costs=[
                dict(type="mmdet.ClassificationCost", weight=2.0),
                dict(type="mmdet.CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                dict(type="mmdet.DiceCost", weight=5.0, pred_act=True, eps=1.0)]),
            sampler=dict(type="mmdet.MaskPseudoSampler")))
    return dict(backbone=backbone, decode_head=head), custom_keys


def _pipelines(sec: TrainSegmentationCfg, augment: bool) -> tuple[list, list, list]:
    """train, val and TTA pipelines."""
    crop = sec.crop_size
    scale = (4 * crop, crop)  # short side ~ crop, as mmseg's VOC config (2048, 512) for crop 512
    load = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]  # reduce_zero_label: dataset
    flips = [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
             dict(type="RandomFlip", prob=1.0, direction="horizontal")]
    if sec.model == "deeplabv2":
        # DeepLab-v2 code bases: random scale of the original image, crop (padded with mean / 255),
        # flip; no colour jitter; test at the original size
        train = load + ([dict(type="RandomChoice", transforms=[[dict(type="Resize", scale_factor=r, keep_ratio=True)]
                                                               for r in DEEPLABV2_SCALES]),
                         dict(type="RandomCrop", crop_size=(crop, crop)), dict(type="RandomFlip", prob=0.5)]
                        if augment else [dict(type="RandomCrop", crop_size=(crop, crop))])
        val = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
        tta_resize = [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in sec.tta_scales]
        tta = [dict(type="LoadImageFromFile"), dict(type="TestTimeAug", transforms=[
            tta_resize, flips, [dict(type="LoadAnnotations")], [dict(type="PackSegInputs")]])]
        return train + [dict(type="PackSegInputs")], val, tta
    if augment:
        train = load + [dict(type="RandomResize", scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
                        dict(type="RandomCrop", crop_size=(crop, crop), cat_max_ratio=0.75),
                        dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion")]
    else:  # same scale as validation (tests that overfit one image)
        train = load + [dict(type="Resize", scale=scale, keep_ratio=True),
                        dict(type="RandomCrop", crop_size=(crop, crop))]
    train.append(dict(type="PackSegInputs"))
    # annotations load after Resize: metrics are computed on the original-size GT mask
    val = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=scale, keep_ratio=True),
           dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    # TTA scales are relative to the single-scale test size, so scale 1.0 + no flip = the val pipeline
    tta_resize = [dict(type="Resize", scale=(round(scale[0] * r), round(scale[1] * r)), keep_ratio=True)
                  for r in sec.tta_scales]
    tta = [dict(type="LoadImageFromFile"), dict(type="TestTimeAug", transforms=[
        tta_resize, flips, [dict(type="LoadAnnotations")], [dict(type="PackSegInputs")]])]
    return train, val, tta


def build_config(sec: TrainSegmentationCfg, *, dataset: str, train_list: Path, val_list: Optional[Path],
                 work_dir: Path, seed: int = 0, num_workers: int = 2, device: str = "cpu",
                 nproc: int = 1, dist_backend: str = "auto", augment: bool = True,
                 converted_weights: Optional[tuple[Path, bool]] = None,
                 classes: Optional[ClassSet] = None, tensorboard_dir: Optional[Path] = None) -> Config:
    """The full mmseg config. ``*_list`` are files of '<image>\\t<mask>' lines (see mm_modules).
    ``converted_weights``: (file, has classifier) from weights.convert_deeplabv2_checkpoint; it
    replaces ``sec.pretrained`` for deeplabv2. ``classes``: the dataset's classes (default: the
    built-in ones of ``dataset``); ``val_list`` None: no validation loop (no ground truth).
    ``tensorboard_dir``: where mmengine's TensorboardVisBackend writes event files (None: none)."""
    if sec.batch_size % nproc:
        raise ValueError(f"train_segmentation.batch_size {sec.batch_size} is not divisible by "
                         f"run.nproc_per_node {nproc}")
    class_set = classes or builtin_classes(dataset)
    classes = list(class_set.names)
    n_cls = len(classes)
    cuda = device == "cuda"
    # SyncBN only where it can work: several CUDA processes. mmcv-lite/CPU: plain BN. Frozen BN
    # (DeepLab-v2): eval mode (norm_eval) and no gradient.
    frozen = _frozen_bn(sec)
    norm = dict(type="SyncBN" if cuda and nproc > 1 and not frozen else "BN", requires_grad=not frozen)
    crop = (sec.crop_size, sec.crop_size)
    if sec.model == "mask2former":
        parts, custom_keys = _mask2former(sec, n_cls, norm)
        pre_test = dict(size_divisor=32)
    elif sec.model == "deeplabv2":
        parts, custom_keys = _deeplabv2(sec, n_cls, norm, converted_weights)
        pre_test = None
    else:
        parts, custom_keys = _deeplab(sec, n_cls, norm)
        pre_test = None
    caffe = sec.pretrained_format == "caffe"
    pre = dict(type="SegDataPreProcessor", mean=CAFFE_MEAN_BGR if caffe else MEAN, std=[1.0] * 3 if caffe else STD,
               bgr_to_rgb=not caffe, pad_val=0, seg_pad_val=255, size=crop)
    if pre_test:
        pre["test_cfg"] = pre_test
    model = dict(type="EncoderDecoder", data_preprocessor=pre, **parts, train_cfg=dict(),
                 test_cfg=dict(mode="whole"))

    opt_name = sec.optimizer or ("adamw" if sec.model == "mask2former" else "sgd")
    if opt_name == "sgd":
        optimizer = dict(type="SGD", lr=sec.lr, momentum=0.9, weight_decay=sec.weight_decay)
        # DeepLab-v2's poly decays to 0; mmseg's DeepLab configs stop at 1e-4
        clip, eta_min = None, 0.0 if sec.model == "deeplabv2" else min(1e-4, sec.lr * 0.01)
    else:
        optimizer = dict(type="AdamW", lr=sec.lr, weight_decay=sec.weight_decay, eps=1e-8, betas=(0.9, 0.999))
        # mmseg's Mask2Former recipe clips gradients at 0.01
        clip, eta_min = (dict(max_norm=0.01, norm_type=2) if sec.model == "mask2former" else None), 0.0
    optim_wrapper = dict(type="AmpOptimWrapper" if sec.amp and cuda else "OptimWrapper", optimizer=optimizer,
                         clip_grad=clip)
    head_lr = sec.head_lr_mult if sec.head_lr_mult is not None else (10.0 if sec.model == "deeplabv2" else 1.0)
    if head_lr != 1.0:
        custom_keys["decode_head"] = dict(lr_mult=head_lr)
    if sec.model == "deeplabv2":
        # deeplab-pytorch main.py get_params: classifier weights lr x10 with weight decay ("10x"),
        # classifier biases lr x20 without ("20x"). mmengine picks the longest matching key first.
        for i in range(len(DEEPLABV2_RATES)):
            custom_keys[f"decode_head.classifiers.{i}.bias"] = dict(lr_mult=2 * head_lr, decay_mult=0.0)
    if custom_keys:
        optim_wrapper["paramwise_cfg"] = dict(custom_keys=custom_keys, norm_decay_mult=0.0)

    train_pipe, val_pipe, tta_pipe = _pipelines(sec, augment)
    meta = dict(classes=classes, palette=class_set.palette()[:n_cls].tolist())
    workers = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    train_dl = dict(batch_size=sec.batch_size // nproc, **workers,
                    sampler=dict(type="InfiniteSampler", shuffle=True),
                    dataset=dict(type="WsssListDataset", ann_file=str(train_list), metainfo=meta,
                                 pipeline=train_pipe))
    val_dl = dict(batch_size=1, **workers, sampler=dict(type="DefaultSampler", shuffle=False),
                  dataset=dict(type="WsssListDataset", ann_file=str(val_list), metainfo=meta,
                               pipeline=val_pipe)) if val_list else None
    evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"]) if val_list else None
    # the final test may refine predictions by CRF; validation during training never does
    test_evaluator = dict(evaluator, type="CrfIoUMetric", crf=sec.crf.model_dump()) if sec.crf and evaluator \
        else evaluator
    backend = dist_backend_of(device, dist_backend)
    # scalars.json in the run's log folder; event files in tensorboard_dir (mm_modules.TensorboardResume)
    vis_backends = [dict(type="LocalVisBackend")] + \
        ([dict(type="TensorboardVisBackend", save_dir=str(tensorboard_dir))] if tensorboard_dir else [])
    imports = ["pipeline.segmentation.mm_modules"] + (["mmdet.models"] if sec.model == "mask2former" else [])
    return Config(dict(
        custom_imports=dict(imports=imports, allow_failed_imports=False),
        default_scope="mmseg",
        work_dir=str(work_dir),
        model=model,
        train_dataloader=train_dl, val_dataloader=val_dl, test_dataloader=val_dl,
        test_pipeline=val_pipe,  # read by mmseg.apis.inference_model
        tta_model=dict(type="SegTTAModel"), tta_pipeline=tta_pipe,
        val_evaluator=evaluator, test_evaluator=test_evaluator,
        optim_wrapper=optim_wrapper,
        param_scheduler=[dict(type="PolyLR", eta_min=eta_min, power=0.9, begin=0, end=sec.iters, by_epoch=False)],
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=sec.iters,
                       val_interval=min(sec.val_interval, sec.iters)),
        val_cfg=dict(type="ValLoop") if val_list else None, test_cfg=dict(type="TestLoop") if val_list else None,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=sec.log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            # max_keep_ckpts=1: resuming needs only the latest. save_best only when asked for: it
            # selects the model on val ground truth
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=sec.checkpoint_interval,
                            max_keep_ckpts=1, save_last=True,
                            **(dict(save_best="mIoU", rule="greater")
                               if sec.checkpoint_selection == "best_val_miou" else {})),
            sampler_seed=dict(type="DistSamplerSeedHook"),
            visualization=dict(type="SegVisualizationHook")),
        custom_hooks=[dict(type="ValMetricsHook")] + ([dict(type="TensorboardResume")] if tensorboard_dir else []),
        env_cfg=dict(cudnn_benchmark=cuda, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend=backend)),
        randomness=dict(seed=seed),
        vis_backends=vis_backends,
        # no fixed name: mmengine reuses a same-named visualizer of an earlier Runner in this
        # process (and writes into that run's folder); unnamed, it takes this run's name
        visualizer=dict(type="SegLocalVisualizer", vis_backends=vis_backends),
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        load_from=None,
        resume=True,  # continue from <work_dir>/last_checkpoint when there is one
    ))
