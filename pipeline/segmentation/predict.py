"""`wsss predict`: the trained final model of a config on any folder of images.

Writes ``labels/<id>.png`` (class ids with the dataset palette), ``overlays/<id>.png`` (the
image with the classes' colours blended in) and ``predictions_coco.json`` (pipeline/pseudo_masks/coco_export.py:
one RLE per class per image). An image's id is its path under the folder without the suffix,
``/`` replaced by ``__``. Test-time augmentation defaults to the setting the final model's
reported number used (train_segmentation.tta): mmseg's SegTTAModel over the config's
tta_pipeline (scales x flip, softmax averaged), as tools/test.py --tta does.
"""
from __future__ import annotations

import logging
from pathlib import Path
import numpy as np

log = logging.getLogger("wsss")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABELS, OVERLAYS, COCO_JSON = "labels", "overlays", "predictions_coco.json"
FOLDER_FIX = "replace or remove the file in the image folder and run `wsss predict` again"


class PredictError(RuntimeError):
    """No trained model or no images: the message names it."""


def list_images(folder: Path) -> list[tuple[str, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictError(f"{folder}: no such image folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PredictError(f"{folder}: no .jpg/.jpeg/.png images")
    ids = [p.relative_to(folder).with_suffix("").as_posix().replace("/", "__") for p in files]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise PredictError(f"{folder}: images with the same name and different suffixes: {dup[:5]}")
    return list(zip(ids, files))


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image with each class's colour blended in (background and 255 left as they are)."""
    out = image.astype(np.float32).copy()
    fg = (label > 0) & (label < len(palette))
    out[fg] = (1 - alpha) * out[fg] + alpha * palette[label[fg]]
    return out.round().clip(0, 255).astype(np.uint8)


def tta_predictor(model, mm_cfg):
    """image path -> (H, W) uint8 through mmseg's SegTTAModel and the config's tta_pipeline
    (without LoadAnnotations: there is no ground truth)."""
    import copy

    import torch
    from mmengine.dataset import Compose, pseudo_collate
    from mmseg.registry import MODELS
    pipe = copy.deepcopy(mm_cfg.tta_pipeline)
    for t in pipe:
        if t["type"] == "TestTimeAug":
            t["transforms"] = [[s for s in step if s["type"] != "LoadAnnotations"] for step in t["transforms"]]
            t["transforms"] = [step for step in t["transforms"] if step]
    compose = Compose(pipe)
    tta = MODELS.build(dict(type="SegTTAModel", module=model))

    def run(path: str) -> np.ndarray:
        with torch.no_grad():
            res = tta.test_step(pseudo_collate([compose(dict(img_path=path))]))
        return res[0].pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
    return run


def predict_folder(seg_dir: Path, images: Path, out: Path, tta: bool, device: str = "cpu") -> dict:
    """Predict every image of ``images`` with the final model of the train_segmentation artifact
    ``seg_dir``; returns counts and ``failed``, a message naming each image that could not be
    predicted (the others are, and are in the COCO JSON). Files are written atomically (a rerun
    overwrites them)."""
    from mmengine.config import Config as MMConfig

    from pipeline.artifacts import SegmentationArtifact
    from pipeline.pseudo_masks.coco_export import export_coco
    from pipeline.data.datasets import DataError, read_image, write_mask
    from pipeline.segmentation.train import load_model, predict
    from pipeline.fileio import UnreadableFile, unique_tmp
    from pipeline.utils import progress
    items = list_images(images)
    art = SegmentationArtifact(seg_dir)
    mm_cfg = MMConfig.fromfile(str(art.config))
    meta = mm_cfg.train_dataloader.dataset.metainfo
    classes, pal = list(meta["classes"]), np.asarray(meta["palette"], np.uint8)
    full_pal = np.zeros((256, 3), np.uint8)
    full_pal[:len(pal)] = pal
    full_pal[255] = 255  # uncertain, as the VOC palette
    model = load_model(mm_cfg, art.model, device=device)
    run = tta_predictor(model, mm_cfg) if tta else (lambda p: predict(model, p))
    out = Path(out)
    (out / LABELS).mkdir(parents=True, exist_ok=True)
    (out / OVERLAYS).mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    from PIL import Image
    for image_id, path in progress(items, f"predict ({'TTA' if tta else 'single scale'})", every_s=5):
        try:
            image = read_image(path, fix=FOLDER_FIX)
            label = run(str(path))
        except Exception as e:  # the reader names the image; mmcv's reader and the model do not
            named = isinstance(e, (DataError, UnreadableFile))
            failed.append(str(e) if named else f"{path}: prediction failed ({type(e).__name__}: {e}); {FOLDER_FIX}")
            log.error("predict: %s", failed[-1])
            continue  # the other images are predicted all the same
        write_mask(out / LABELS / f"{image_id}.png", label, full_pal)
        tmp = unique_tmp(out / OVERLAYS / f"{image_id}.png")
        Image.fromarray(overlay(image, label, pal)).save(tmp, format="PNG")
        tmp.replace(out / OVERLAYS / f"{image_id}.png")
        results.append((image_id, str(path.resolve()), label))
    n = export_coco(out / COCO_JSON, results, classes, f"wsss final model predictions on {Path(images).resolve()}"
                    + (" (TTA)" if tta else ""))
    return {"images": len(results), "annotations": n["annotations"], "tta": tta, "out": str(out),
            "failed": failed}


def final_model_dir(store, key: str, config_name: str) -> Path:
    """The finished train_segmentation artifact, or a PredictError saying how to make it."""
    state = store.state(key)
    if state != "cached":
        raise PredictError(f"{config_name}: no trained final model yet (train_segmentation artifact "
                           f"{store.path(key)} is {state}); run `wsss run --config {config_name} --until "
                           "train_segmentation` first")
    return store.path(key)

