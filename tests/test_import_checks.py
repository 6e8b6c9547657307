"""An import reports every bad file of its folder in one run (missing, wrong shape, NaN, a pickle
that is no dict of arrays), up to a cap with the count, and leaves no store behind, not even an
empty one (issue #35, item 7). Through the import_cams stage on five voc-tiny images."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.cams.importer import CamImportError, ImportOptions, import_folder
from pipeline.cams.store import CamStore

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def _weaktr(path: Path, labels, size, edit=lambda c: c):
    np.save(path, {c - 1: edit(np.full(size, 0.5, np.float32)) for c in labels})


def test_import_cams_names_every_bad_file_and_leaves_no_store(tmp_path):
    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable
    from stages.runner import run_stage, stage_keys
    cams = tmp_path / "cams"
    cams.mkdir()
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\nrun: {{work_dir: {tmp_path / 'runs'}}}\n"
                        "data: {max_images: 5}\nexport_cams: {source: import}\n"
                        f"import_cams: {{dir: {cams}, gallery_size: 1}}\n")
    cfg = load_config(cfg_path)
    keys = stage_keys(cfg)
    table = LabelTable.from_artifact(run_stage(cfg, "prepare_data", keys=keys), "train")
    good, missing, shape, nan, evil = table.records
    _weaktr(cams / f"{good.id}.npy", good.labels, (good.height, good.width))
    _weaktr(cams / f"{shape.id}.npy", shape.labels, (good.height + 1, good.width))
    _weaktr(cams / f"{nan.id}.npy", nan.labels, (nan.height, nan.width), lambda c: np.where(c > 0, np.nan, c))
    with open(cams / f"{evil.id}.npy", "wb") as f:  # a pickle that would run a command
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(np.empty((), object)))
        f.write(pickle.dumps(_Evil(), protocol=3))
    with pytest.raises(Exception) as err:
        run_stage(cfg, "import_cams", keys=keys)
    msg = str(err.value) + str(err.value.__cause__)
    assert "4 of 5 CAM files" in msg, msg
    lines = msg.splitlines()
    for r, what in ((missing, ": file missing"), (shape, ": CAMs of size"), (nan, "non-finite values"),
                    (evil, "refuses to unpickle")):
        assert any(f"{r.id}.npy" in ln and what in ln for ln in lines), (what, msg)
    assert not list((tmp_path / "runs").rglob("cams_*.zarr"))  # not even an empty group


def test_import_lists_a_capped_number_of_problems_and_their_count(tmp_path):
    store = CamStore(tmp_path / "cams_train.zarr", mode="a")
    recs = [type("R", (), dict(id=f"im{i:02d}", labels=[3], height=4, width=4)) for i in range(25)]
    with pytest.raises(CamImportError) as err:
        import_folder(recs, tmp_path, ImportOptions("weaktr_npy"), store, 21)
    msg = str(err.value)
    assert "25 of 25 CAM files" in msg and msg.count("file missing") == 20 and "... and 5 more" in msg
    assert not store.path.exists()
    with pytest.raises(CamImportError, match="CAM folder not found"):
        import_folder(recs, tmp_path / "nope", ImportOptions("weaktr_npy"), CamStore(store.path, mode="a"), 21)
    assert not store.path.exists()
