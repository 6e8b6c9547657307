"""A damaged or partial artifact heals itself: before the resume, the per-image outputs
that fail their manifest entry (or, without a manifest, do not decode) are removed and
recomputed, the rest kept; readers name the file they cannot decode and say what to do.

The flow tests copy the finished voc-sam-smoke store of the session (conftest
sam_smoke_run: sam_masks, export_cams and pseudo_masks on 4 images), damage the copy and
rerun it through `wsss run`; the outputs must equal the undamaged run's exactly: the
stages are deterministic on CPU (fixed seeds, one image per forward: batch_size 1).
"""
from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.cams.store import CamStore, CamStoreError, store_path, verify_array
from pipeline.config import load_config
from pipeline.data.datasets import LabelTable, read_image, read_mask, write_mask
from pipeline.fileio import UnreadableFile, advice, decoding
from pipeline.store import MANIFEST, PerImage, Store
from pipeline.utils import StageError
from stages.runner import run_all
from test_flow import _run

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sam_masks", "export_cams", "pseudo_masks")
LOG_LINE = re.compile(r"wsss: (\w+)(?: \((\w+)\))?: computing \d+ of \d+ images: (.*)$")


def _copy(run: dict, tmp: Path) -> tuple[Path, dict[str, Path]]:
    """The session store copied to tmp (mtimes kept), and a config pointing at it (same keys)."""
    shutil.copytree(run["cfg"].run.work_dir, tmp / "runs", copy_function=shutil.copy2)
    cfg = tmp / "sam.yaml"
    cfg.write_text(f"_base_: {run['cfg_path']}\nrun: {{work_dir: {tmp / 'runs'}}}\n")
    return cfg, {n: tmp / "runs" / d.name for n, d in run["dirs"].items()}


def _ids(run: dict) -> list[str]:
    return LabelTable.from_artifact(run["dirs"]["prepare_data"], "train").ids()


def _chunk(array_dir: Path) -> Path:
    (chunk,) = [p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json"]
    return chunk


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage(dirs: dict[str, Path], ids: list[str]) -> dict[tuple, set]:
    """Truncate one output and delete another in each per-image stage (other images per stage,
    so the log shows each stage redoing its own); returns {(stage, route): ids to recompute}."""
    sam = dirs["sam_masks"] / "masks_train"
    _truncate(sam / f"{ids[0]}.json")
    (sam / f"{ids[1]}.json").unlink()
    cams = store_path(dirs["export_cams"], "train")
    _truncate(_chunk(cams / ids[1]))
    _chunk(cams / ids[2]).unlink()  # a deleted zarr chunk: the array must not read as zeros
    pm = dirs["pseudo_masks"]
    _truncate(pm / "masks" / f"{ids[2]}.png")
    (pm / "masks_crf" / f"{ids[3]}.png").unlink()
    return {("sam_masks", None): {ids[0], ids[1]}, ("export_cams", None): {ids[1], ids[2]},
            ("pseudo_masks", "sam"): {ids[2]}, ("pseudo_masks", "crf"): {ids[3]}}


def _computed(log: str) -> dict[tuple, set]:
    out: dict[tuple, set] = {}
    for line in log.splitlines():
        m = LOG_LINE.search(line)
        if m:
            out.setdefault((m[1], m[2]), set()).update(m[3].split(", "))
    return out


def _outputs(dirs: dict[str, Path], ids: list[str]) -> dict:
    """Every per-image output: file bytes (JSON, PNG), CAM values and classes."""
    out = {}
    for i in ids:
        out["sam", i] = (dirs["sam_masks"] / "masks_train" / f"{i}.json").read_bytes()
        out["png", i] = (dirs["pseudo_masks"] / "masks" / f"{i}.png").read_bytes()
        out["crf", i] = (dirs["pseudo_masks"] / "masks_crf" / f"{i}.png").read_bytes()
        cams, classes = CamStore(store_path(dirs["export_cams"], "train")).read(i)
        out["cams", i] = (cams.tobytes(), cams.shape, classes)  # float16 bytes: value for value
    return out


def _mtimes(dirs: dict[str, Path], redo: dict[tuple, set]) -> dict[Path, int]:
    """mtimes of the per-image outputs not to be recomputed (finalize rewrites the rest)."""
    out = {}
    for n in STAGES:
        skip = set().union(*(ids for (stage, _), ids in redo.items() if stage == n))
        for p in dirs[n].rglob("*"):
            rel = p.relative_to(dirs[n]).parts
            if p.is_file() and len(rel) > 1 and not skip & {Path(rel[1]).stem, rel[1]}:
                out[p] = p.stat().st_mtime_ns
    return out


def _wsss_run(cfg: Path, env: dict, *args) -> str:
    res = _run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg), "--until", "pseudo_masks", *args],
               env, 900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res.stderr


def _check_healed(run, dirs, ids, before_mtimes, expected, log):
    assert _computed(log) == expected, log[-4000:]
    store = Store(dirs["prepare_data"].parent)
    assert all(store.state(dirs[n].name) == "cached" for n in STAGES)
    assert _outputs(dirs, ids) == _outputs(run["dirs"], ids)  # equal to the undamaged run's
    assert before_mtimes and {p: p.stat().st_mtime_ns for p in before_mtimes} == before_mtimes  # kept as they were
    assert not [p for n in STAGES for p in dirs[n].rglob(".*.tmp")]


# ------------------------------------------------------------------ through `wsss run`
def test_damaged_finished_artifacts_heal_through_the_flow(sam_smoke_run, tmp_path):
    """Finished artifacts: one output truncated and one deleted in each per-image stage.
    `wsss status` names the damaged files; `wsss run` (Prefect, shards) recomputes those
    images only and the outputs equal the undamaged run's."""
    run, ids = sam_smoke_run, _ids(sam_smoke_run)
    cfg, dirs = _copy(run, tmp_path)
    expected = _damage(dirs, ids)
    before = _mtimes(dirs, expected)
    galleries = [dirs["sam_masks"] / "sam_gallery.png", dirs["export_cams"] / "cam_gallery.png",
                 dirs["pseudo_masks"] / "pseudo_mask_gallery.png"]
    drawn = {p: p.stat().st_mtime_ns for p in galleries}  # intact: a heal keeps them, no redrawing
    res = CliRunner().invoke(app, ["status", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split()[1] for line in res.output.splitlines()[1:] if line[:1].isalpha()
            and not line.startswith("`")}
    assert {n: rows[n] for n in STAGES} == {n: "corrupt" for n in STAGES}
    for path, why in ((f"masks_train/{ids[0]}.json", "size"), (f"masks_train/{ids[1]}.json", "missing"),
                      (f"cams_train.zarr/{ids[2]}/c/", "missing"), (f"masks/{ids[2]}.png", "size"),
                      (f"masks_crf/{ids[3]}.png", "missing")):
        assert re.search(rf"damaged: \S*{re.escape(path)}\S*: {why}", res.output), (path, res.output)
    assert "--force sam_masks --force export_cams --force pseudo_masks" in res.output

    log = _wsss_run(cfg, run["env"])
    assert "removed 2 files that fail their check" in log
    _check_healed(run, dirs, ids, before, expected, log)
    assert {p: p.stat().st_mtime_ns for p in galleries} == drawn


def test_partial_artifacts_with_cut_outputs_heal_and_force_redoes_all(sam_smoke_run, tmp_path, caplog):
    """Partial artifacts (no manifest, as after a kill) with one output cut short (a kill
    or a full disk mid-write) and one missing in each stage: the resume decodes what it
    keeps and redoes those two (the runner's route, no Prefect). Then forcing pseudo_masks
    (`--force pseudo_masks`) recomputes every image of that stage and nothing else."""
    run, ids = sam_smoke_run, _ids(sam_smoke_run)
    cfg, dirs = _copy(run, tmp_path)
    for n in STAGES:
        (dirs[n] / MANIFEST).unlink()
    expected = _damage(dirs, ids)
    before = _mtimes(dirs, expected)
    log = _wsss_run(cfg, run["env"], "--no-prefect")
    assert all(f"{n}: resuming in" in log for n in STAGES)
    _check_healed(run, dirs, ids, before, expected, log)

    caplog.set_level(logging.INFO, logger="wsss")  # in-process (run_all is what --no-prefect runs): no start-up
    run_all(load_config(cfg), until="pseudo_masks", force=("pseudo_masks",))
    log = "\n".join(f"wsss: {r.getMessage()}" for r in caplog.records)
    assert _computed(log) == {("pseudo_masks", "sam"): set(ids), ("pseudo_masks", "crf"): set(ids)}
    assert _outputs(dirs, ids) == _outputs(run["dirs"], ids)


def test_truncated_input_image_is_named_by_data_check_and_the_run(sam_smoke_run, tmp_path):
    """A truncated JPEG: `wsss data check` and a fresh run (prepare_data) name it; with a
    cached label table, the stage that decodes it (export_cams) names it."""
    from cam_fixtures import fake_refine
    from pipeline.data.datasets import DataError
    from stages.runner import run_stage, stage_inputs, stage_keys, stage_sections
    run, ids = sam_smoke_run, _ids(sam_smoke_run)
    shutil.copytree(run["tmp"] / "voc", tmp_path / "voc")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(f"_base_: {run['cfg_path']}\nrun: {{work_dir: {tmp_path / 'runs'}}}\n"
                        f"data: {{root: {tmp_path / 'voc'}}}\n")
    cfg = load_config(cfg_path)
    keys = stage_keys(cfg)
    prepared = run_stage(cfg, "prepare_data", keys=keys)  # while the image is good
    image = tmp_path / "voc" / "JPEGImages" / f"{ids[1]}.jpg"
    _truncate(image)

    res = CliRunner().invoke(app, ["data", "check", "--config", str(cfg_path)])
    assert res.exit_code == 1 and f"{image}: unreadable or truncated image" in res.output, res.output
    assert "wsss fetch voc" in res.output

    fresh = load_config(cfg_path, overrides={"run": {"work_dir": str(tmp_path / "runs-fresh")}})
    with pytest.raises(StageError, match=re.escape(f"{image}: unreadable or truncated image")) as e:
        run_all(fresh, until="prepare_data")  # what `wsss run` runs
    assert isinstance(e.value.__cause__, DataError)

    store, src = Store(cfg.run.work_dir), cfg.export_cams.source
    fake_refine(cfg, store.open(keys[src]))
    store.finalize(keys[src], src, stage_sections(cfg, src), {i: keys[i] for i in stage_inputs(cfg, src)}, {}, 0.0)
    assert Store(cfg.run.work_dir).state(prepared.name) == "cached"
    with pytest.raises(StageError, match=re.escape(f"{image}: cannot read this image")) as e:
        run_stage(cfg, "export_cams", keys=keys)
    assert isinstance(e.value.__cause__, UnreadableFile) and "wsss fetch voc" in str(e.value)


# ------------------------------------------------------------------ the pieces
def test_heal_removes_what_fails_and_keeps_what_passes(tmp_path):
    """Store.heal on a finished artifact: files failing the manifest go with the rest of their
    image's output (a zarr array's metadata too); a damaged file outside any per-image output
    goes alone; files that pass stay. Without a manifest every output is decoded."""
    store = Store(tmp_path)
    key = "export_cams-0123456789abcdef"
    out = store.open(key)
    cams = CamStore(store_path(out, "train"), mode="a")
    for i in ("a", "b", "c"):
        cams.write(i, np.full((1, 4, 5), 0.5, np.float32), [3], (4, 5))
    cams.write("z", np.zeros((1, 4, 5), np.float32), [3], (4, 5))  # all zeros: its chunk is stored too
    (out / "masks").mkdir()
    for i in ("a", "b"):
        write_mask(out / "masks" / f"{i}.png", np.ones((4, 5), np.uint8))
    (out / "gallery.png").write_bytes(b"x" * 10)
    store.finalize(key, "export_cams", {}, {}, {}, 0.0)
    layouts = (PerImage("cams_train.zarr", "", verify_array, is_dir=True), PerImage("masks", ".png", read_mask))
    assert layouts[0].unit_of("cams_train.zarr/a/c/0/0/0") == "cams_train.zarr/a"
    assert layouts[0].unit_of("cams_train.zarr/zarr.json") is None
    assert layouts[1].unit_of("masks/a.png") == "masks/a.png" and layouts[1].unit_of("masks/x/a.png") is None
    nested = PerImage("masks/val", ".png", read_mask)  # COCO's rendered masks, predictions/<split>
    assert nested.unit_of("masks/val/a.png") == "masks/val/a.png" and nested.unit_of("masks/a.png") is None

    _chunk(out / "cams_train.zarr" / "a").unlink()
    assert not cams.is_complete("a") and cams.missing(["a", "b", "z"]) == ["a"]
    with pytest.raises(CamStoreError, match="incomplete CAM array"):  # never zeros
        cams.read("a")
    _truncate(out / "masks" / "b.png")
    (out / "gallery.png").write_bytes(b"y" * 10)
    kept = {p: p.stat().st_mtime_ns for p in (out / "masks" / "a.png", _chunk(out / "cams_train.zarr" / "b"))}
    removed = store.heal(key, layouts)
    assert sorted(r.split(":")[0] for r in removed) == ["cams_train.zarr/a/c/0/0/0", "gallery.png", "masks/b.png"]
    assert not (out / "cams_train.zarr" / "a").exists() and not (out / "masks" / "b.png").exists()
    assert not (out / "gallery.png").exists()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert CamStore(store_path(out, "train")).ids() == ["b", "c", "z"]

    store.open(key)  # partial now: decode what is there
    _truncate(_chunk(out / "cams_train.zarr" / "c"))
    (out / "masks" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    removed = store.heal(key, layouts)
    assert sorted(r.split(":")[0] for r in removed) == ["cams_train.zarr/c", "masks/a.png"]
    assert "RuntimeError" in removed[0] or "UnreadableFile" in removed[0]
    assert CamStore(store_path(out, "train")).ids() == ["b", "z"]


def test_readers_name_the_file_and_say_what_to_do(tmp_path):
    art = tmp_path / "pseudo_masks-0123456789abcdef" / "masks"
    art.mkdir(parents=True)
    write_mask(art / "a.png", np.zeros((3, 3), np.uint8))
    _truncate(art / "a.png")
    with pytest.raises(UnreadableFile) as e:
        read_mask(art / "a.png")
    msg = str(e.value)
    assert msg.startswith(f"{art / 'a.png'}: cannot read this label PNG") and "`wsss run --force pseudo_masks`" in msg
    jpg = tmp_path / "x.jpg"
    shutil.copy(sorted((ROOT / "data/voc-tiny/JPEGImages").glob("*.jpg"))[0], jpg)
    _truncate(jpg)
    with pytest.raises(UnreadableFile, match=re.escape(f"{jpg}: cannot read this image")) as e:
        read_image(jpg)
    assert "wsss fetch voc" in str(e.value)
    (tmp_path / "m.json").write_text('{"image_id": "a", "hei')
    from pipeline.sam.files import read_masks_json
    with pytest.raises(UnreadableFile, match="cannot read this SAM masks file"):
        read_masks_json(tmp_path / "m.json")
    from pipeline.models.mask_generator import load_mask_generator
    (art.parent / "model.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(UnreadableFile, match="cannot read this mask generator checkpoint") as e:
        load_mask_generator(art.parent / "model.pt")
    assert "--force pseudo_masks" in str(e.value)
    with pytest.raises(FileNotFoundError):  # a missing file stays what it is
        with decoding(tmp_path / "nope", "thing"):
            open(tmp_path / "nope")
    assert "wsss fetch" in advice(tmp_path / "data" / "x.png")


def test_unreadable_manifest_is_corrupt_and_healed_by_decoding(tmp_path):
    store = Store(tmp_path)
    key = "sam_masks-0123456789abcdef"
    out = store.open(key)
    (out / "masks_train").mkdir()
    (out / "masks_train" / "a.json").write_text('{"image_id": "a", "height": 2, "width": 2, "annotations": []}')
    (out / "masks_train" / "b.json").write_text('{"image_id": "b", "hei')
    (out / MANIFEST).write_text('{"key": "sam')
    assert store.state(key) == "corrupt" and "cannot read this artifact manifest" in store.problems(key)[0]
    from pipeline.sam.files import load_masks_doc
    removed = store.heal(key, (PerImage("masks_train", ".json", load_masks_doc),))
    assert [r.split(":")[0] for r in removed] == ["masks_train/b.json"]
    assert (out / "masks_train" / "a.json").exists()


def test_missing_dataset_root_says_how_to_get_it(tmp_path):
    from pipeline.config import ConfigError
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\ndata: {{root: {tmp_path / 'nope'}}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "data.root" in str(e.value) and "wsss fetch voc --config" in str(e.value)
    assert "data.fetch: true" in str(e.value)
    res = CliRunner().invoke(app, ["data", "check", "--config", str(cfg)])
    assert res.exit_code == 2 and "wsss fetch voc" in res.output
    from pipeline.data.datasets import check_split
    data = load_config(cfg, check_paths=False).data
    _, problems, _ = check_split(data, "train")
    assert "data set root not found" in str(problems[0]) and "data.fetch: true" in str(problems[0])
