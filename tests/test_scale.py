"""Work in proportion to the work (issue #38): the label table parsed once per stage run, a
heal that schedules only the shards with something to redo, CAM completeness read without zarr
and only for the ids asked, a manifest that hashes only the files written since the last one,
and a one-file heal that does the same work whatever the store's size."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cam_fixtures import gt_store
from pipeline.cams import store as cam_store
from pipeline.cams.importer import ImportOptions, import_folder
from pipeline.cams.store import CamStore, store_path
from pipeline.data import datasets
from pipeline.data.datasets import LabelTable
from pipeline.data.records import Record
from pipeline.store import Store


def test_a_sharded_stage_parses_the_label_table_once_and_heals_one_shard(smoke_cfg, prepared, tmp_path,
                                                                          monkeypatch):
    from pipeline.config import load_config
    from stages import get
    from stages.contract import view
    from stages.launch import shards

    cfg = load_config(smoke_cfg.source, overrides={
        "run": {"work_dir": str(smoke_cfg.run.work_dir), "processes": 1, "shard_size": 16},
        "pseudo_masks": {"method": "argmax", "extra_methods": ["crf"], "gallery_size": 1}})
    export, out = tmp_path / "export", tmp_path / "pm"
    ids = gt_store(prepared, "train", export)
    inputs = {"prepare_data": prepared, "export_cams": export, "refine": tmp_path / "unused"}
    out.mkdir()
    stage, parses = get("pseudo_masks"), []
    load = LabelTable.load.__func__
    monkeypatch.setattr(LabelTable, "load", classmethod(lambda cls, p: parses.append(p) or load(cls, p)))
    datasets._load_cached.cache_clear()

    def run_as_the_flow_does() -> int:
        _, todo = shards(stage, cfg, inputs, out)
        for shard in todo:
            stage.run_shard(view(cfg, stage), inputs, out, shard)
        stage.finalize(view(cfg, stage), inputs, out)
        return len(todo)

    assert run_as_the_flow_does() == 5  # 70 images in shards of 16
    assert len(parses) == 1  # not once per shard and route
    gallery = out / "pseudo_mask_gallery.png"
    drawn = gallery.stat().st_mtime_ns
    (out / "masks_crf" / f"{ids[40]}.png").unlink()
    _, todo = shards(stage, cfg, inputs, out)
    assert todo == [ids[32:48]]  # the one shard with a missing output, all its ids
    assert run_as_the_flow_does() == 1 and (out / "masks_crf" / f"{ids[40]}.png").exists()
    assert gallery.stat().st_mtime_ns == drawn  # the heal keeps the intact gallery (its masks are unchanged)


def test_a_gallery_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """save_grid renames a finished PNG into place: a crash mid-write leaves no partial gallery
    that a resume or heal (which keep a gallery that is there) would take for a finished one."""
    import matplotlib.figure
    from pipeline.plots import save_grid
    img = np.zeros((4, 4, 3), np.uint8)
    save_grid(tmp_path / "g.png", [[img]])
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"

    def crash(self, fname, **kw):
        open(fname, "wb").write(b"\x89PNG half")
        raise OSError("killed mid-write")
    import matplotlib.pyplot as plt
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", crash)
    open_figures = len(plt.get_fignums())
    with pytest.raises(OSError):
        save_grid(tmp_path / "h.png", [[img]])
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]
    assert len(plt.get_fignums()) == open_figures  # the failed figure is closed


def test_cam_completeness_without_zarr_agrees_with_zarr(tmp_path, monkeypatch):
    import shutil
    store = CamStore(tmp_path / "cams", mode="a")
    maps = np.random.default_rng(0).random((1, 4, 5)).astype(np.float32)
    for i in ("done", "half", "lost", "empty"):
        store.write(i, maps[:0] if i == "empty" else maps, [] if i == "empty" else [1], (4, 5))
    store.group["half"].update_attributes({"complete": False})  # killed before the flag
    shutil.rmtree(tmp_path / "cams/lost/c")  # a deleted chunk
    (tmp_path / "cams/not_an_array").mkdir()
    assert store.ids() == ["done", "empty", "half", "lost"]
    assert store.missing(store.ids()) == [i for i in store.ids() if not store.is_complete(i)] == ["half", "lost"]
    assert store.missing(["done", "half", "lost", "new"]) == ["half", "lost", "new"]
    read = cam_store._complete_on_disk
    looked = []
    monkeypatch.setattr(cam_store, "_complete_on_disk", lambda d: looked.append(d.name) or read(d))
    assert store.missing(["lost"]) == ["lost"] and looked == ["lost"]  # a shard's own arrays, not the store's
    monkeypatch.undo()

    # a resumed import asks no array its completeness through zarr
    monkeypatch.setattr(CamStore, "is_complete", lambda self, i: pytest.fail("one zarr open per image"))
    folder = tmp_path / "files"
    folder.mkdir()
    for i in ("done", "half", "lost", "empty"):
        np.save(folder / f"{i}.npy", {0: maps[0]})
    records = [Record(i, "", None, 4, 5, [1]) for i in ("done", "half", "lost", "empty")]
    counts = import_folder(records, folder, ImportOptions("weaktr_npy"), store, 21)
    assert counts["imported"] == 2 and store.missing([r.id for r in records]) == []


def test_a_heal_hashes_only_the_files_it_rewrote(tmp_path, monkeypatch):
    from pipeline import store as store_module
    store, key = Store(tmp_path), "pseudo_masks-0123456789abcdef"
    d = store.open(key)
    for i in range(5):
        (d / f"{i}.png").write_bytes(bytes([i]) * 100)
    store.finalize(key, "pseudo_masks", {}, {}, {}, 0.0)
    (d / "3.png").unlink()
    assert store.state(key) == "corrupt"
    store.heal(key)
    d = store.open(key)
    (d / "3.png").write_bytes(b"x" * 100)  # the stage redoes the missing one
    hashed = []
    sha = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda p: hashed.append(p.name) or sha(p))
    files = store.finalize(key, "pseudo_masks", {}, {}, {}, 0.0)["files"]
    assert hashed == ["3.png"]
    assert files["3.png"]["sha256"] == sha(d / "3.png") and files["0.png"]["sha256"] == sha(d / "0.png")
    assert store.state(key) == "cached" and not list(d.glob(".manifest*"))
    (d / "1.png").write_bytes(b"y" * 100)  # same size, new content and mtime: still caught
    assert list(store.damaged(key)) == ["1.png"]


def test_a_heal_takes_the_intact_outputs_from_the_manifest_and_lists_what_it_rewrote(tmp_path, monkeypatch):
    """After Store.heal of a finished artifact, finalize takes the per-image outputs the heal left
    from the set-aside manifest without a look and lists the rest: the redone image's outputs in
    every layout (the stage may rewrite them all) and the artifact's own files. The manifest is
    the one a full listing gives. A store that did not heal it (a new process resuming an
    interrupted heal) lists everything."""
    from pipeline import store as store_module, utils
    from pipeline.store import PerImage
    store, key = Store(tmp_path), "import_cams-0123456789abcdef"
    arrays, masks = PerImage("cams", "", bool, is_dir=True), PerImage("masks", ".png", bool)
    d = store.open(key)

    def write_image(i: str, fill: bytes) -> None:
        (d / "cams" / i / "c").mkdir(parents=True, exist_ok=True)
        (d / "cams" / i / "zarr.json").write_text(i)
        (d / "cams" / i / "c" / "0").write_bytes(fill * 10)
        (d / "masks").mkdir(exist_ok=True)
        (d / "masks" / f"{i}.png").write_bytes(fill * 20)
    for i in "abc":
        write_image(i, i.encode())
    (d / "cams" / "zarr.json").write_text("group")
    (d / "gallery.png").write_bytes(b"g")
    store.finalize(key, "import_cams", {}, {}, {}, 0.0)
    (d / "cams" / "b" / "c" / "0").unlink()
    (d / "gallery.png").unlink()
    state, damage = store.check(key)
    assert state == "corrupt" and set(damage) == {"cams/b/c/0", "gallery.png"}
    store.heal(key, (arrays, masks), damage=damage)
    assert not (d / "cams" / "b").exists() and (d / "masks" / "b.png").exists()
    d = store.open(key)
    write_image("b", b"B!")  # the resume: image b in both layouts (its mask rewritten, a new size)
    (d / "gallery.png").write_bytes(b"gg")
    looked = []
    files_under = utils.files_under

    def listing(root, known=()):
        for rel, st in files_under(root, known):
            if st is not None and not rel.startswith("."):
                looked.append(rel)
            yield rel, st
    monkeypatch.setattr(store_module, "files_under", listing)
    files = store.finalize(key, "import_cams", {}, {}, {}, 0.0)["files"]
    assert sorted(looked) == ["cams/b/c/0", "cams/b/zarr.json", "cams/zarr.json", "gallery.png", "masks/b.png"]
    full = {rel: (st.st_size, st.st_mtime_ns) for rel, st in files_under(d)
            if rel != "manifest.json" and not rel.rpartition("/")[2].startswith(".")}
    assert {rel: (f["size"], f["mtime_ns"]) for rel, f in files.items()} == full
    assert files["masks/b.png"]["sha256"] == store_module.sha256_file(d / "masks" / "b.png")
    assert store.check(key) == ("cached", {})
    (d / "masks" / "a.png").unlink()
    store.heal(key, (arrays, masks))
    store.open(key)  # and the process dies: a partial artifact beside its set-aside manifest
    looked.clear()
    resumed = Store(tmp_path)
    assert resumed.check(key)[0] == "partial"
    resumed.heal(key, (arrays, masks))
    resumed.open(key)
    write_image("a", b"a")
    resumed.finalize(key, "import_cams", {}, {}, {}, 0.0)
    assert len(looked) == 3 * 3 + 2 and resumed.check(key) == ("cached", {})  # every file looked at


@pytest.mark.parametrize("sizes", [(4, 12)])
def test_a_one_file_heal_does_the_same_work_at_any_store_size(sizes, tmp_path, monkeypatch):
    """A lost CAM chunk healed through the runner: one check of each artifact (the plan's state:
    the recheck under the lock and the heal reuse what it found), no CAM array
    opened for its completeness, the rewritten files hashed, and the files listed are the
    rewritten image's and the artifact's own (finalize takes the intact images' from the
    set-aside manifest), whether the store holds 4 images or 12."""
    import sys
    from pathlib import Path

    from pipeline import store as store_module, utils
    from pipeline.config import load_config
    from stages.runner import run_all
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from scale import make_dataset, write_config

    def heal_work(n: int) -> dict:
        tmp = tmp_path / f"n{n}"
        make_dataset(tmp / "data", n)
        cfg = load_config(write_config(tmp))
        art = run_all(cfg, until="import_cams")["import_cams"]
        next(p for p in (art / "cams_train.zarr" / "img000001").rglob("*") if p.is_file()
             and "c" in p.relative_to(art).parts).unlink()
        work = {"checks": 0, "arrays opened": 0, "hashed": 0, "listed": 0}

        def counting(name, fn, per=lambda *a: 1):
            def counted(*args, **kw):
                work[name] += per(*args)
                return fn(*args, **kw)
            return counted

        def listing(d, known=()):
            for rel, st in files_under(d, known):
                work["listed"] += st is not None  # a file looked at (an intact output is taken as listed)
                yield rel, st
        files_under = utils.files_under
        with monkeypatch.context() as m:
            m.setattr(store_module.Store, "damaged", counting("checks", store_module.Store.damaged))
            m.setattr(cam_store, "_complete_on_disk", counting("arrays opened", cam_store._complete_on_disk))
            m.setattr(store_module, "sha256_file", counting("hashed", store_module.sha256_file))
            m.setattr(utils, "files_under", listing)
            m.setattr(store_module, "files_under", listing)
            run_all(cfg, until="import_cams")
        assert Store(cfg.run.work_dir).state(art.name) == "cached"
        assert len(json.loads((art / "manifest.json").read_text())["files"]) == 3 + 2 * n  # group, store files
        return work

    small, large = (heal_work(n) for n in sizes)
    assert small == large, (small, large)
    # prepare_data's state and import_cams' (its recheck under the lock and the heal reuse what it found)
    assert small["checks"] == 2 and small["arrays opened"] == 0 and small["listed"] <= 8, small


def test_the_recheck_under_the_lock_reuses_only_damage_found_on_the_same_manifest(tmp_path, monkeypatch):
    """Store.check(reuse=True) takes the damage this process's last check found, once, while the
    manifest is that same file; a manifest replaced meanwhile (another run healed the artifact)
    or a check that found nothing is checked again."""
    from pipeline import store as store_module
    store, key = Store(tmp_path), "import_cams-0123456789abcdef"
    d = store.path(key)
    d.mkdir()
    for name in ("a.bin", "b.bin"):
        (d / name).write_bytes(name.encode())
    store.finalize(key, "import_cams", {}, {}, {}, 0.0)
    passes = []
    damaged = store_module.Store.damaged
    monkeypatch.setattr(store_module.Store, "damaged", lambda self, k: passes.append(k) or damaged(self, k))
    assert store.check(key) == ("cached", {}) and store.check(key, reuse=True) == ("cached", {})
    assert len(passes) == 2  # nothing found: looked at again
    (d / "a.bin").unlink()
    monkeypatch.chdir(tmp_path)  # the CLI's store has run.work_dir as given, a flow task's the resolved path
    assert Store(".").check(key) == ("corrupt", {"a.bin": "missing"}) and len(passes) == 3
    assert store.check(key, reuse=True) == ("corrupt", {"a.bin": "missing"}) and len(passes) == 3  # reused
    assert store.check(key, reuse=True)[0] == "corrupt" and len(passes) == 4  # once
    (d / "a.bin").write_bytes(b"a.bin")  # another run heals it: a new manifest
    store.finalize(key, "import_cams", {}, {}, {}, 0.0)
    assert store.check(key, reuse=True) == ("cached", {}) and len(passes) == 5


def test_a_passed_image_size_check_is_remembered_until_what_it_reads_changes(smoke_cfg, prepared, monkeypatch,
                                                                               caplog):
    """prepare_data's check hook runs on every run, cached or not; once it has passed it is not
    computed again (no timm import for the mask generator's patch size) until a field it reads
    changes, and its warnings are logged again each time."""
    from pipeline.config import load_config
    from pipeline.data import image_checks
    from pipeline.data.prepare import SIZE_CHECK, check_image_sizes
    computed = []
    arch_of = image_checks.arch_of
    monkeypatch.setattr(image_checks, "arch_of", lambda *a: computed.append(a) or arch_of(*a))
    assert (prepared / SIZE_CHECK).exists()  # run_stage ran the hook
    check_image_sizes(smoke_cfg, prepared)
    assert computed == []  # remembered
    warn = load_config(smoke_cfg.source, overrides={"run": {"work_dir": str(smoke_cfg.run.work_dir)},
                                                    "checks": {"min_patches": 1000, "small_images": "warn"}})
    with caplog.at_level("WARNING", logger="wsss"):
        check_image_sizes(warn, prepared)
        assert len(computed) == 1 and "[checks.small_images: warn]" in caplog.text
        caplog.clear()
        check_image_sizes(warn, prepared)
    assert len(computed) == 1 and "[checks.small_images: warn]" in caplog.text  # the warnings, again
    error = load_config(smoke_cfg.source, overrides={"run": {"work_dir": str(smoke_cfg.run.work_dir)},
                                                     "checks": {"min_patches": 1000}})
    with pytest.raises(image_checks.ImageCheckError):
        check_image_sizes(error, prepared)
    with pytest.raises(image_checks.ImageCheckError):  # a failed check is not remembered
        check_image_sizes(error, prepared)
    (prepared / "labels_train.json").rename(prepared / "moved.json")
    with pytest.raises(datasets.DataError, match="no label table for split 'train'"):
        check_image_sizes(smoke_cfg, prepared)  # the table's own message, not a bare FileNotFoundError


def test_sam_level_counts_read_only_the_files_a_heal_rewrote(tmp_path, monkeypatch):
    """sam_masks' finalize counts the masks per level of every image from sam_levels.json, reading
    again only the files whose size or mtime differ from their entry (rewritten by a heal), and
    every file when the index is gone (a damaged one is removed by the heal)."""
    from pipeline.artifacts import SamArtifact
    from pipeline.sam import masks as sam_masks
    art = SamArtifact(tmp_path)
    d = art.masks("train")
    d.mkdir(parents=True)

    def write(image_id: str, levels: list[int]) -> None:
        anns = [{"segmentation": {}, "level": lv} for lv in levels]
        (d / f"{image_id}.json").write_text(json.dumps({"image_id": image_id, "height": 1, "width": 1,
                                                        "annotations": anns}))
    for image_id, levels in (("a", [0, 2, 2]), ("b", [1]), ("c", [])):
        write(image_id, levels)
    read, load = [], sam_masks.load_masks_doc
    monkeypatch.setattr(sam_masks, "load_masks_doc", lambda p: read.append(p.stem) or load(p))
    ids = ["a", "b", "c"]
    assert sam_masks.level_counts(art, "train", ids) == {"a": [3, 1, 0, 2], "b": [1, 0, 1, 0], "c": [0, 0, 0, 0]}
    assert sorted(read) == ids
    read.clear()
    (d / "b.json").unlink()
    write("b", [2, 2, 2, 0])  # the heal rewrites b
    assert sam_masks.level_counts(art, "train", ids)["b"] == [4, 1, 0, 3] and read == ["b"]
    art.levels.unlink()
    read.clear()
    assert sam_masks.level_counts(art, "train", ids)["a"] == [3, 1, 0, 2] and sorted(read) == ids
