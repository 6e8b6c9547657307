"""The one source of class names, palette and the ignore label."""
from __future__ import annotations

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
