"""The CAM store's grid layout: export_cams stores the per-scale, per-flip patch-grid CAMs and
the store rebuilds the image-size float32 maps on read (pipeline/cams/grids.py)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cam_fixtures import fake_refine
from conftest import ROOT
from pipeline.cams.grids import Geometry
from pipeline.cams.store import CamStore, CamStoreError


DOCS_PAGE = ROOT / "docs/reference/architecture.md"
DOCS_PATH = '"runs/export_cams-<key>/cams_train.zarr/2007_000032"'


def docs_cams(array_dir):
    """The docs' "read a CAM without wsss" snippet (the CAM store, docs/reference/architecture.md,
    crop geometry, the official one), run as the page writes it, on ``array_dir``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS_PAGE.read_text(), re.DOTALL)
    code = next(b for b in blocks if "import numpy as np, zarr" in b)
    assert DOCS_PATH in code, f"{DOCS_PAGE}: the reader snippet no longer opens {DOCS_PATH}"
    scope: dict = {}
    exec(code.replace(DOCS_PATH, repr(str(array_dir))), scope)
    return scope["cams"], scope["classes"]  # (C, H, W) in [0, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_grids_round_trip_bit_for_bit(tmp_path, dtype):
    rng = np.random.default_rng(1)
    grids = [rng.normal(size=(2, 3, 5, 7)).astype(dtype), rng.normal(size=(2, 3, 6, 9)).astype(dtype)]
    s = CamStore(tmp_path / "c.zarr", mode="a")
    s.write_grids("img", grids, [4, 9, 11], (40, 60), [(80, 112), (96, 144)], True, Geometry(16, False))
    back, attrs = CamStore(tmp_path / "c.zarr").read_grids("img")
    assert all(b.dtype == dtype and b.tobytes() == g.tobytes() for b, g in zip(back, grids))
    assert attrs["layout"] == "grid" and attrs["inputs"] == [[80, 112], [96, 144]] and attrs["patch"] == 16
    cams, classes = s.read("img")
    assert classes == [4, 9, 11] and cams.dtype == np.float32 and cams.shape == (3, 40, 60)
    assert np.allclose(cams.min((1, 2)), 0) and np.allclose(cams.max((1, 2)), 1, atol=1e-6)
    s.verify("img")


def test_a_read_does_not_depend_on_the_callers_thread_count(tmp_path):
    """torch's CPU bilinear upsampling rounds some elements differently per thread count (71 of
    200 random CAM shapes at 1, 2 and 4 threads): the store rebuilds on one thread, so a pool
    worker, a Dask worker and the flow's process read the same maps, and the caller keeps its
    setting."""
    rng = np.random.default_rng(2)
    s = CamStore(tmp_path / "c.zarr", mode="a")
    for k in range(12):
        c, h, w = int(rng.integers(1, 4)), int(rng.integers(8, 30)), int(rng.integers(8, 30))
        size = (int(rng.integers(150, 400)), int(rng.integers(150, 400)))
        s.write_grids(f"i{k}", [rng.normal(size=(2, c, h, w)).astype(np.float32)], list(range(1, c + 1)), size,
                      [(h * 16, w * 16)], True, Geometry(16))
    before = torch.get_num_threads()
    reads = {}
    try:
        for t in (1, 2, 4):
            torch.set_num_threads(t)
            reads[t] = [s.read(f"i{k}")[0] for k in range(12)]
            assert torch.get_num_threads() == t
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(a, b) for t in (2, 4) for a, b in zip(reads[1], reads[t]))


def test_bad_grids_name_the_image_and_write_nothing(tmp_path):
    s = CamStore(tmp_path / "c.zarr", mode="a")
    g = np.zeros((2, 2, 3, 3), np.float32)
    with pytest.raises(CamStoreError, match="img_7"):  # one class too many for the grids
        s.write_grids("img_7", [g], [1, 2, 3], (8, 8), [(48, 48)], True, Geometry(16))
    with pytest.raises(CamStoreError, match="img_7"):  # flip off but two views
        s.write_grids("img_7", [g], [1, 2], (8, 8), [(48, 48)], False, Geometry(16))
    with pytest.raises(CamStoreError, match="img_7"):
        s.write_grids("img_7", [np.full_like(g, np.inf)], [1, 2], (8, 8), [(48, 48)], True, Geometry(16))
    assert s.ids() == []
    s.write_grids("img_8", [g], [1, 2], (8, 8), [(48, 48)], True, Geometry(16))
    s.group["img_8"].update_attributes({"shapes": [[2, 2, 3, 4]]})  # attributes that lie about the data
    with pytest.raises(CamStoreError, match="img_8.*do not match"):
        s.read("img_8")


# One image alone vs in its batch: the same float32 formula per element, but torch's CPU upsampling
# picks its vectorised (fused multiply-add) or scalar loop by tensor shape, so an image can differ by
# an ulp or two of the raw CAM magnitude, amplified by the min-max as below. Measured: 10 of 12
# images bit for bit, worst 2.1e-5.
REBUILD_TOL = 1e-4
# The docs' reader interpolates separably (rows, then columns) where torch weighs the four
# neighbours at once: float32 sums in another order, a few ulp of the raw CAM magnitude (~1e-6
# relative), times max|CAM| / (max - min) of the min-max (~10 for these random-init maps). Measured
# worst 3.1e-5; a missing flip or a wrong scale moves values by > 0.1.
DOCS_TOL = 2e-4


@pytest.mark.parametrize("remainder", ["crop", "pad"])
def test_store_rebuilds_the_float32_maps_of_the_batched_forward(tmp_path, remainder):
    """read() of a grid array = infer_cams_batch's float32 maps of the same forward: the same
    upsampling, flip, sum and min-max (pipeline/cams/grids.py assemble) on the same values, one
    image at a time instead of in its batch (bench/bench_cam_store.py counts the seeds and CRF
    masks that match the float32 path pixel for pixel on voc-tiny)."""
    from pipeline.cams.inference import ScaledBatches, export_batched, infer_cams_batch, same_size_batches
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable
    from pipeline.models.mask_generator import load_mask_generator
    from stages.runner import run_stage

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 12},
        "mask_generator": {"input_remainder": remainder}})
    table = LabelTable.from_artifact(run_stage(cfg, "prepare_data"), "train")
    model = load_mask_generator(fake_refine(cfg, tmp_path / "refine") / "model.pt")
    assert Geometry.of(model) == Geometry(model.patch_size, remainder == "pad")
    scales = (1.0, 0.75)  # 0.75: inputs off the patch grid
    store = CamStore(tmp_path / "c.zarr", mode="a")
    assert export_batched(model, table.records, store, scales, True, "fine", "cpu", batch_size=3) == 12
    for batch in same_size_batches(table.records, 3):
        want = infer_cams_batch(model, ScaledBatches([batch], scales)[0], [r.labels for r in batch],
                                (batch[0].height, batch[0].width), flip=True).numpy()
        for b, r in enumerate(batch):
            got, classes = store.read(r.id)
            assert classes == r.labels and store.group[r.id].attrs["layout"] == "grid"
            np.testing.assert_allclose(got, want[b, :len(r.labels)], atol=REBUILD_TOL, err_msg=r.id)
            if remainder == "crop":
                mine, _ = docs_cams(store.path / r.id)
                np.testing.assert_allclose(mine, got, atol=DOCS_TOL)


def test_grid_store_is_much_smaller_than_image_size_maps(tmp_path):
    """The point of the layout: a few kB per image instead of C x H x W values."""
    from pipeline.cams.inference import export_batched
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable
    from pipeline.models.mask_generator import load_mask_generator
    from stages.runner import run_stage

    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 6}})
    records = LabelTable.from_artifact(run_stage(cfg, "prepare_data"), "train").records
    model = load_mask_generator(fake_refine(cfg, tmp_path / "refine") / "model.pt")
    grids = CamStore(tmp_path / "g.zarr", mode="a")
    export_batched(model, records, grids, (1.0, 1.2), True, "fine", "cpu")
    maps = CamStore(tmp_path / "m.zarr", mode="a")
    for r in records:
        maps.write(r.id, grids.read(r.id)[0].astype(np.float16), r.labels, (r.height, r.width))
    g = sum(grids.nbytes_stored(r.id) for r in records)
    m = sum(maps.nbytes_stored(r.id) for r in records)
    assert g * 5 < m, (g, m)
