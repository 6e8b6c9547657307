"""Dataset readers (VOC 2012 + SBD, COCO, image folders with tags) and the label table.

All readers produce the same records: image id, absolute image path, mask
path (VOC: the dataset's PNG; COCO: a PNG rendered from the instances json by
``render_coco_masks``; folder: the optional ground-truth PNG, else None),
image size and image-level labels (foreground class ids, derived from the
mask / annotations / tags).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from pipeline.artifacts import DataArtifact
from pipeline.config import DataCfg, missing_root_hint
from pipeline.data.classes import (COCO_CLASSES, IGNORE, ClassFileError, ClassSet, builtin_classes,
                                   dataset_classes, palette)
from pipeline.data.records import DataError, Problem, Record
from pipeline.data.split_lists import leaves_folder, repeated, voc_list_ids
from pipeline.fileio import advice, atomic_write, decoding


# ---------------------------------------------------------------- mask I/O
def read_mask(path: str | Path) -> np.ndarray:
    """Label PNG -> (H, W) uint8 of class ids (palette index, or grey value). A file
    that does not decode raises UnreadableFile naming it and what to do."""
    with decoding(path, "label PNG"), Image.open(path) as im:
        mode = im.mode
        mask = np.asarray(im, dtype=np.uint8).copy() if mode in ("P", "L") else None
    if mask is None:
        raise DataError(f"{path}: label PNG must be palette (P) or greyscale (L), got {mode}")
    return mask


def image_size(rec: Record) -> tuple[int, int]:
    """(H, W) from the label table, or the image header when the table has none (the import stages
    ask this without loading the CAM export's model code)."""
    if rec.height and rec.width:
        return rec.height, rec.width
    try:
        with decoding(rec.image, "image"), Image.open(rec.image) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise DataError(f"{rec.image}: image file missing; {advice(rec.image)}") from None


def write_mask(path: str | Path, mask: np.ndarray, pal: Optional[np.ndarray] = None) -> None:
    """(H, W) uint8 class ids -> palette PNG (``pal``, default the VOC colour map), written atomically."""
    path = Path(path)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette((palette() if pal is None else np.asarray(pal, np.uint8)).reshape(-1).tolist())
    with atomic_write(path) as tmp:
        im.save(tmp, format="PNG")


def read_image(path: str | Path, fix: Optional[str] = None) -> np.ndarray:
    """RGB uint8 (H, W, 3); a DataError for a missing file, UnreadableFile (naming
    it and what to do: ``fix``, by default fileio.advice) for one that does not decode."""
    try:
        with decoding(path, "image", fix), Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image file missing; {fix or advice(path)}") from None


def labels_of(mask: np.ndarray, num_classes: int) -> list[int]:
    ids = np.unique(mask)
    return [int(i) for i in ids if 0 < i < num_classes]


# ---------------------------------------------------------------- VOC
def _voc_paths(cfg: DataCfg, split: str) -> tuple[Path, Path]:
    """(list file, mask dir) of a VOC split; train_aug uses SBD's SegmentationClassAug."""
    root = cfg.root
    sc = cfg.splits.get(split)
    if sc and sc.list:
        lst = root / sc.list
    elif (root / "ImageSets/Segmentation" / f"{split}.txt").exists():
        lst = root / "ImageSets/Segmentation" / f"{split}.txt"
    else:
        lst = root / "ImageSets/SegmentationAug" / f"{split}.txt"
    if sc and sc.masks:
        masks = root / sc.masks
    elif split == "train_aug" or not (root / "SegmentationClass").exists():
        masks = root / "SegmentationClassAug"
    else:
        masks = root / "SegmentationClass"
    return lst, masks


def voc_records(cfg: DataCfg, split: str) -> tuple[list[Record], list[Problem]]:
    """Records of a VOC split's list and the problems of its lines (split_lists.voc_list_ids)."""
    lst, mask_dir = _voc_paths(cfg, split)
    if not lst.exists():
        raise DataError(f"{lst}: split list for '{split}' not found")
    ids, problems = voc_list_ids(lst, cfg.max_images)
    return [Record(i, str((cfg.root / "JPEGImages" / f"{i}.jpg").resolve()),
                   str((mask_dir / f"{i}.png").resolve())) for i in ids], problems


# ---------------------------------------------------------------- COCO
def _coco(cfg: DataCfg, split: str):
    from pycocotools.coco import COCO
    sc = cfg.splits[split]
    ann = cfg.root / sc.annotations
    if not ann.exists():
        raise DataError(f"{ann}: annotations for split '{split}' not found")
    try:
        import contextlib, io
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann)), ann
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{ann}: not a COCO instances file ({e})") from None


def coco_category_map(coco) -> dict[int, int]:
    """COCO category id -> contiguous label 1..80 (by our class-name table)."""
    index = {n: i for i, n in enumerate(COCO_CLASSES)}
    out = {}
    for cat in coco.loadCats(coco.getCatIds()):
        if cat["name"] not in index:
            raise DataError(f"unknown COCO category {cat['id']} '{cat['name']}'")
        out[cat["id"]] = index[cat["name"]]
    return out


def coco_records(cfg: DataCfg, split: str, mask_dir: Optional[Path] = None) -> tuple[list[Record], list[Problem], int]:
    """Records of a COCO split (labels from annotations), problems, and the
    number of images skipped because they carry no annotation (the usual
    WSSS convention: 82,081 of 82,783 train2014 images remain)."""
    coco, ann_path = _coco(cfg, split)
    cmap = coco_category_map(coco)
    img_dir = cfg.root / cfg.splits[split].images
    records, problems, skipped = [], [], 0
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        anns = coco.imgToAnns.get(img_id, [])
        labels = set()
        for a in anns:
            if a["category_id"] not in cmap:
                problems.append(Problem(str(ann_path),
                                        f"annotation {a['id']}: category_id {a['category_id']} not in categories"))
            else:
                labels.add(cmap[a["category_id"]])
        if not anns:
            skipped += 1
            continue
        stem = Path(info["file_name"]).stem
        mask = str((mask_dir / f"{stem}.png").resolve()) if mask_dir else None
        records.append(Record(stem, str((img_dir / info["file_name"]).resolve()), mask,
                              info["height"], info["width"], sorted(labels)))
        if cfg.max_images and len(records) >= cfg.max_images:
            break
    return records, problems, skipped


def render_coco_mask(coco, img_id: int, cmap: dict[int, int], order: str = "official") -> np.ndarray:
    """Semantic mask from the instances of an image.
    official: as SemPLeS/WeakTr data/parse_coco.py _gen_seg_mask renders the
    masks the paper's COCO numbers are measured on: instances in annotation
    order (coco.getAnnIds), the first to cover a pixel keeps it, crowd regions
    get their category. largest_first: larger instances first so small ones
    stay visible on top, crowd regions -> ignore (255)."""
    if order not in ("official", "largest_first"):
        raise ValueError(f"data.coco_render: unknown order '{order}'")
    h, w = coco.imgs[img_id]["height"], coco.imgs[img_id]["width"]
    out = np.zeros((h, w), np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
    if order == "largest_first":
        anns = sorted(anns, key=lambda a: -a.get("area", 0))
    for a in anns:
        m = coco.annToMask(a).astype(bool)  # polygons: union of the parts; RLE (crowd too) as is
        if order == "official":
            out[m & (out == 0)] = cmap[a["category_id"]]
        else:
            out[m] = IGNORE if a.get("iscrowd") else cmap[a["category_id"]]
    return out


def render_coco_masks(cfg: DataCfg, split: str, out_dir: Path, progress=None) -> None:
    """Write one semantic label PNG per annotated image (skips ones already
    written), rendered as cfg.coco_render says."""
    coco, _ = _coco(cfg, split)
    cmap = coco_category_map(coco)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [i for i in sorted(coco.getImgIds()) if coco.imgToAnns.get(i)]
    for n, img_id in enumerate(ids):
        stem = Path(coco.imgs[img_id]["file_name"]).stem
        target = out_dir / f"{stem}.png"
        if not target.exists():
            write_mask(target, render_coco_mask(coco, img_id, cmap, cfg.coco_render))
        if progress:
            progress(n + 1, len(ids))


# ---------------------------------------------------------------- image folder + tags
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def label_rows(path: Path) -> Iterable[tuple[int, str, list[str]]]:
    """(line, image, [class names]) of a labels file: CSV with header
    ``image,labels`` (names separated by ';') or JSON lines
    ``{"image": ..., "labels": [...]}`` (.jsonl / .json)."""
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                image, labels = doc["image"], doc["labels"]
                if not isinstance(labels, (str, list)):
                    raise TypeError(f"'labels' is a {type(labels).__name__}, not a list")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: not a JSON object with 'image' and 'labels' ({e})") from None
            if isinstance(labels, str):
                labels = labels.split(";")
            yield n, str(image), [str(x).strip() for x in labels if str(x).strip()]
        return
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet exports start with a BOM
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"image", "labels"} <= set(reader.fieldnames):
            raise DataError(f"{path}:1: CSV header must be 'image,labels' (got {reader.fieldnames})")
        for row in reader:
            yield (reader.line_num, (row["image"] or "").strip(),
                   [x.strip() for x in (row["labels"] or "").split(";") if x.strip()])


def folder_records(cfg: DataCfg, split: str) -> tuple[list[Record], list[Problem], dict[str, str]]:
    """Records of a folder split from its labels file, problems, and the
    'file:line' of each record. Problems name the file and line: unknown
    classes, rows without labels, paths out of the image folder, duplicate ids
    (an id is the image file's stem: pseudo masks are written as <id>.png)."""
    sc = cfg.splits[split]
    labels_path = cfg.root / sc.labels
    if not labels_path.is_file():
        raise DataError(f"{labels_path}: labels file for split '{split}' not found")
    img_dir = cfg.root / (sc.images or ".")
    mask_dir = cfg.root / sc.masks if sc.masks else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: ground-truth mask folder of split '{split}' not found")
    try:
        index = {n: i for i, n in enumerate(dataset_classes(cfg).names) if i}
    except ClassFileError as e:
        raise DataError(str(e)) from None
    records, problems, first_line = [], [], {}
    for line, image, names in label_rows(labels_path):
        where = f"{labels_path}:{line}"
        if not image:
            problems.append(Problem(where, "empty image path"))
            continue
        unknown = [n for n in names if n not in index]
        if unknown:
            problems.append(Problem(where, f"{image}: unknown classes {unknown} (not in {cfg.classes})"))
            continue
        if not names:
            problems.append(Problem(where, f"{image}: image has no labels"))
            continue
        if leaves_folder(image, img_dir):
            problems.append(Problem(where, f"{image}: image path leaves the split's image folder {img_dir}"))
            continue
        image_id = Path(image).stem
        if repeated(problems, first_line, image_id, where, image):
            continue
        mask = mask_dir / f"{image_id}.png" if mask_dir else None
        records.append(Record(image_id, str((img_dir / image).resolve()),
                              str(mask.resolve()) if mask is not None and mask.exists() else None,
                              labels=sorted({index[n] for n in names})))
        if cfg.max_images and len(records) >= cfg.max_images:
            break
    return records, problems, first_line


# ---------------------------------------------------------------- checking
def _as_problem(e: Exception) -> Problem:
    path, _, reason = str(e).partition(": ")
    return Problem(path, reason or "error")


def check_split(cfg: DataCfg, split: str) -> tuple[list[Record], list[Problem], int]:
    """Validate every item of a split. Returns (good records with sizes and
    labels filled, problems, skipped-without-annotation count)."""
    if not Path(cfg.root).is_dir():
        return [], [Problem(str(cfg.root), f"data set root not found; {missing_root_hint(cfg)}")], 0
    try:
        n_cls = len(dataset_classes(cfg).names)
    except ClassFileError as e:
        return [], [_as_problem(e)], 0
    problems: list[Problem] = []
    skipped = 0
    rows: dict[str, str] = {}
    if cfg.dataset == "folder":
        try:
            records, problems, rows = folder_records(cfg, split)
        except DataError as e:
            return [], [_as_problem(e)], 0
    elif cfg.dataset == "voc":
        try:
            records, problems = voc_records(cfg, split)
        except DataError as e:
            return [], [Problem(str(e).split(":")[0], str(e).split(": ", 1)[1])], 0
    else:
        try:
            records, problems, skipped = coco_records(cfg, split)
        except DataError as e:
            msg = str(e)
            return [], [Problem(msg.split(":")[0], msg.split(": ", 1)[-1])], 0
    if not records:
        problems.append(Problem(split, "split is empty"))
    good = []
    for r in records:
        p = _check_record(r, n_cls, check_mask=cfg.dataset == "voc", tagged=cfg.dataset == "folder")
        if p and r.id in rows:  # name the labels file line that brought the image in
            p = [Problem(rows[r.id], f"{x.path}: {x.reason}") for x in p]
        if p:
            problems.extend(p)
        else:
            good.append(r)
    return good, problems, skipped


def _check_record(r: Record, n_cls: int, check_mask: bool, tagged: bool = False) -> list[Problem]:
    if not Path(r.image).exists():
        return [Problem(r.image, "image file missing")]
    try:
        with Image.open(r.image) as im:
            im.load()  # forces a full decode: catches truncated files
            size = im.size
    except Exception as e:  # PIL raises several types for broken files
        return [Problem(r.image, f"unreadable or truncated image ({type(e).__name__}: {e}); {advice(r.image)}")]
    if tagged:  # folder: labels come from the tags; a GT mask is optional
        r.width, r.height = size
        return _check_mask(r, n_cls, size)[0] if r.mask else []
    if not check_mask:  # COCO: sizes come from the json
        if (r.width, r.height) != size:
            return [Problem(r.image, f"image size {size[0]}x{size[1]} != annotation size {r.width}x{r.height}")]
        return [] if r.labels else [Problem(r.image, "image has no labels")]
    if not r.mask or not Path(r.mask).exists():
        return [Problem(r.mask or r.id, "mask file missing")]
    problems, mask = _check_mask(r, n_cls, size)
    if problems:
        return problems
    r.labels = labels_of(mask, n_cls)
    if not r.labels:
        return [Problem(r.mask, "image has no labels (mask holds background/ignore only)")]
    return []


def _check_mask(r: Record, n_cls: int, size: tuple[int, int]) -> tuple[list[Problem], Optional[np.ndarray]]:
    """(problems, mask) of a record's label PNG; fills the record's size."""
    try:
        mask = read_mask(r.mask)
    except Exception as e:  # UnreadableFile names the file already
        return [Problem(r.mask, str(e).removeprefix(f"{r.mask}: "))], None
    if mask.shape != (size[1], size[0]):
        return [Problem(r.mask, f"mask size {mask.shape[1]}x{mask.shape[0]} != image size {size[0]}x{size[1]}")], None
    bad = sorted(set(np.unique(mask).tolist()) - set(range(n_cls)) - {IGNORE})
    if bad:
        return [Problem(r.mask, f"label ids {bad} outside 0..{n_cls - 1} (and not {IGNORE})")], None
    r.height, r.width = mask.shape
    return [], mask


# ---------------------------------------------------------------- label table
class LabelTable:
    """Per-split table written by prepare_data: the only place later stages
    read image paths, sizes and image-level labels from."""

    def __init__(self, dataset: str, split: str, records: list[Record], classes: Optional[ClassSet] = None):
        self.dataset, self.split, self.records = dataset, split, records
        self.class_set = classes or builtin_classes(dataset)
        self.classes = self.class_set.names  # label id -> name, 0 = background
        self.prompt_names = list(self.class_set.prompts)  # text-prompt names of classes[1:]
        self._by_id = {r.id: r for r in records}

    @property
    def palette(self) -> np.ndarray:
        return self.class_set.palette()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, image_id: str) -> Record:
        return self._by_id[image_id]

    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def multi_hot(self) -> np.ndarray:
        """(N, C-1) float32 foreground labels (background excluded)."""
        y = np.zeros((len(self.records), self.num_classes - 1), np.float32)
        for i, r in enumerate(self.records):
            y[i, [c - 1 for c in r.labels]] = 1
        return y

    def save(self, path: Path) -> None:
        doc = {"dataset": self.dataset, "split": self.split, "classes": list(self.classes),
               "prompt_names": self.prompt_names,
               "colors": {str(i): list(c) for i, c in self.class_set.colors.items()},
               "records": [asdict(r) for r in self.records]}
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(doc))

    @classmethod
    def load(cls, path: Path) -> "LabelTable":
        with decoding(path, "label table"):
            doc = json.loads(Path(path).read_text())
            classes = None
            if "prompt_names" in doc:  # tables written before folder datasets hold VOC/COCO names only
                classes = ClassSet(tuple(doc["classes"]), tuple(doc["prompt_names"]),
                                   {int(i): tuple(c) for i, c in doc.get("colors", {}).items()})
            records = [Record(**r) for r in doc["records"]]
        return cls(doc["dataset"], doc["split"], records, classes)

    def with_sizes(self) -> "LabelTable":
        """This table with every record's height and width (from the image where the list had none)."""
        for r in self.records:
            if not (r.height and r.width):
                r.height, r.width = image_size(r)
        return self

    @classmethod
    def from_artifact(cls, prepare_dir: Path, split: str) -> "LabelTable":
        """The split's table, parsed once per process while the file stays the same (its inode,
        size and mtime): the shards of a per-image stage each ask for it, and at COCO size a
        parse costs a third of a second (issue #38)."""
        p = DataArtifact(prepare_dir).labels(split)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise DataError(f"{p}: no label table for split '{split}' (is it in the data config?)") from None
        return _load_cached(str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4)
def _load_cached(path: str, inode: int, size: int, mtime_ns: int) -> LabelTable:
    return LabelTable.load(Path(path))
