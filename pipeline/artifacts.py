"""What each stage writes in its artifact directory, named once.

A stage's writer and every reader of its artifact go through one of these
classes, so no module spells another stage's file names. A layout wraps the
directory and names its files and folders; it opens nothing (the typed
readers of the contents are LabelTable, CamStore, load_mask_generator, ...).
Per-image files are named by the image id (``<id>.png``, ``<id>.json``)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


class Layout:
    __slots__ = ("path",)

    def __init__(self, path: PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class DataArtifact(Layout):
    """prepare_data: the label tables, the data report, COCO's rendered masks."""
    REPORT = "data_report.json"

    def labels(self, split: str) -> Path:
        return self.path / f"labels_{split}.json"

    def coco_masks(self, split: str) -> Path:
        return self.path / "masks" / split

    @property
    def report(self) -> Path:
        return self.path / self.REPORT


class ModelArtifact(Layout):
    """train_cam, match, refine (the mask generator S) and learn_prompts (the prompts):
    the kept weights, the resumable training state, the gallery."""
    WEIGHTS = "model.pt"
    PROMPTS = "prompts.pt"
    CHECKPOINT = "checkpoint.pt"
    BEST_STATE = "best_model_state.pt"  # select: gt_miou: the chosen epoch's weights (state_dict)

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def prompts(self) -> Path:
        return self.path / self.PROMPTS

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def best_state(self) -> Path:
        return self.path / self.BEST_STATE

    @property
    def gallery(self) -> Path:
        return self.path / "gallery.png"


class CamArtifact(Layout):
    """export_cams: one zarr v3 group per split (pipeline/cams/store.py)."""

    def store(self, split: str) -> Path:
        return self.path / f"cams_{split}.zarr"

    @property
    def gallery(self) -> Path:
        return self.path / "cam_gallery.png"


class SamArtifact(Layout):
    """sam_masks: one JSON file of SAM masks per image (pipeline/sam/files.py)."""

    def masks(self, split: str) -> Path:
        return self.path / f"masks_{split}"

    def image(self, split: str, image_id: str) -> Path:
        return self.masks(split) / f"{image_id}.json"

    @property
    def gallery(self) -> Path:
        return self.path / "sam_gallery.png"


class MaskArtifact(Layout):
    """pseudo_masks: one label PNG per image and route; the trained route in masks/,
    every other route beside it in masks_<route>/."""
    COCO_JSON = "pseudo_masks_coco.json"

    @property
    def trained(self) -> Path:
        return self.path / "masks"

    def route(self, method: str, trained: str) -> Path:
        """The folder of route ``method`` in a run whose final model trains on route ``trained``."""
        return self.trained if method == trained else self.path / f"masks_{method}"

    @property
    def coco_json(self) -> Path:
        return self.path / self.COCO_JSON

    @property
    def gallery(self) -> Path:
        return self.path / "pseudo_mask_gallery.png"


class SegmentationArtifact(Layout):
    """train_segmentation: the mmseg config and lists, the final model, its val numbers and figures."""
    VAL_METRICS = "val_metrics.json"

    @property
    def config(self) -> Path:
        return self.path / "mmseg_config.py"

    def list(self, which: str) -> Path:
        return self.path / "lists" / f"{which}.txt"

    @property
    def work_dir(self) -> Path:
        return self.path / "work_dir"

    @property
    def model(self) -> Path:
        return self.path / "model_final.pth"

    @property
    def val_metrics(self) -> Path:
        return self.path / self.VAL_METRICS

    @property
    def converted_pretrained(self) -> Path:
        return self.path / "pretrained_converted.pth"

    @property
    def gallery(self) -> Path:
        return self.path / "gallery.png"

    def predictions(self, split: str) -> Path:
        return self.path / "predictions" / split

    def predictions_coco(self, split: str) -> Path:
        return self.path / f"predictions_{split}_coco.json"

    @property
    def torchrun_log(self) -> Path:
        return self.path / "torchrun.log"


class EvalArtifact(Layout):
    """evaluate: report.json (pipeline/evaluation/report.py EvalReport), report.md and the figures."""
    REPORT = "report.json"

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def markdown(self) -> Path:
        return self.path / "report.md"

    @property
    def per_class_chart(self) -> Path:
        return self.path / "per_class_iou.png"

    @property
    def gallery(self) -> Path:
        return self.path / "gallery.png"
