"""CAM store round trip, interrupted writes, and a resumed export_cams."""
from __future__ import annotations

import numpy as np
import pytest

from cam_fixtures import fake_refine
from conftest import ROOT
from pipeline.cams.store import CamStore, CamStoreError, fixed_sample, store_path


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_image_layout_round_trip_is_exact(tmp_path, dtype):
    """Image-size maps (imported CAMs) keep float16 when given so (half the bytes), else float32;
    both read back as float32, value for value."""
    rng = np.random.default_rng(0)
    cams = rng.random((3, 37, 53)).astype(dtype)
    cams[0, 0, :4] = [0, 1, 6.1e-5, 0.33325]  # subnormal-ish / odd values
    s = CamStore(tmp_path / "c.zarr", mode="a")
    s.write("img_1", cams, [2, 7, 15], (37, 53))
    back, classes = CamStore(tmp_path / "c.zarr").read("img_1")
    assert back.dtype == np.float32 and np.array_equal(back, cams.astype(np.float32))
    assert classes == [2, 7, 15] and s.group["img_1"].dtype == dtype
    assert CamStore(tmp_path / "c.zarr").group["img_1"].attrs["size"] == [37, 53]
    assert s.group["img_1"].attrs["layout"] == "image"


def test_interrupted_array_is_not_trusted(tmp_path):
    s = CamStore(tmp_path / "c.zarr", mode="a")
    s.write("a", np.ones((1, 4, 4), np.float32), [1], (4, 4))
    # what a crash between data and completion flag leaves behind
    s.group["a"].update_attributes({"complete": False})
    assert not s.is_complete("a") and s.missing(["a", "b"]) == ["a", "b"]
    with pytest.raises(CamStoreError, match="a: an incomplete CAM array"):
        s.read("a")
    s.write("a", np.zeros((1, 4, 4), np.float32), [1], (4, 4))
    assert s.is_complete("a") and s.read("a")[0].max() == 0


def test_bad_input_names_the_image(tmp_path):
    s = CamStore(tmp_path / "c.zarr", mode="a")
    with pytest.raises(CamStoreError, match="img_9"):
        s.write("img_9", np.zeros((2, 4, 4)), [1], (4, 4))
    with pytest.raises(CamStoreError, match="img_9"):
        s.write("img_9", np.full((1, 4, 4), np.nan), [1], (4, 4))
    assert "img_9" not in s.ids()
    with pytest.raises(CamStoreError, match="no CAMs for image 'nope'"):
        s.read("nope")
    with pytest.raises(CamStoreError, match="no CAM store"):
        CamStore(tmp_path / "missing.zarr")


def test_fixed_sample_is_stable():
    ids = [f"{i:03d}" for i in range(10)]
    assert fixed_sample(ids[::-1], 3) == ["000", "004", "009"] == fixed_sample(ids, 3)


def test_interrupted_export_resumes_to_the_same_store(tmp_path):
    from pipeline.config import load_config
    from stages.export_cams import STAGE as export_cams
    from stages.runner import run_stage

    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 4},
        "export_cams": {"scales": [1.0, 0.5], "flip": True, "gallery_size": 2}})
    inputs = {"prepare_data": run_stage(cfg, "prepare_data"), "refine": fake_refine(cfg, tmp_path / "refine")}
    ids = export_cams.items(cfg, inputs)
    assert len(ids) == 4

    full = tmp_path / "full"
    full.mkdir()
    metrics = export_cams.run(cfg, inputs, full)
    assert metrics["images"] == 4 and (full / "cam_gallery.png").exists()

    part = tmp_path / "part"
    part.mkdir()
    assert export_cams.run_shard(cfg, inputs, part, ids[:2]) == 2
    store = CamStore(store_path(part, "train"), mode="a")
    # an interrupted third image: garbage data, never marked complete
    store.group.create_array(ids[2], shape=(1, 2, 2), dtype="float16", attributes={"complete": False})
    with pytest.raises(RuntimeError, match=f"1 images have no CAM array \\(e.g. {ids[3]}\\)"):
        export_cams.finalize(cfg, inputs, part)  # the one never begun (a shard that fails ends the run)
    done = (part / "cams_train.zarr" / ids[0] / "zarr.json").stat().st_mtime_ns
    assert export_cams.run_shard(cfg, inputs, part, ids) == 2  # the interrupted one + the missing one
    assert (part / "cams_train.zarr" / ids[0] / "zarr.json").stat().st_mtime_ns == done  # not rewritten
    export_cams.finalize(cfg, inputs, part)

    a, b = CamStore(store_path(full, "train")), CamStore(store_path(part, "train"))
    assert a.ids() == b.ids() == sorted(ids)
    for i in ids:
        (ca, ka), (cb, kb) = a.read(i), b.read(i)
        assert ka == kb and np.array_equal(ca, cb)
        h, w = a.group[i].attrs["size"]
        assert ca.shape == (len(ka), h, w) and ca.min() == 0 and ca.max() > 0.99


def test_writer_threads_raise_a_failed_write_naming_the_image(tmp_path):
    from pipeline.cams.store import CamWriter
    s = CamStore(tmp_path / "c.zarr", mode="a")
    with pytest.raises(CamStoreError, match="img_bad"):
        with CamWriter(s, threads=2, max_pending=2) as w:
            w.submit("img_ok", np.ones((1, 4, 4), np.float16), [1], (4, 4))
            w.submit("img_bad", np.ones((1, 4, 4), np.float16), [1, 2], (4, 4))
            w.submit("img_ok2", np.ones((1, 4, 4), np.float16), [1], (4, 4))
    assert s.is_complete("img_ok") and "img_bad" not in s.ids()


# Batched vs one-image CAMs are two float32 paths: batch size changes GEMM blocking and thus the
# summation order. Per dot product of n terms that moves a result by ~sqrt(n)*eps relative (n <= 768 in
# DeiT-Tiny's MLP, eps 1.2e-7: ~3e-6); over 12 blocks and the scale/flip sum ~4e-5 of the raw CAM
# magnitude; min-max normalisation divides by (max - min), a few times smaller than max|CAM| for these
# random-init maps: ~1e-4. Measured worst: 7.2e-5 on one CI CPU; 0 here (2 cores, AVX2 or default
# kernels, 1 or 2 threads). A wrong flip, scale, shift or class order moves some value by > 0.28
# (measured; asserted > 10x the tolerance below).
CAM_PATH_TOL = 5e-4


def test_batched_export_equals_the_per_image_reference(tmp_path):
    """Same-size batches (DataLoader worker, GPU-side flips/resizes, writer
    threads) give the CAMs of the one-image-at-a-time path."""
    import torch
    from cam_fixtures import export_per_image
    from pipeline.cams.inference import (export_batched, infer_cams, infer_cams_batch,
                                         same_size_batches, ScaledBatches)
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable, read_image
    from pipeline.models.mask_generator import load_mask_generator
    from stages.runner import run_stage

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs"), "device": "cpu"}, "data": {"max_images": 16}})
    table = LabelTable.from_artifact(run_stage(cfg, "prepare_data"), "train")
    model = load_mask_generator(fake_refine(cfg, tmp_path / "refine") / "model.pt")
    records = table.records
    batches = same_size_batches(records, 2)
    assert max(len(b) for b in batches) == 2 and len(batches) < len(records)  # some real batching
    assert any(max(len(r.labels) for r in b) > min(len(r.labels) for r in b) for b in batches)  # ragged labels
    scales = (1.0, 0.75)  # 0.75: inputs off the patch grid, a downscale

    # float32 CAMs straight from the two functions
    recs = max(batches, key=len)
    got = infer_cams_batch(model, ScaledBatches([recs], scales)[0], [r.labels for r in recs],
                           (recs[0].height, recs[0].width), flip=True)
    for b, r in enumerate(recs):
        image = read_image(r.image)
        want = infer_cams(model, image, r.labels, scales, True)
        mine = got[b, :len(r.labels)].numpy()
        np.testing.assert_allclose(mine, want, atol=CAM_PATH_TOL)
        # a real regression is far outside that tolerance
        wrong = {"unflipped": infer_cams(model, image, r.labels, scales, False),
                 "one scale": infer_cams(model, image, r.labels, scales[:1], True),
                 "mirrored": want[:, :, ::-1], "shifted 2 px": np.roll(want, 2, axis=-1)}
        if len(r.labels) > 1:
            wrong["class order"] = want[::-1]
        for what, ref in wrong.items():
            assert np.abs(mine - ref).max() > 10 * CAM_PATH_TOL, what

    # whole stores: the old loop vs the batched export with a worker and writer threads
    old, new = CamStore(tmp_path / "old.zarr", mode="a"), CamStore(tmp_path / "new.zarr", mode="a")
    export_per_image(model, records, old, scales, True, "fine", "cpu")
    assert export_batched(model, records, new, scales, True, "fine", "cpu", batch_size=2, num_workers=1,
                          writer_threads=2) == len(records)
    assert new.ids() == old.ids() == sorted(table.ids())
    for r in records:
        (a, ka), (b, kb) = old.read(r.id), new.read(r.id)
        assert ka == kb == r.labels and a.shape == b.shape == (len(r.labels), r.height, r.width)
        assert a.dtype == b.dtype == np.float32 and new.group[r.id].attrs["layout"] == "grid"
        np.testing.assert_allclose(b, a, atol=CAM_PATH_TOL)


def test_batched_export_names_a_bad_image_and_leaves_it_unwritten(tmp_path):
    from PIL import Image
    from pipeline.cams.inference import export_batched
    from pipeline.config import load_config
    from pipeline.data.datasets import Record
    from pipeline.models.mask_generator import load_mask_generator

    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={"run": {"work_dir": str(tmp_path / "runs")}})
    model = load_mask_generator(fake_refine(cfg, tmp_path / "refine") / "model.pt")
    Image.new("RGB", (40, 30)).save(tmp_path / "good.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "wrong.jpg")
    records = [Record("good", str(tmp_path / "good.jpg"), None, 30, 40, [1]),
               Record("wrong", str(tmp_path / "wrong.jpg"), None, 31, 40, [2])]  # the table disagrees
    store = CamStore(tmp_path / "c.zarr", mode="a")
    with pytest.raises(Exception, match="wrong.jpg: image is 40x30, label table says 40x31"):
        export_batched(model, records, store, (1.0,), True, "fine", "cpu", batch_size=2, num_workers=1)
    assert store.missing(["good", "wrong"]) == ["wrong"]
