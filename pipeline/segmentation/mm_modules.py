"""The few mmseg/mmengine components this project registers (once, on import).

Referenced from the generated config through ``custom_imports``, so mmseg's
own tools (tools/train.py, tools/test.py) can run that config too.

- ``WsssListDataset``: a BaseSegDataset whose ann_file lists
  ``<image path>\\t<mask path>`` per line (absolute paths), so the train set
  can pair dataset images with pseudo-mask PNGs from another directory.
- ``PerClassIoUMetric``: mmseg's IoUMetric, also returning per-class IoU
  (``IoU.<class>``), which IoUMetric only prints as a table.
- ``ValMetricsHook``: appends every validation result to
  ``<work_dir>/val_history.json`` (rank 0), so the stage reads the final
  metrics of the training process, including under torchrun.
- ``TensorboardResume``: a resumed training's TensorBoard curves (mmengine's
  TensorboardVisBackend) continue without a step twice.
- ``IgnoreAwareMask2FormerHead``: mmseg's Mask2FormerHead where pixels labelled
  ``ignore_index`` (255: uncertain pseudo-mask pixels, padding) take part in no
  loss term and no matching cost (mmseg drops 255 only from the class list and
  counts those pixels as negatives in every class mask).
- ``DeepLabV2Head``: DeepLab-v2's classifier, four parallel dilated 3x3 convs
  (rates 6/12/18/24) straight to class scores, summed; no image pooling.
- ``CrfIoUMetric``: PerClassIoUMetric after a dense CRF on each prediction
  (pipeline.pseudo_masks.threshold.crf_index), for the optional CRF post-processing.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.evaluation.metrics import class_precision_recall
from pipeline.fileio import atomic_write
from pipeline.segmentation.mmcv_compat import ensure_mmcv

ensure_mmcv()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.dist import is_main_process  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402
from mmseg.datasets import BaseSegDataset  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.decode_heads.mask2former_head import Mask2FormerHead  # noqa: E402
from mmseg.registry import DATASETS, HOOKS, METRICS, MODELS  # noqa: E402
from torch import nn  # noqa: E402

VAL_HISTORY = "val_history.json"
ALL_IGNORED = "wsss_all_ignored"  # img_meta flag: the crop's ground truth is ignore_index everywhere


@DATASETS.register_module(force=True)
class WsssListDataset(BaseSegDataset):
    def __init__(self, ann_file: str, **kwargs):
        kwargs.setdefault("reduce_zero_label", False)  # label 0 is background, a real class
        super().__init__(ann_file=ann_file, **kwargs)

    def load_data_list(self) -> list[dict]:
        path = Path(self.ann_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: dataset list file not found")
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected '<image>\\t<mask>', got {line!r}")
            out.append(dict(img_path=parts[0], seg_map_path=parts[1], label_map=self.label_map,
                            reduce_zero_label=self.reduce_zero_label, seg_fields=[]))
        if not out:
            raise ValueError(f"{path}: dataset list is empty")
        return out


@METRICS.register_module(force=True)
class PerClassIoUMetric(IoUMetric):
    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)  # mIoU, aAcc, mAcc (+ printed table)
        inter, union, pred, label = (sum(r) for r in zip(*results))
        iou = self.total_area_to_metrics(inter, union, pred, label, ["mIoU"])["IoU"]
        for name, v in zip(self.dataset_meta["classes"], np.asarray(iou, dtype=np.float64)):
            metrics[f"IoU.{name}"] = round(float(v) * 100, 2)  # NaN: class absent from GT and prediction
        # precision / recall per class from the same areas (intersect = tp, pred / label = column / row sums)
        pr = class_precision_recall(*(np.asarray(a, dtype=np.float64) for a in (inter, pred, label)),
                                    list(self.dataset_meta["classes"]))
        for kind, key in (("per_class_precision", "Precision"), ("per_class_recall", "Recall")):
            metrics |= {f"{key}.{n}": float("nan") if v is None else round(v, 2) for n, v in pr[kind].items()}
        return metrics


@HOOKS.register_module(force=True)
class ValMetricsHook(Hook):
    priority = "LOW"

    def after_val_epoch(self, runner, metrics=None) -> None:
        # every rank records it, so all ranks agree whether a final val is still due
        runner.message_hub.update_info("wsss_last_val_iter", runner.iter)
        if not is_main_process() or metrics is None:
            return
        path = Path(runner.work_dir) / VAL_HISTORY
        history = json.loads(path.read_text()) if path.exists() else []
        history.append({"iter": runner.iter, **{k: float(v) for k, v in metrics.items()}})
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(history, indent=1))


@HOOKS.register_module(force=True)
class TensorboardResume(Hook):
    """mmengine logs at the iteration count, and a killed run logged past its last checkpoint, the
    iterations the resumed run does again. Before training, this writes into the backend's event
    file what SummaryWriter(purge_step=...) writes: a session start at the first iteration to come,
    from which on TensorBoard drops the earlier writers' steps."""

    def before_train(self, runner) -> None:
        backend = runner.visualizer.get_backend("TensorboardVisBackend")
        if backend is None or not is_main_process():
            return
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        backend.experiment.file_writer.add_event(
            Event(step=runner.iter + 1, session_log=SessionLog(status=SessionLog.START)))


@METRICS.register_module(force=True)
class CrfIoUMetric(PerClassIoUMetric):
    """IoU of predictions refined by the dense CRF of pipeline.pseudo_masks.threshold
    (label unary over the classes the prediction holds, then Gaussian +
    bilateral terms on the original image)."""

    def __init__(self, crf: dict, **kwargs):
        super().__init__(**kwargs)
        from pipeline.config import CrfCfg
        self.crf = CrfCfg(**crf)

    def process(self, data_batch: dict, data_samples) -> None:
        from pipeline.data.datasets import read_image
        from pipeline.pseudo_masks.threshold import crf_index
        for s in data_samples:
            pred = s["pred_sem_seg"]["data"]
            labels = pred.squeeze(0).cpu().numpy()
            present, index = np.unique(labels, return_inverse=True)
            index = index.reshape(labels.shape).astype(np.uint8)
            refined = present[crf_index(read_image(s["img_path"]), index, len(present), self.crf)]
            s["pred_sem_seg"]["data"] = torch.from_numpy(refined.astype(np.int64)).to(pred.device)[None]
        super().process(data_batch, data_samples)


@MODELS.register_module(force=True)
class DeepLabV2Head(BaseDecodeHead):
    """DeepLab-v2 (Chen et al. 2017, the ASPP-L classifier of the official caffe
    prototxt and of the PyTorch ports WSSS code bases use): one 3x3 conv per
    dilation rate from the backbone's last feature map straight to class
    scores; the branch outputs are summed. ``classifiers.i`` is the official
    ``layer5.conv2d_list.i``."""

    def __init__(self, dilations=(6, 12, 18, 24), **kwargs):
        kwargs.setdefault("init_cfg", dict(type="Normal", std=0.01, bias=0, layer="Conv2d"))
        super().__init__(**kwargs)
        del self.conv_seg  # v2 has no 1x1 classifier on top; unused parameters would break DDP
        self.classifiers = nn.ModuleList(
            nn.Conv2d(self.in_channels, self.out_channels, 3, padding=d, dilation=d) for d in dilations)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        return sum(conv(x) for conv in self.classifiers)


def _ignore_aware_points(mask_preds, ignored, num_points: int, oversample_ratio: float,
                         importance_ratio: float):
    """mmdet's get_uncertain_point_coords_with_randomness, except that points
    touching an ignored pixel are never picked as "uncertain" (unsupervised
    regions stay uncertain and would soak up the importance samples)."""
    from mmcv.ops import point_sample
    n = mask_preds.shape[0]
    k = int(num_points * oversample_ratio)
    coords = torch.rand(n, k, 2, device=mask_preds.device)
    uncertainty = -point_sample(mask_preds, coords).abs()[:, 0]
    touches_ignored = point_sample(ignored, coords)[:, 0] > 0
    uncertainty = uncertainty.masked_fill(touches_ignored, float("-inf"))
    n_imp = int(importance_ratio * num_points)
    idx = torch.topk(uncertainty, k=n_imp, dim=1)[1]
    coords = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    rand = torch.rand(n, num_points - n_imp, 2, device=mask_preds.device)
    return torch.cat([coords, rand], dim=1)


@MODELS.register_module(force=True)
class IgnoreAwareMask2FormerHead(Mask2FormerHead):
    """Each gt class mask carries ``ignore_index`` at ignored pixels (1 = class,
    0 = not, 255 = unknown). A sampled point counts only if no pixel that
    bilinear sampling reads from it is ignored: for the Hungarian matching
    costs, the mask BCE and the dice loss alike. An image whose ground truth is
    all ignore has no classification loss (mmdet would teach every query "no
    object" there). Without ignored pixels this is mmdet's loss exactly (same
    points, same normalisation). What remains: an object partly inside an
    ignored region is still one gt mask, and a query matched to nothing in an
    image with some labelled pixels still learns "no object"."""

    def _seg_data_to_instance_data(self, batch_data_samples):
        gts, metas = super()._seg_data_to_instance_data(batch_data_samples)
        for gt, sample, meta in zip(gts, batch_data_samples, metas):
            ignored = sample.gt_sem_seg.data == self.ignore_index  # (1, H, W)
            # a crop with no labelled pixel: nothing says its queries hold "no object"
            meta[ALL_IGNORED] = bool(ignored.all())
            if len(gt):
                gt.masks = gt.masks.masked_fill(ignored, self.ignore_index)
        return gts, metas

    def _get_targets_single(self, cls_score, mask_pred, gt_instances, img_meta):
        from mmcv.ops import point_sample
        gt_labels, gt_masks = gt_instances.labels, gt_instances.masks
        num_queries, num_gts = cls_score.shape[0], gt_labels.shape[0]
        point_coords = torch.rand((1, self.num_points, 2), device=cls_score.device)
        if num_gts:
            ignored = (gt_masks[:1] == self.ignore_index).float()[None]  # (1, 1, H, W)
            keep = point_sample(ignored, point_coords)[0, 0] == 0
            if keep.any():
                point_coords = point_coords[:, keep]
            else:  # every random point touches an ignored pixel: use labelled pixel centres
                ys, xs = torch.nonzero(ignored[0, 0] == 0, as_tuple=True)
                pick = torch.randperm(len(ys), device=ys.device)[:self.num_points]
                size = ignored.new_tensor([ignored.shape[-1], ignored.shape[-2]])
                point_coords = ((torch.stack([xs[pick], ys[pick]], 1).float() + 0.5) / size)[None]
        n_pts = point_coords.shape[1]
        mask_points_pred = point_sample(mask_pred.unsqueeze(1),
                                        point_coords.repeat(num_queries, 1, 1)).squeeze(1)
        gt_points_masks = point_sample((gt_masks == 1).float().unsqueeze(1),
                                       point_coords.repeat(num_gts, 1, 1)).squeeze(1).reshape(num_gts, n_pts)
        assign_result = self.assigner.assign(
            pred_instances=InstanceData(scores=cls_score, masks=mask_points_pred),
            gt_instances=InstanceData(labels=gt_labels, masks=gt_points_masks), img_meta=img_meta)
        sampling_result = self.sampler.sample(
            assign_result=assign_result, pred_instances=InstanceData(scores=cls_score, masks=mask_pred),
            gt_instances=gt_instances)
        pos_inds, neg_inds = sampling_result.pos_inds, sampling_result.neg_inds
        labels = gt_labels.new_full((self.num_queries,), self.num_classes, dtype=torch.long)
        labels[pos_inds] = gt_labels[sampling_result.pos_assigned_gt_inds]
        # no classification loss for an image whose ground truth is all ignore (mmdet: ones)
        label_weights = gt_labels.new_full((self.num_queries,), 0 if img_meta.get(ALL_IGNORED) else 1)
        mask_targets = gt_masks[sampling_result.pos_assigned_gt_inds]
        mask_weights = mask_pred.new_zeros((self.num_queries,))
        mask_weights[pos_inds] = 1.0
        return labels, label_weights, mask_targets, mask_weights, pos_inds, neg_inds, sampling_result

    def _loss_by_feat_single(self, cls_scores, mask_preds, batch_gt_instances, batch_img_metas):
        from mmcv.ops import point_sample
        from mmdet.models.losses.dice_loss import dice_loss
        from mmdet.utils import reduce_mean
        num_imgs = cls_scores.size(0)
        (labels_list, label_weights_list, mask_targets_list, mask_weights_list, avg_factor) = self.get_targets(
            [cls_scores[i] for i in range(num_imgs)], [mask_preds[i] for i in range(num_imgs)],
            batch_gt_instances, batch_img_metas)
        labels = torch.stack(labels_list, dim=0).flatten(0, 1)
        label_weights = torch.stack(label_weights_list, dim=0).flatten(0, 1)
        mask_targets = torch.cat(mask_targets_list, dim=0)
        mask_weights = torch.stack(mask_weights_list, dim=0)
        cls_scores = cls_scores.flatten(0, 1)
        class_weight = cls_scores.new_tensor(self.class_weight)
        # mmdet normalises by class_weight[labels].sum(); zero-weighted (all-ignore) images drop out of it
        loss_cls = self.loss_cls(cls_scores, labels, label_weights,
                                 avg_factor=(class_weight[labels] * label_weights).sum())
        num_total_masks = max(reduce_mean(cls_scores.new_tensor([avg_factor])), 1)
        mask_preds = mask_preds[mask_weights > 0]
        if mask_targets.shape[0] == 0:  # zero match
            return loss_cls, mask_preds.sum(), mask_preds.sum()

        ignored = (mask_targets == self.ignore_index).float().unsqueeze(1)
        with torch.no_grad():
            points_coords = _ignore_aware_points(mask_preds.unsqueeze(1), ignored, self.num_points,
                                                 self.oversample_ratio, self.importance_sample_ratio)
            mask_point_targets = point_sample((mask_targets == 1).float().unsqueeze(1), points_coords).squeeze(1)
            # 1 where every pixel the point interpolates from is labelled, else 0
            point_valid = (point_sample(ignored, points_coords).squeeze(1) == 0).float()
        mask_point_preds = point_sample(mask_preds.unsqueeze(1), points_coords).squeeze(1)
        # valid points per mask, as mmdet's num_points when nothing is ignored
        points_per_mask = point_valid.sum() / point_valid.shape[0]

        dice = self.loss_dice
        if not (dice.use_sigmoid and dice.activate):
            raise ValueError("IgnoreAwareMask2FormerHead: loss_dice must use a sigmoid activation")
        # ignored points drop out of every dice sum: prediction and target are zeroed there
        loss_dice = dice.loss_weight * dice_loss(
            mask_point_preds.sigmoid() * point_valid, mask_point_targets * point_valid, eps=dice.eps,
            reduction="mean", naive_dice=dice.naive_dice, avg_factor=num_total_masks)
        loss_mask = self.loss_mask(mask_point_preds.reshape(-1), mask_point_targets.reshape(-1),
                                   weight=point_valid.reshape(-1),
                                   avg_factor=num_total_masks * points_per_mask.clamp(min=1))
        return loss_cls, loss_mask, loss_dice
