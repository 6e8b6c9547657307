"""The registries of what researchers add (pipeline/registry.py, below the config): pseudo-mask routes
(pipeline/pseudo_masks/routes/) and CAM formats (pipeline/cams/formats/) are found by
discovering their packages, their parameters join the config sections, and what reads them
(the config, the stage, the protocol card, the import) reads the records, not names."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import Field

from pipeline.cams import formats
from pipeline.cams.formats import CamFormat, CamFormatError, ClassIndex, read_cam_file
from pipeline.config import ImportCamsCfg, PseudoMasksCfg
from pipeline.registry import FORMAT_NAMES, ROUTE_NAMES, ROUTES, Route, check_not_shadowed, discover, joined_fields
from pipeline.section import Section

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_records_and_the_fields_they_bring():
    assert set(ROUTE_NAMES) == {"argmax", "crf", "affinity", "affinity_crf", "sam"}
    assert {n for n, r in ROUTES.items() if r.attention} == {"affinity", "affinity_crf"}
    assert ROUTES["sam"].inputs == ("sam_masks",)
    assert {"crf", "affinity", "sam_p"} <= set(PseudoMasksCfg.model_fields)  # the routes' parameters
    assert set(FORMAT_NAMES) == {"weaktr_npy", "clip_es_npy", "stacked_npz", "fma_npz"}
    assert "clip_es_key" in ImportCamsCfg.model_fields  # clip_es_npy's option
    with pytest.raises(ValueError, match="pseudo_masks.method|method"):
        PseudoMasksCfg(method="nope")


def _package(tmp_path, name, modules: dict) -> tuple[str, list[str]]:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for mod, text in modules.items():
        (pkg / f"{mod}.py").write_text(text)
    sys.path.insert(0, str(tmp_path))
    return name, [str(pkg)]


def test_discovery_finds_every_module_and_refuses_a_silent_or_a_double_one(tmp_path):
    rec = "from types import SimpleNamespace as R\n"
    name, path = _package(tmp_path, "reg_ok", {"b": rec + "ROUTES = (R(name='y'), R(name='z'))",
                                               "a": rec + "ROUTE = R(name='x')", "_helper": "X = 1"})
    try:
        assert list(discover(name, path, "ROUTE", "ROUTES")) == ["x", "y", "z"]
        name, path = _package(tmp_path, "reg_silent", {"a": "X = 1"})
        with pytest.raises(ImportError, match="a.py: declares neither ROUTE nor ROUTES"):
            discover(name, path, "ROUTE", "ROUTES")
        name, path = _package(tmp_path, "reg_twice", {"a": rec + "ROUTE = R(name='x')",
                                                      "b": rec + "ROUTE = R(name='x')"})
        with pytest.raises(ImportError, match="'x' is declared twice"):
            discover(name, path, "ROUTE", "ROUTES")
    finally:
        sys.path.remove(str(tmp_path))


def test_a_field_declared_twice_or_shadowed_is_refused():
    class A(Section):
        t: float = 0.5

    class B(Section):
        t: float = Field(0.7)

    assert joined_fields([A, A], "pseudo_masks") == (A,)
    with pytest.raises(ImportError, match="pseudo_masks.t is declared by both"):
        joined_fields([A, B], "pseudo_masks")

    class Own(A, Section):
        t: float = 0.1

    with pytest.raises(ImportError, match=r"record parameters \['t'\]"):
        check_not_shadowed(Own, [A])


def test_the_protocol_card_prints_each_routes_own_words():
    from pipeline.evaluation.protocol import route_words
    pm = PseudoMasksCfg().model_dump()
    assert route_words("crf", pm, {}).startswith("background threshold 0.43; dense CRF iterations 10")
    sam = route_words("sam", pm, {"sam_masks": {"sam": {"model_type": "vit_h", "tiny": True}}})
    assert sam.startswith("SAM vit_h (tiny random)") and "** 0.7" in sam
    assert route_words("gone", pm, {}) == "gone"  # a report of a route since removed


def test_the_stage_refuses_a_mask_that_is_no_label_map_of_the_image(monkeypatch, tmp_path):
    from pipeline.pseudo_masks import make
    image = ROOT / "data/voc-tiny/JPEGImages/000000000081.jpg"
    h, w = np.asarray(__import__("PIL.Image").Image.open(image)).shape[:2]
    store = SimpleNamespace(read=lambda i: (np.zeros((1, h, w), np.float16), [1]))
    for bad in (np.zeros((h, w), np.int64), np.zeros((h + 1, w), np.uint8)):
        monkeypatch.setattr(make, "_W", {"store": store, "setup": None, "dir": tmp_path, "pal": None,
                                         "cfg": PseudoMasksCfg(method="argmax"), "route_mask": lambda *a: bad})
        with pytest.raises(RuntimeError, match=r"image '81': route 'argmax' returned .* not a \d+x\d+ uint8"):
            make._work(make.Job("81", str(image)))
    assert not list(tmp_path.iterdir())


def test_a_readers_own_failure_names_the_file_and_the_format(monkeypatch, tmp_path):
    def read(path):
        Path(path).read_bytes()
        raise RuntimeError("unexpected EOF")
    monkeypatch.setitem(formats.FORMATS, "toy", CamFormat("toy", ".toy", read, None, "a toy"))
    (tmp_path / "a.toy").write_bytes(b"x")
    with pytest.raises(CamFormatError, match=r"a.toy: not a toy file \(RuntimeError: unexpected EOF\)"):
        read_cam_file(tmp_path / "a.toy", "toy", ClassIndex(), 21)
    with pytest.raises(CamFormatError, match="b.toy: file missing"):
        read_cam_file(tmp_path / "b.toy", "toy", ClassIndex(), 21)
    with pytest.raises(KeyError, match="unknown CAM format 'nope'; known: "):
        read_cam_file(tmp_path / "a.toy", "nope", ClassIndex(), 21)


def test_discovering_the_records_imports_no_torch():
    code = ("import sys, pipeline.config, pipeline.pseudo_masks.routes, pipeline.cams.formats; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("first", ["pipeline.pseudo_masks.routes.affinity", "pipeline.cams.formats.clip_es_npy",
                                   "pipeline.cams.formats._numpy", "pipeline.pseudo_masks.make"])
def test_a_record_module_imported_first_finds_its_record_type(first):
    """The registry discovers the record modules while it loads: whichever module a process
    imports first (a pool worker may start from a route module), every record is found."""
    code = (f"import {first}, pipeline.registry as r, pipeline.pseudo_masks.routes as p; "
            "assert len(r.ROUTES) == 5 and len(r.FORMATS) == 4 and p.ROUTES is r.ROUTES")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert res.returncode == 0, res.stderr[-2000:]


def test_the_records_are_the_only_place_a_route_or_format_is_named():
    """No module outside a record's own tests its name (the old `startswith("affinity")`,
    `method == "crf"` and if/elif chains over formats)."""
    names = [*ROUTE_NAMES, *FORMAT_NAMES]
    offenders = []
    for path in [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("flows/*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("pipeline/pseudo_masks/routes/", "pipeline/cams/formats/")):
            continue
        text = path.read_text()
        offenders += [f"{rel}: {n}" for n in names
                      if f'== "{n}"' in text or f'startswith("{n}' in text or f'"{n}" in ' in text]
    assert not offenders
