"""The rules across sections of a Config: each a named function of the Config (``cfg``; root.py
applies RULES, so the functions name no type for it) that raises RuleError naming the fields
it concerns; Config applies RULES, in order, after its sections validated.
A new rule = a function here + its entry in RULES + its test in tests/test_config_rules.py."""
from __future__ import annotations

from typing import Callable

from pipeline.config.training import phase_sections, seed_eval_split
from pipeline.registry import ROUTES


class RuleError(ValueError):
    """A broken rule; ``fields``: the dotted keys it concerns (the loader names the file that set the
    most specific of them)."""

    def __init__(self, fields: tuple[str, ...], message: str):
        super().__init__(message)
        self.fields = fields


def coco_splits_name_images_and_annotations(cfg) -> None:
    """A COCO split is read from an image folder and an instances JSON: both must be named."""
    if cfg.data.dataset == "coco":
        for name in cfg.data.all_splits:
            s = cfg.data.splits.get(name)
            if s is None or not (s.images and s.annotations):
                raise RuleError((f"data.splits.{name}.images", f"data.splits.{name}.annotations", "data.dataset"),
                                f"data.splits.{name}: COCO needs 'images' and 'annotations'")


def learn_prompts_keeps_last_epoch(cfg) -> None:
    """Phase 2 trains only the prompts (S frozen, its seeds do not change): nothing to score or select."""
    lp = cfg.learn_prompts
    if lp.select != "last" or lp.seed_eval_every:
        raise RuleError(("learn_prompts.select", "learn_prompts.seed_eval_every"),
                        "learn_prompts.select / learn_prompts.seed_eval_every: phase 2 trains the prompts "
                        "only (S is frozen, its seeds do not change); keep 'last' and 0")


def seed_eval_split_has_ground_truth(cfg) -> None:
    """A phase that scores its seeds while training scores them on a split of this config."""
    for stage, section in phase_sections(cfg, cams_only=True).items():
        split = seed_eval_split(cfg, stage)
        if section.seed_eval_every and split not in cfg.data.all_splits:
            raise RuleError((f"{stage}.seed_eval_split",),
                            f"{stage}.seed_eval_split: '{split}' is not a split with ground truth of this "
                            f"config (data splits: {', '.join(cfg.data.all_splits)})")


def export_cams_source_is_a_phase_with_cams(cfg) -> None:
    """export_cams.source names a training phase whose section makes CAMs (TrainCfg.cams_label), or 'import'."""
    sources = list(phase_sections(cfg, cams_only=True))
    if cfg.export_cams.source not in sources + ["import"]:
        raise RuleError(("export_cams.source",), f"export_cams.source: '{cfg.export_cams.source}' is neither a "
                        f"training phase that makes CAMs ({', '.join(sources)}) nor 'import'")


def folder_dataset_names_classes(cfg) -> None:
    """A folder dataset has no built-in class list: data.classes names its file."""
    if cfg.data.dataset == "folder" and not cfg.data.classes:
        raise RuleError(("data.classes", "data.dataset"), "data.classes: a folder dataset needs a class list file")


def folder_splits_name_labels(cfg) -> None:
    """Every split of a folder dataset names its image-level labels file."""
    if cfg.data.dataset == "folder":
        for name in cfg.data.all_splits:
            s = cfg.data.splits.get(name)
            if s is None or not s.labels:
                raise RuleError((f"data.splits.{name}.labels", "data.dataset"),
                                f"data.splits.{name}: a folder dataset needs 'labels' (a labels file)")


def published_datasets_have_val_split(cfg) -> None:
    """VOC and COCO are scored on their val split (only a folder dataset may have none)."""
    if cfg.data.dataset != "folder" and cfg.data.val_split is None:
        raise RuleError(("data.val_split", "data.dataset"), "data.val_split: VOC/COCO need a val split")


def sam_masks_share_export_split(cfg) -> None:
    """A route that reads SAM's masks labels them with the exported CAMs: both of one split."""
    reads_sam = any("sam_masks" in ROUTES[r].inputs for r in cfg.pseudo_masks.routes)
    if reads_sam and cfg.sam.split != cfg.export_cams.split:
        raise RuleError(("sam.split", "export_cams.split"),
                        f"sam.split '{cfg.sam.split}' must equal export_cams.split '{cfg.export_cams.split}' "
                        "(the sam route labels SAM's masks with the exported CAMs)")


def ensemble_routes_are_extra_methods(cfg) -> None:
    """Each ensemble model trains on the masks of an extra route, which pseudo_masks must write."""
    bad = [r for r in cfg.ensemble.routes if r not in cfg.pseudo_masks.extra_methods]
    if bad:
        raise RuleError(("ensemble.routes", "pseudo_masks.extra_methods"),
                        f"ensemble.routes: {bad} not in pseudo_masks.extra_methods "
                        f"{cfg.pseudo_masks.extra_methods} (train_segmentation's model trains on "
                        f"pseudo_masks.method '{cfg.pseudo_masks.method}'; each further model on an extra route)")


def ensemble_has_val_split(cfg) -> None:
    """The ensemble's blend is scored on the val split."""
    if cfg.ensemble.routes and cfg.data.val_split is None:
        raise RuleError(("ensemble.routes", "data.val_split"),
                        "ensemble.routes: the blend is scored on the val split; data.val_split is null")


def imported_cams_name_their_folder(cfg) -> None:
    """Imported CAMs (export_cams.source: import) are read from import_cams.dir."""
    if cfg.export_cams.source == "import" and cfg.import_cams.dir is None:
        raise RuleError(("export_cams.source", "import_cams.dir"),
                        "export_cams.source 'import' needs import_cams.dir (the folder of CAM files)")


def imported_cams_take_no_attention_routes(cfg) -> None:
    """Imported CAMs come without the mask generator's attention, which some routes walk
    (their record in pipeline/pseudo_masks/routes/ says ``attention``)."""
    if cfg.export_cams.source == "import":
        pm = cfg.pseudo_masks
        walkers = [r for r in pm.routes if ROUTES[r].attention]
        if walkers:
            fields = tuple(f for f, names in (("pseudo_masks.method", [pm.method]),
                                              ("pseudo_masks.extra_methods", pm.extra_methods))
                           if set(names) & set(walkers))
            others = ", ".join(n for n, r in ROUTES.items() if not r.attention)
            raise RuleError(fields + ("export_cams.source",),
                            f"{' / '.join(fields)}: pseudo_masks routes {walkers} walk the mask generator's attention, "
                            "which imported CAMs do not have (export_cams.source: import); use a route without "
                            f"attention: {others}")


def predict_split_is_a_data_split(cfg) -> None:
    """The final model predicts a split of this config's data."""
    pred = cfg.train_segmentation.predict_split
    if pred is not None and pred not in cfg.data.all_splits:
        raise RuleError(("train_segmentation.predict_split",),
                        f"train_segmentation.predict_split: '{pred}' is none of the data splits "
                        f"{cfg.data.all_splits}")


RULES: tuple[Callable[..., None], ...] = (
    coco_splits_name_images_and_annotations,
    learn_prompts_keeps_last_epoch,
    seed_eval_split_has_ground_truth,
    export_cams_source_is_a_phase_with_cams,
    folder_dataset_names_classes,
    folder_splits_name_labels,
    published_datasets_have_val_split,
    sam_masks_share_export_split,
    ensemble_routes_are_extra_methods,
    ensemble_has_val_split,
    imported_cams_name_their_folder,
    imported_cams_take_no_attention_routes,
    predict_split_is_a_data_split,
)
