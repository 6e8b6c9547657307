"""What each stage writes in its artifact directory, named once.

A stage's writer and every reader of its artifact go through one of these
layouts, so no module spells another stage's file names. A layout wraps the
directory and names its files and folders; it opens nothing (the typed
readers of the contents are LabelTable, CamStore, load_mask_generator, ...).
Per-image files are named by the image id (``<id>.png``, ``<id>.json``)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


class File:
    """A fixed name inside an artifact: ``Layout(dir).x`` is its path, ``Layout.x.name`` the name."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, layout, owner=None):
        return self if layout is None else layout.path / self.name


class Layout:
    __slots__ = ("path",)
    # a training stage's TensorBoard event files: inside its artifact, not part of its result
    # (pipeline/store.py leaves the folder out of the manifest)
    tensorboard = File("tensorboard")

    def __init__(self, path: PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class DataArtifact(Layout):
    """prepare_data: the label tables, the data report, COCO's rendered masks."""
    report = File("data_report.json")

    def labels(self, split: str) -> Path:
        return self.path / f"labels_{split}.json"

    def coco_masks(self, split: str) -> Path:
        return self.path / "masks" / split


class ModelArtifact(Layout):
    """train_cam, match, refine (the mask generator S) and learn_prompts (the prompts):
    the kept weights, the resumable training state, the gallery."""
    weights = File("model.pt")
    prompts = File("prompts.pt")
    checkpoint = File("checkpoint.pt")
    best_state = File("best_model_state.pt")  # select: gt_miou: the chosen epoch's weights (state_dict)
    gallery = File("gallery.png")


class CamArtifact(Layout):
    """export_cams: one zarr v3 group per split (pipeline/cams/store.py)."""
    gallery = File("cam_gallery.png")

    def store(self, split: str) -> Path:
        return self.path / f"cams_{split}.zarr"


class SamArtifact(Layout):
    """sam_masks: one JSON file of SAM masks per image (pipeline/sam/files.py)."""
    gallery = File("sam_gallery.png")
    levels = File("sam_levels.json")  # per image: its file's size and mtime, its masks per level (finalize)

    def masks(self, split: str) -> Path:
        return self.path / f"masks_{split}"

    def image(self, split: str, image_id: str) -> Path:
        return self.masks(split) / f"{image_id}.json"


class MaskArtifact(Layout):
    """pseudo_masks: one label PNG per image and route; the trained route in masks/,
    every other route beside it in masks_<route>/."""
    trained = File("masks")
    coco_json = File("pseudo_masks_coco.json")
    gallery = File("pseudo_mask_gallery.png")

    def route(self, method: str, trained: str) -> Path:
        """The folder of route ``method`` in a run whose final model trains on route ``trained``."""
        return self.trained if method == trained else self.path / f"masks_{method}"


class SegmentationArtifact(Layout):
    """train_segmentation: the mmseg config and lists, the final model, its val numbers and figures."""
    config = File("mmseg_config.py")
    work_dir = File("work_dir")
    model = File("model_final.pth")
    val_metrics = File("val_metrics.json")
    converted_pretrained = File("pretrained_converted.pth")
    gallery = File("gallery.png")
    torchrun_log = File("torchrun.log")

    def list(self, which: str) -> Path:
        return self.path / "lists" / f"{which}.txt"

    def predictions(self, split: str) -> Path:
        return self.path / "predictions" / split

    def predictions_coco(self, split: str) -> Path:
        return self.path / f"predictions_{split}_coco.json"


class EnsembleArtifact(Layout):
    """ensemble: each further final model as a SegmentationArtifact in members/<route>/, the blend's
    predictions on the val split, its val numbers (and each model's alone) and gallery."""
    val_metrics = File("val_metrics.json")
    gallery = File("gallery.png")

    def member(self, route: str) -> "SegmentationArtifact":
        return SegmentationArtifact(self.path / "members" / route)

    def predictions(self, split: str) -> Path:
        return self.path / "predictions" / split


class EvalArtifact(Layout):
    """evaluate: report.json (pipeline/evaluation/report.py EvalReport), report.md and the figures."""
    report = File("report.json")
    markdown = File("report.md")
    per_class_chart = File("per_class_iou.png")
    gallery = File("gallery.png")


class ImportedCamArtifact(CamArtifact):
    """import_cams: the same store as export_cams (CamStore), and where the CAMs came from."""
    source = File("cam_source.json")  # {"dir", "format", "label": "imported: <folder>, <format>"}


class ImportedMaskArtifact(MaskArtifact):
    """import_masks: the trained-on masks in masks/ (as pseudo_masks' trained route), and their folder."""
    source = File("mask_source.json")  # {"dir", "label": "imported: <folder>"}
    gallery = File("mask_gallery.png")


# Which artifact holds the CAMs and which the trained-on masks of a run: the pipeline's own
# (export_cams, pseudo_masks) or imported ones (export_cams.source 'import', import_masks.dir set).
# The inputs functions take the full config; inside a stage the inputs dict says which it got.
def cam_stage(cfg) -> str:
    return "import_cams" if cfg.export_cams.source == "import" else "export_cams"


def mask_stage(cfg) -> str:
    return "import_masks" if cfg.import_masks.dir is not None else "pseudo_masks"


def cam_artifact(inputs) -> Union[CamArtifact, None]:
    """The CAM artifact among a stage's inputs (None: the stage got none)."""
    d = inputs.get("import_cams") or inputs.get("export_cams")
    return CamArtifact(d) if d else None


def trained_masks(inputs) -> Path:
    """The folder of the trained-on pseudo masks among a stage's inputs."""
    return MaskArtifact(inputs.get("import_masks") or inputs["pseudo_masks"]).trained


class SpreadArtifact(Layout):
    """spread (several seeds of one config, stages/seeds.py): spread.json
    (pipeline/evaluation/spread.py SpreadReport), spread.md and the error-bar chart."""
    report = File("spread.json")
    markdown = File("spread.md")
    chart = File("spread.png")
