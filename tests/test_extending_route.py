"""docs/extending/route.md's worked example as the page gives it: its route module, its test and
its config are copied into a temporary checkout, where `wsss run --until pseudo_masks` makes the
toy route's PNGs from imported CAMs beside argmax, and the page's own test passes."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from guide_cams import write_stacked_cams
from guide_examples import checkout_with, example_files, run_wsss
from pipeline.data.datasets import read_mask

PAGE = "docs/extending/route.md"
CONFIG = "configs/examples/voc-top-fraction.yaml"


def test_the_guides_route_runs_through_wsss_and_its_test_passes(tmp_path):
    files = example_files(PAGE)
    assert set(files) == {"pipeline/pseudo_masks/routes/top_fraction.py", "tests/test_route_top_fraction.py", CONFIG}
    checkout = checkout_with(tmp_path / "checkout", files)
    cams = write_stacked_cams(checkout / "cams/top-fraction", 8)
    res = run_wsss(checkout, ["run", "--config", CONFIG, "--until", "pseudo_masks", "--no-prefect"])
    assert res.returncode == 0, res.stderr[-3000:]
    (pm,) = (checkout / "runs/top-fraction").glob("pseudo_masks-*")
    fraction = 0.25  # the page's config
    for image_id, (c, labels) in cams.items():
        mask = read_mask(pm / "masks" / f"{image_id}.png")
        assert set(np.unique(mask)) <= {0, *labels}
        for k, label in enumerate(labels):  # each class labels pixels of its own top quarter only
            mine = mask == label
            assert mine.mean() <= fraction + 0.01
            assert not mine.any() or c[k][mine].min() >= np.quantile(c[k], 1 - fraction)
        assert (mask > 0).mean() > 0.1
        assert read_mask(pm / "masks_argmax" / f"{image_id}.png").shape == mask.shape
    assert (pm / "pseudo_mask_gallery.png").exists()
    unit = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_route_top_fraction.py"], cwd=checkout, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(checkout)), timeout=300)
    assert unit.returncode == 0, unit.stdout[-3000:]
