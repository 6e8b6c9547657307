"""Bring your own CAMs / masks: the CAM file formats of other code bases (pipeline/cams/formats/),
their checks (pipeline/cams/importer.py, pipeline/pseudo_masks/imported.py), the import_cams /
import_masks stages and `wsss export-cams` / `wsss export-masks`.

Round trips are exact where the format is float32: the CAM store reads float32 maps (rebuilt from
the grids it holds); weaktr_npy, stacked_npz and fma_npz write them as float32 and the import keeps
float32, so the imported CAMs equal the native ones bit for bit and every pseudo-mask route gives
the same PNGs. clip_es_npy is float16 as CLIP-ES writes it: the import holds the rounded maps."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.artifacts import CamArtifact
from pipeline.cams.store import CamStore
from pipeline.cams.formats import FORMATS, CamFormatError, ClassIndex, read_cam_file, write_cam_file
from pipeline.cams.formats._numpy import load_npy_dict
from pipeline.cams.importer import CamImportError, ImportOptions, import_folder
from pipeline.data.classes import COCO_CATEGORY_IDS, palette
from pipeline.data.datasets import read_mask
from pipeline.pseudo_masks.imported import MaskImportError, import_masks

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips_float16_values_exactly(fmt, tmp_path):
    cams = RNG.random((2, 5, 7)).astype(np.float16)
    coco = ClassIndex(0, tuple(COCO_CATEGORY_IDS))
    for index, labels, n in ((ClassIndex(), [3, 12], 21), (ClassIndex(1), [1, 20], 21), (coco, [12, 80], 81)):
        path = write_cam_file(tmp_path, "img", fmt, cams, labels, index)
        got, classes = read_cam_file(path, fmt, index, n)
        assert classes == labels and got.dtype == np.float32 and np.array_equal(got.astype(np.float16), cams)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "clip_es_npy"])
def test_float32_formats_round_trip_the_float32_store_exactly(fmt, tmp_path):
    cams = RNG.random((2, 5, 7)).astype(np.float32)
    path = write_cam_file(tmp_path, "img", fmt, cams, [3, 12], ClassIndex())
    got, classes = read_cam_file(path, fmt, ClassIndex(), 21)
    assert classes == [3, 12] and got.dtype == np.float32 and np.array_equal(got, cams)


def test_official_class_indices(tmp_path):
    """WeakTr/SemPLeS/MCTformer write cam_dict[cls_ind], cls_ind in range(nb_classes) over the
    foreground classes (0 = aeroplane, label 1); CLIP-ES keys = new_class_names.index (0-based);
    COCO 90-row models: row = category id - 1 (category 13 'stop sign' is label 12)."""
    np.save(tmp_path / "w.npy", {0: np.zeros((2, 2), np.float32), 14: np.ones((2, 2), np.float32)})
    assert read_cam_file(tmp_path / "w.npy", "weaktr_npy", ClassIndex(), 21)[1] == [1, 15]
    np.save(tmp_path / "c.npy", {"keys": np.array([14]), "attn_highres": np.ones((1, 2, 2), np.float16),
                                 "highres": np.zeros((1, 2, 2), np.float16)})
    cams, classes = read_cam_file(tmp_path / "c.npy", "clip_es_npy", ClassIndex(), 21)
    assert classes == [15] and cams.min() == 1  # attn_highres, not highres
    np.save(tmp_path / "k.npy", {12: np.ones((2, 2), np.float32)})
    coco = ClassIndex(0, tuple(COCO_CATEGORY_IDS))
    assert read_cam_file(tmp_path / "k.npy", "weaktr_npy", coco, 81)[1] == [12]
    np.save(tmp_path / "u.npy", {11: np.ones((2, 2), np.float32)})  # category 12: unused by COCO
    with pytest.raises(CamFormatError, match=r"u.npy: class indices \[11\] name no foreground class"):
        read_cam_file(tmp_path / "u.npy", "weaktr_npy", coco, 81)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_only_plain_dicts_of_arrays_are_unpickled(tmp_path):
    marker = tmp_path / "ran"
    evil = _Evil()
    evil.marker = marker
    with open(tmp_path / "evil.npy", "wb") as f:  # an object .npy whose pickle would run a shell command
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(np.empty((), object)))
        f.write(pickle.dumps(evil, protocol=3))
    with pytest.raises(CamFormatError, match=r"evil.npy: not a pickled dict.*refuses to unpickle 'posix.system'"):
        load_npy_dict(tmp_path / "evil.npy")
    assert not marker.exists()
    np.save(tmp_path / "obj.npy", np.array(SimpleNamespace(a=1), dtype=object))  # a pickled non-dict object
    with pytest.raises(CamFormatError, match="obj.npy: not a pickled dict.*refuses to unpickle 'types.Simple"):
        load_npy_dict(tmp_path / "obj.npy")
    np.save(tmp_path / "list.npy", np.array([np.ones(2), np.zeros(2)] + [None], dtype=object))
    with pytest.raises(CamFormatError, match="list.npy: pickled object is a ndarray, not a dict"):
        load_npy_dict(tmp_path / "list.npy")
    np.save(tmp_path / "nested.npy", {0: np.array([{"x": 1}], dtype=object)})
    with pytest.raises(CamFormatError, match="nested.npy: dict entry 0 is a ndarray, not a numeric array"):
        load_npy_dict(tmp_path / "nested.npy")
    np.save(tmp_path / "plain.npy", np.zeros((1, 2, 2)))
    with pytest.raises(CamFormatError, match=r"plain.npy: holds a plain float64 array of shape \(1, 2, 2\)"):
        read_cam_file(tmp_path / "plain.npy", "weaktr_npy", ClassIndex(), 21)
    np.savez(tmp_path / "p.npz", cams=np.array([{"x": 1}], dtype=object), classes=np.array([1]))
    with pytest.raises(CamFormatError, match="p.npz: not an .npz of numeric arrays"):
        read_cam_file(tmp_path / "p.npz", "stacked_npz", ClassIndex(), 21)
    np.save(tmp_path / "clip.npy", {"keys": np.array([0]), "attn_highres": np.ones((1, 2, 2))})
    with pytest.raises(CamFormatError, match="clip.npy: dict keys .* are not class indices.*clip_es_npy"):
        read_cam_file(tmp_path / "clip.npy", "weaktr_npy", ClassIndex(), 21)


# ------------------------------------------------------------------ CAM checks
def _records(n=3, labels=(3, 7), size=(6, 8)):
    return [SimpleNamespace(id=f"im{i}", labels=list(labels), height=size[0], width=size[1]) for i in range(n)]


def _write(folder, recs, fmt="weaktr_npy", edit=None):
    folder.mkdir(exist_ok=True)
    for r in recs:
        cams = RNG.random((len(r.labels), r.height, r.width)).astype(np.float32)
        cams[:, 0, 0] = 0.0
        cams[:, -1, -1] = 1.0
        classes = list(r.labels)
        if edit:
            cams, classes = edit(r, cams, classes)
        d = {c - 1: m for c, m in zip(classes, cams)}
        if fmt == "weaktr_npy":
            np.save(folder / f"{r.id}.npy", d)
        else:
            np.savez(folder / f"{r.id}.npz", cams=cams, classes=np.array(classes))


def _import(tmp_path, folder, recs, **opts):
    store = CamStore(CamArtifact(tmp_path / "out").store("train"), mode="a")
    return import_folder(recs, folder, ImportOptions(opts.pop("fmt", "weaktr_npy"), **opts), store, 21), store


def _only_first(edit):
    return lambda r, c, k: edit(r, c, k) if r.id == "im0" else (c, k)


@pytest.mark.parametrize("edit,match,fix,check", [
    (lambda r, c, k: (np.concatenate([c, c[:1]]), k + [9]), r"im0.npy: classes \[9\] are not among the image's "
     r"labels \[3, 7\]", {"extra_classes": "drop"}, lambda s: s.read("im0")[1] == [3, 7]),
    (lambda r, c, k: (c[:1], k[:1]), r"im0.npy: no CAM for the image's classes \[7\]", {"missing_classes": "zero"},
     lambda s: not s.read("im0")[0][1].any()),
    (lambda r, c, k: (c[:, :4, :5], k), r"im0.npy: CAMs of size 4x5 \(HxW\), the image is 6x8", {"resize": True},
     lambda s: s.read("im0")[0].shape == (2, 6, 8)),
    (lambda r, c, k: (c * 3 - 1, k), r"im0.npy: values in \[-1, 2\], outside \[0, 1\]", {"normalize": True},
     lambda s: s.read("im0")[0].min() == 0 and s.read("im0")[0].max() == 1),
    (lambda r, c, k: (np.where(c > 0.5, np.nan, c), k), r"im0.npy: \d+ non-finite values", None, None),
])
def test_each_cam_check_names_the_file_and_its_switch_fixes_it(tmp_path, edit, match, fix, check):
    recs = _records()
    _write(tmp_path / "cams", recs, edit=_only_first(edit))
    with pytest.raises(CamImportError, match=r"1 of 3 CAM files .* do not fit the dataset") as e:
        _import(tmp_path, tmp_path / "cams", recs)
    assert e.match(match)
    assert not (tmp_path / "out" / "cams_train.zarr").exists()  # a failed import leaves no CAMs
    if fix:
        counts, store = _import(tmp_path, tmp_path / "cams", recs, **fix)
        assert counts["imported"] == 3 and check(CamStore(store.path))


def test_missing_files_and_every_bad_file_are_listed(tmp_path):
    recs = _records(4)
    _write(tmp_path / "cams", recs[:3], edit=lambda r, c, k: (c * 2, k))
    with pytest.raises(CamImportError, match=r"(?s)4 of 4 CAM files .*im3.npy: file missing"):
        _import(tmp_path, tmp_path / "cams", recs)
    with pytest.raises(CamImportError, match="CAM folder not found"):
        _import(tmp_path, tmp_path / "nope", recs)
    with pytest.raises(CamImportError) as e:
        _import(tmp_path, tmp_path / "cams", recs[:3])
    assert all(f"im{i}.npy: values in" in str(e.value) for i in range(3))
    _write(tmp_path / "npz", recs[:1], fmt="stacked_npz", edit=lambda r, c, k: (c, [3, 3]))
    with pytest.raises(CamImportError, match=r"im0.npz: a class appears twice"):
        _import(tmp_path, tmp_path / "npz", recs[:1], fmt="stacked_npz")


# ------------------------------------------------------------------ mask checks
def test_masks_palette_grey_and_rgb_import_and_bad_ones_are_named(tmp_path):
    pal = palette()
    recs = _records(3, size=(4, 5))
    src = tmp_path / "masks"
    src.mkdir()
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4], m[0, 0] = 15, 255
    im = Image.fromarray(m, mode="P")
    im.putpalette([7] * 768)  # a foreign palette: the indices are the class ids
    im.save(src / "im0.png")
    Image.fromarray(m, mode="L").save(src / "im1.png")
    Image.fromarray(pal[m]).save(src / "im2.png")  # RGB painted with the dataset's colours
    import_masks(recs, src, tmp_path / "out", pal, 21)
    for r in recs:
        assert np.array_equal(read_mask(tmp_path / "out" / f"{r.id}.png"), m)
        assert Image.open(tmp_path / "out" / f"{r.id}.png").mode == "P"

    bad = m.copy()
    bad[0, 1] = 21
    Image.fromarray(bad, mode="L").save(src / "im0.png")
    Image.fromarray(np.zeros((3, 5), np.uint8), mode="L").save(src / "im1.png")
    rgb = pal[m]
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(src / "im2.png")
    with pytest.raises(MaskImportError, match="3 of 3 masks") as e:
        import_masks(recs, src, tmp_path / "out2", pal, 21)
    assert e.match(r"im0.png: class ids \[21\] unknown \(0..20 or 255\)")
    assert e.match(r"im1.png: mask of size 3x5 \(HxW\), the image is 4x5")
    assert e.match(r"im2.png: RGB colours \['#010203'\] are not in the dataset's palette")
    assert not (tmp_path / "out2").exists()
    (src / "im2.png").unlink()
    with pytest.raises(MaskImportError, match=r"(?s)3 of 3 masks .*im0.png: class ids.*im2.png: file missing"):
        import_masks(recs, src, tmp_path / "out3", pal, 21)


# ------------------------------------------------------------------ stages, end to end
EXAMPLES = {"weaktr_npy": "voc-weaktr-cams", "clip_es_npy": "voc-clip-es-cams", "stacked_npz": "voc-stacked-cams",
            "fma_npz": "voc-fma-cams"}


def _cfg(tmp_path, name, extra="", example=None):
    """voc-sam-smoke (on top of an example config of configs/examples/ when named) + ``extra``."""
    from pipeline.config import load_config
    f = tmp_path / f"{name}.yaml"
    bases = [str(ROOT / f"configs/examples/{example}.yaml")] if example else []
    f.write_text(f"_base_: {json.dumps(bases + [str(ROOT / 'configs/voc-sam-smoke.yaml')])}\n"
                 f"run: {{work_dir: {tmp_path / 'runs'}, device: cpu, processes: 1}}\n"
                 "pseudo_masks: {extra_methods: [crf, argmax], gallery_size: 1}\n" + extra)
    return load_config(f), f


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """voc-sam-smoke's CAMs (export_cams of a random mask generator standing in for train_cam) and
    its pseudo masks by every CAM route: sam (a tiny random SAM), crf, argmax."""
    from cam_fixtures import fake_refine
    from pipeline.store import Store
    from stages.runner import run_stage, stage_inputs, stage_keys, stage_sections
    tmp = tmp_path_factory.mktemp("native")
    cfg, path = _cfg(tmp, "native", "export_cams: {source: train_cam, gallery_size: 1}\n")
    keys = stage_keys(cfg)
    run_stage(cfg, "prepare_data", keys=keys)
    store, src = Store(cfg.run.work_dir), "train_cam"
    fake_refine(cfg, store.open(keys[src]))
    store.finalize(keys[src], src, stage_sections(cfg, src), {i: keys[i] for i in stage_inputs(cfg, src)}, {}, 0.0)
    dirs = {n: run_stage(cfg, n, keys=keys) for n in ("sam_masks", "export_cams", "pseudo_masks")}
    return SimpleNamespace(tmp=tmp, cfg=cfg, path=path, keys=keys, dirs=dirs)


def _pngs(d: Path) -> dict:
    return {p.name: read_mask(p) for p in sorted(d.glob("*.png"))}


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_cams_imported_give_the_same_cams_and_pseudo_masks_of_every_route(native, fmt):
    """`wsss export-cams` in each format, then a run with export_cams.source: import: no training
    stage (and no CLIP weights), the same CAMs, the same PNGs of every route (sam, crf, argmax)."""
    from typer.testing import CliRunner

    from flows.cli import app
    from stages.runner import hub_weights, run_stage, select, stage_keys
    out = native.tmp / f"export-{fmt}"
    res = CliRunner().invoke(app, ["export-cams", "--config", str(native.path), "--format", fmt, "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg, _ = _cfg(native.tmp, f"import-{fmt}", f"import_cams: {{dir: {out}, format: {fmt}, gallery_size: 1}}\n"
                  "export_cams: {source: import}\nclip: {factory: null, pretrained: openai}\n",
                  example=EXAMPLES.get(fmt))  # a format without an example config: the two lines above
    assert (cfg.export_cams.source, cfg.import_cams.format) == ("import", fmt)
    names = select(cfg=cfg)
    assert names == ["prepare_data", "sam_masks", "import_cams", "pseudo_masks", "train_segmentation", "evaluate"]
    assert hub_weights(cfg, names) == []  # real CLIP configured, none of these stages loads it
    keys = stage_keys(cfg)
    assert keys["sam_masks"] == native.keys["sam_masks"] and keys["pseudo_masks"] != native.keys["pseudo_masks"]
    imported = run_stage(cfg, "import_cams", keys=keys)
    a = CamStore(CamArtifact(native.dirs["export_cams"]).store("train"))
    b = CamStore(CamArtifact(imported).store("train"))
    assert a.ids() == b.ids() and len(a.ids()) == 4
    for i in a.ids():
        (ca, ka), (cb, kb) = a.read(i), b.read(i)
        assert ka == kb and ca.dtype == cb.dtype == np.float32
        if fmt == "clip_es_npy":  # float16 on disk: the import holds the native maps rounded
            assert np.array_equal(cb, ca.astype(np.float16).astype(np.float32))
        else:
            assert np.array_equal(ca, cb)
    if fmt == "clip_es_npy":
        return  # rounded CAMs may move a seed pixel: the float32 formats check the routes
    pm = run_stage(cfg, "pseudo_masks", keys=keys)
    for d in ("masks", "masks_crf", "masks_argmax"):  # masks = the sam route
        ours, theirs = _pngs(native.dirs["pseudo_masks"] / d), _pngs(pm / d)
        assert len(ours) == 4 and ours.keys() == theirs.keys()
        assert all(np.array_equal(ours[k], theirs[k]) for k in ours), d
    assert json.loads((imported / "cam_source.json").read_text())["label"] == f"imported: {out.resolve()}, {fmt}"


def test_evaluate_scores_imported_cams_by_the_same_protocol(native, tmp_path):
    """The same tables as on the pipeline's own CAMs, labelled with the CAM source; replacing a
    file changes the key of import_cams and of everything downstream."""
    from pipeline.evaluation.report import EvalReport
    from stages.evaluate import STAGE as evaluate
    from stages.runner import run_stage, stage_keys
    out = native.tmp / "export-weaktr_npy"
    if not out.exists():
        from pipeline.cams.importer import export_store
        export_store(CamStore(CamArtifact(native.dirs["export_cams"]).store("train")),
                     CamStore(CamArtifact(native.dirs["export_cams"]).store("train")).ids(), "weaktr_npy", out)
    quick = "evaluate: {sweep: [0.4, 0.45, 0.5], gallery_size: 1}\n"
    cfg, _ = _cfg(native.tmp, "import-eval", f"export_cams: {{source: import}}\nimport_cams: {{dir: {out}}}\n" + quick)
    ncfg, _ = _cfg(native.tmp, "native-eval", "export_cams: {source: train_cam}\n" + quick)
    keys = stage_keys(cfg)
    inputs = {"prepare_data": run_stage(cfg, "prepare_data", keys=keys), "train_segmentation": tmp_path / "seg"}
    reports = {}
    for name, c, cams, masks in (
            ("native", ncfg, ("export_cams", native.dirs["export_cams"]), native.dirs["pseudo_masks"]),
            ("import", cfg, ("import_cams", run_stage(cfg, "import_cams", keys=keys)),
             run_stage(cfg, "pseudo_masks", keys=keys))):
        (tmp_path / name).mkdir()
        evaluate.run(c, {**inputs, cams[0]: cams[1], "pseudo_masks": masks}, tmp_path / name)
        reports[name] = EvalReport.load(tmp_path / name / "report.json")
    n, i = reports["native"], reports["import"]
    assert i.cam_source == f"imported: {out.resolve()}, weaktr_npy" and n.cam_source == "train_cam"
    assert i.seed == n.seed and i.seed_sweep == n.seed_sweep and i.pseudo_mask_routes == n.pseudo_mask_routes
    assert i.selection.uses_ground_truth is None
    md = (tmp_path / "import" / "report.md").read_text()
    assert f"CAMs imported: {out.resolve()}, weaktr_npy" in md and "official sweep threshold" in md

    before = stage_keys(cfg)
    f = sorted(out.glob("*.npy"))[0]
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10 ** 9))
    after = stage_keys(cfg)
    # every key downstream of the imported CAMs (ensemble's too, though this config does not run it)
    assert {k for k in before if before[k] != after[k]} == {"import_cams", "export_cams", "pseudo_masks",
                                                             "ensemble", "train_segmentation", "evaluate"}
    full, _ = _cfg(native.tmp, "import-full", f"export_cams: {{source: import}}\nimport_cams: {{dir: {out}, "
                   "hash: full}\n")
    k1 = stage_keys(full)["import_cams"]
    st = f.stat()
    data = np.load(f, allow_pickle=True).item()
    np.save(f, {k: v[::-1].copy() for k, v in data.items()})  # same size, new content, old mtime
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stage_keys(full)["import_cams"] != k1 and stage_keys(cfg)["import_cams"] == after["import_cams"]


def test_imported_masks_train_the_final_model_through_the_flow(native, tmp_path):
    """`wsss export-masks` of the crf route, then `wsss run` (the Prefect flow) with
    import_masks.dir: prepare_data, import_masks, train_segmentation and evaluate only; the
    model trains on exactly those masks and evaluate reports them as the trained route."""
    from typer.testing import CliRunner

    from flows.cli import app
    from pipeline.evaluation.report import EvalReport
    from pipeline.store import Store
    from stages.runner import select, stage_keys
    from test_flow import _env, _run
    masks = tmp_path / "masks"
    res = CliRunner().invoke(app, ["export-masks", "--config", str(native.path), "--out", str(masks),
                                   "--route", "crf"])
    assert res.exit_code == 0, res.output
    assert _pngs(masks).keys() == _pngs(native.dirs["pseudo_masks"] / "masks_crf").keys()
    f = tmp_path / "masks.yaml"
    bases = [str(ROOT / "configs/examples/voc-imported-masks.yaml"), str(ROOT / "configs/voc-smoke.yaml")]
    f.write_text(f"_base_: {json.dumps(bases)}\nrun: {{work_dir: {native.tmp / 'runs'}, device: cpu}}\n"
                 "data: {max_images: 4}\n"
                 f"import_masks: {{dir: {masks}, gallery_size: 1}}\n"
                 "train_segmentation: {iters: 4, val_interval: 4, checkpoint_interval: 4, log_interval: 2, "
                 "gallery_size: 1}\nevaluate: {gallery_size: 1}\n")
    from pipeline.config import load_config
    cfg = load_config(f)
    assert select(cfg=cfg) == ["prepare_data", "import_masks", "train_segmentation", "evaluate"]
    r = _run([sys.executable, "-m", "flows.cli", "run", "--config", str(f)], _env(tmp_path), 900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    store, keys = Store(cfg.run.work_dir), stage_keys(cfg)
    imp, seg, ev = (store.path(keys[n]) for n in ("import_masks", "train_segmentation", "evaluate"))
    ours, theirs = _pngs(imp / "masks"), _pngs(masks)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    trained = [line.split("\t")[1] for line in (seg / "lists/train.txt").read_text().splitlines()]
    assert trained and all(Path(t).parent == (imp / "masks").resolve() for t in trained)
    report = EvalReport.load(ev / "report.json")
    assert report.mask_source == f"imported: {masks.resolve()}" and report.trained_route == "imported"
    assert report.seed is None and report.pseudo_mask is not None and report.final_model.available
    assert report.pseudo_mask.miou > 0
    assert "pseudo mask (imported, trained on)" in (ev / "report.md").read_text()


@pytest.mark.parametrize("name", ["voc-weaktr-cams", "voc-clip-es-cams", "voc-stacked-cams", "voc-fma-cams",
                                  "voc-imported-masks"])
def test_example_configs_load_and_run_no_training(name, tmp_path):
    from pipeline.config import ConfigError, load_config
    from stages.export_cams import STAGE as export_cams
    from stages.runner import select
    cfg = load_config(ROOT / f"configs/examples/{name}.yaml", check_paths=False)
    names = select(cfg=cfg)
    assert not {"train_cam", "match", "learn_prompts", "refine", "export_cams"} & set(names)
    assert ("import_masks" in names) == (name == "voc-imported-masks")
    if name == "voc-imported-masks":
        return
    with pytest.raises(ValueError, match="export_cams.source is 'import': the CAMs are import_cams' artifact"):
        export_cams.run(cfg, {}, tmp_path)
    path = ROOT / f"configs/examples/{name}.yaml"
    with pytest.raises(ConfigError, match="export_cams.source 'import' needs import_cams.dir"):
        load_config(path, overrides={"import_cams": {"dir": None}}, check_paths=False)
    with pytest.raises(ConfigError, match=r"routes \['affinity'\] walk the mask generator's attention"):
        load_config(path, overrides={"pseudo_masks": {"extra_methods": ["affinity"]}}, check_paths=False)
