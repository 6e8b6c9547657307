"""The one source of class names, palette and the ignore label."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

IGNORE = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

# COCO 2014/2017 thing categories in category-id order; index = contiguous label (0 = bg).
COCO_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# COCO category id of each COCO_CLASSES entry after background (ids 1..90; 12, 26, 29, 30, 45,
# 66, 68, 69, 71, 83 are unused). The official COCO mask generator has one class token / head
# row per id 1..90 (row = id - 1; SemPLeS/WeakTr evaluation.py categories_coco).
COCO_CATEGORY_IDS = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
                     *range(72, 83), *range(84, 91))
assert len(COCO_CATEGORY_IDS) == len(COCO_CLASSES) - 1

# Names fed to the text encoder ("a photo of {name}.") where the label name is not a word.
VOC_PROMPT_NAMES = dict(zip(VOC_CLASSES, VOC_CLASSES)) | {
    "aeroplane": "aeroplane", "diningtable": "dining table", "motorbike": "motorbike",
    "pottedplant": "potted plant", "tvmonitor": "tv monitor",
}


def class_names(dataset: str) -> tuple[str, ...]:
    return {"voc": VOC_CLASSES, "coco": COCO_CLASSES}[dataset]


# The official code's VOC text names differ from the label names in one place
# (SemPLeS clip_utils.py category_dict['voc']: 'player' for person); its COCO
# names equal ours for the 80 classes.
OFFICIAL_VOC_OVERRIDES = {"person": "player"}


def prompt_names(dataset: str, official: bool = False) -> list[str]:
    """Foreground class names as written in text prompts (no background);
    official=True: the names the official code writes (clip.class_names)."""
    names = class_names(dataset)[1:]
    if dataset != "voc":
        return list(names)
    out = [VOC_PROMPT_NAMES.get(n, n) for n in names]
    return [OFFICIAL_VOC_OVERRIDES.get(n, p) for n, p in zip(names, out)] if official else out


@dataclass(frozen=True)
class ClassSet:
    """The classes of one dataset: ``names[i]`` is label id i (0 = background),
    ``prompts`` the text-prompt names of names[1:], ``colors`` palette entries
    that replace the VOC colour map's (label id -> (r, g, b))."""
    names: tuple[str, ...]
    prompts: tuple[str, ...]
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def palette(self) -> np.ndarray:
        pal = palette()
        for i, rgb in self.colors.items():
            pal[i] = rgb
        return pal


def builtin_classes(dataset: str) -> ClassSet:
    return ClassSet(class_names(dataset), tuple(prompt_names(dataset)))


def dataset_classes(data) -> ClassSet:
    """Classes of a DataCfg: the built-in VOC/COCO tables, or a folder dataset's class list file."""
    if data.dataset == "folder":
        return read_class_file(Path(data.root) / data.classes)
    return builtin_classes(data.dataset)


class ClassFileError(ValueError):
    """A class list problem, naming the file and line."""


def _color(text: str, where: str) -> Optional[tuple[int, int, int]]:
    text = text.strip()
    if not text:
        return None
    h = text.lstrip("#")
    if len(h) != 6 or any(c not in "0123456789abcdefABCDEF" for c in h):
        raise ClassFileError(f"{where}: color '{text}' is not #rrggbb")
    return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))


def read_class_file(path: str | Path) -> ClassSet:
    """Foreground classes of a folder dataset, in label-id order from 1.
    ``.txt``: one name a line; ``.csv``: header with ``name`` and optional
    ``prompt`` (name in the text prompt) and ``color`` (#rrggbb) columns."""
    path = Path(path)
    if not path.is_file():
        raise ClassFileError(f"{path}: class list file not found")
    rows: list[tuple[int, str, str, str]] = []  # (line, name, prompt, color)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "name" not in reader.fieldnames:
                raise ClassFileError(f"{path}:1: header must name a 'name' column (and optionally prompt, color)")
            unknown = set(reader.fieldnames) - {"name", "prompt", "color"}
            if unknown:
                raise ClassFileError(f"{path}:1: unknown columns {sorted(unknown)} (name, prompt, color)")
            for row in reader:
                rows.append((reader.line_num, (row["name"] or "").strip(), (row.get("prompt") or "").strip(),
                             row.get("color") or ""))
    else:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                rows.append((n, line.strip(), "", ""))
    names, prompts, colors, seen = ["background"], [], {}, {}
    for line, name, prompt, color in rows:
        where = f"{path}:{line}"
        if not name:
            raise ClassFileError(f"{where}: empty class name")
        if name.lower() == "background":
            raise ClassFileError(f"{where}: 'background' is implicit (label 0); list foreground classes only")
        if name in seen:
            raise ClassFileError(f"{where}: class '{name}' already listed on line {seen[name]}")
        seen[name] = line
        names.append(name)
        prompts.append(prompt or name)
        rgb = _color(color, where)
        if rgb:
            colors[len(names) - 1] = rgb
    if len(names) < 2:
        raise ClassFileError(f"{path}: no classes listed")
    if len(names) > 255:
        raise ClassFileError(f"{path}: {len(names) - 1} classes; label PNGs hold at most 254 (255 = ignore)")
    return ClassSet(tuple(names), tuple(prompts), colors)


def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), (n, 3) uint8; 255 is white-ish as in VOC."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal
