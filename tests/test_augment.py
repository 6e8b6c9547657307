"""The training augmentation on today's Pillow: every op of timm's rand-m9-mstd0.5-inc1
at its extreme magnitudes, many random draws, and the plain crop/flip and gallery paths."""
from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment

from pipeline.data.datasets import LabelTable, Record, read_image
from pipeline.models.mask_generator import MEAN, STD
from pipeline.semples.training import TrainImages, train_transform


ROOT = Path(__file__).resolve().parents[1]
VOC_IMAGE = ROOT / "data/voc-tiny/JPEGImages/000000000030.jpg"


def _images(tmp_path) -> dict[str, Image.Image]:
    """RGB images as the dataset hands them over (read_image converts every file to RGB)."""
    grey = tmp_path / "grey.png"
    Image.fromarray(np.random.RandomState(2).randint(0, 256, (20, 30), np.uint8)).save(grey)
    rs = np.random.RandomState(1)
    return {"voc photo": Image.fromarray(read_image(VOC_IMAGE)),
            "greyscale file": Image.fromarray(read_image(grey)),
            "constant": Image.new("RGB", (16, 12), (7, 7, 7)),
            "black": Image.new("RGB", (16, 12)),
            "white": Image.new("RGB", (16, 12), (255, 255, 255)),
            "1 px wide": Image.fromarray(rs.randint(0, 256, (9, 1, 3), np.uint8)),
            "1x1": Image.new("RGB", (1, 1), (200, 10, 3))}


def _rand_augment(t) -> RandAugment:
    return next(x for x in t.transforms if isinstance(x, RandAugment))


@pytest.mark.parametrize("magnitude", [0, 10])
def test_every_op_of_the_policy_runs_at_its_extremes(tmp_path, magnitude):
    ops = _rand_augment(train_transform(32, "weaktr")).ops
    assert len(ops) == 15 and any(op.name == "PosterizeIncreasing" for op in ops)
    for op in ops:
        forced = copy.copy(op)
        forced.prob, forced.magnitude, forced.magnitude_std = 1.0, magnitude, 0.0
        for what, img in _images(tmp_path).items():
            try:
                out = forced(img)
            except Exception as e:  # name the op and the image, then fail
                raise AssertionError(f"{op.name} at magnitude {magnitude} on {what}: {e!r}") from e
            assert out.mode == img.mode and out.size == img.size, (op.name, what)
            if op.name == "PosterizeIncreasing" and magnitude == 10:
                # 0 bits kept: old Pillow's mask ~(2**8-1) zeroed every value
                assert not np.asarray(out).any(), what


def test_thousands_of_weaktr_draws_never_raise_and_match_timm_elsewhere():
    # Seeded as TrainImages seeds a sample. With this image and seeds 0..2999, the unpatched
    # transform raised "bits must be between or equal to 1 and 8" for seeds
    # 175, 483, 1420, 1722, 1749, 2977 (timm 1.0.31, Pillow 13): this test failed before the fix.
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 48, 3), np.uint8))
    ours = train_transform(32, "weaktr")
    timm_own = create_transform(32, is_training=True, color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1",
                                interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
                                mean=MEAN, std=STD)

    def draw(t, seed):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return t(img)

    for seed in range(3000):
        x = draw(ours, seed)
        assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
        if seed < 150:  # a sample timm's own transform can draw is the same, bit for bit (same code path)
            assert torch.equal(x, draw(timm_own, seed)), seed
    for seed in (175, 483):  # 0-bit draws: timm's own op still raises there on today's Pillow
        with pytest.raises(ValueError, match="bits"):
            draw(timm_own, seed)


def test_crop_flip_and_gallery_paths_take_tiny_images(tmp_path):
    t = train_transform(32, "crop_flip")
    for what, img in _images(tmp_path).items():
        torch.manual_seed(0)
        assert t(img).shape == (3, 32, 32), what
    # the gallery / evaluation path of TrainImages (train=False) and the seeded training path
    paths = []
    for name, size in (("wide", (1, 9)), ("dot", (1, 1)), ("grey", (20, 30))):
        p = tmp_path / f"{name}.png"
        Image.fromarray(np.full(size, 90, np.uint8)).save(p)
        paths.append(Record(id=name, image=str(p), mask=None, height=size[0], width=size[1], labels=[1]))
    table = LabelTable("voc", "train", paths)
    for train, augment in ((False, "weaktr"), (True, "weaktr"), (True, "crop_flip")):
        ds = TrainImages(table, 32, train=train, augment=augment)
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and y[0] == 1
