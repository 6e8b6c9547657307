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
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.segmentation.mmcv_compat import ensure_mmcv
from pipeline.store import unique_tmp

ensure_mmcv()

import numpy as np  # noqa: E402
from mmengine.dist import is_main_process  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmseg.datasets import BaseSegDataset  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.registry import DATASETS, HOOKS, METRICS  # noqa: E402

VAL_HISTORY = "val_history.json"


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
        tmp = unique_tmp(path)
        tmp.write_text(json.dumps(history, indent=1))
        os.replace(tmp, path)
