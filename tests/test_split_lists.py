"""Split lists and labels files whose lines cannot name an image of the data set: an id listed
twice, a path that leaves the data root. `wsss data check` and prepare_data refuse them, naming
the file, the line number and the line (issue #35, item 3)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.config import load_config
from pipeline.data.datasets import check_split
from pipeline.data.split_lists import voc_id

ROOT = Path(__file__).resolve().parents[1]
COCO_TRAIN = ROOT / "data/coco-tiny/images/train2017"


def _cli(*args):
    from flows.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


def test_voc_ids_are_bare_or_sbd_lines():
    assert voc_id("2007_000032") == "2007_000032" and voc_id("/JPEGImages/2007_000032.jpg") == "2007_000032"
    for bad in ("../000000000042", "../../secret/img1", "/etc/passwd", "sub/x", "..", ".", "/JPEGImages/../x.jpg"):
        assert voc_id(bad) is None, bad


def _voc_with_bad_lines(tmp_path: Path) -> tuple[Path, Path, dict[int, str]]:
    """A voc-tiny copy whose train list gets bad lines after its good ones; (config, list, {line: text})."""
    root = tmp_path / "voc"
    shutil.copytree(ROOT / "data/voc-tiny", root)
    lst = root / "ImageSets/Segmentation/train.txt"
    lines = lst.read_text().splitlines()
    bad = ["../000000000042", lines[0], "/etc/passwd", "../../secret/img1"]
    lst.write_text("\n".join(lines + bad) + "\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\nrun: {{work_dir: {tmp_path / 'runs'}}}\n"
                   f"data: {{root: {root}}}\n")
    return cfg, lst, {len(lines) + 1 + k: text for k, text in enumerate(bad)}


def test_data_check_names_each_duplicate_and_escaping_line(tmp_path):
    cfg, lst, bad = _voc_with_bad_lines(tmp_path)
    res = _cli("data", "check", "--config", cfg)
    assert res.exit_code == 1, res.output
    flagged = [ln for ln in res.output.splitlines() if ln.startswith("  BAD ")]
    assert len(flagged) == len(bad) and "4 bad items" in res.output, res.output
    for (n, text), line in zip(bad.items(), flagged):
        assert line.startswith(f"  BAD {lst}:{n}: '{text}'"), line
    assert "duplicate id '000000000030' (first at" in flagged[1] and flagged[1].endswith(f"{lst}:1)")
    assert all("not an image id" in ln for ln in flagged[:1] + flagged[2:])


def test_prepare_data_refuses_duplicate_and_escaping_lines(tmp_path):
    from stages.runner import run_stage
    cfg, lst, bad = _voc_with_bad_lines(tmp_path)
    with pytest.raises(Exception) as err:
        run_stage(load_config(cfg), "prepare_data")
    msg = str(err.value) + str(err.value.__cause__)
    assert "4 bad items" in msg, msg
    for n, text in bad.items():
        assert f"{lst}:{n}: '{text}'" in msg


def test_folder_labels_refuse_paths_out_of_the_image_folder(tmp_path):
    d = tmp_path / "mine"
    (d / "images/sub").mkdir(parents=True)
    jpg = sorted(COCO_TRAIN.glob("*.jpg"))[0]
    shutil.copy(jpg, d / "images/sub" / jpg.name)
    shutil.copy(jpg, d / "outside.jpg")
    (d / "classes.txt").write_text("cat\ndog\n")
    (d / "labels.csv").write_text(f"image,labels\nsub/{jpg.name},cat\nsub/../sub/{jpg.name},dog\n"
                                  f"../outside.jpg,cat\n{d / 'outside.jpg'},cat\n")
    (d / "cfg.yaml").write_text(f"_base_: {ROOT / 'configs/_base_/semples.yaml'}\n"
                                f"data: {{dataset: folder, root: {d}, classes: classes.txt, val_split: null,\n"
                                "       splits: {train: {images: images, labels: labels.csv}}}\n")
    good, problems, _ = check_split(load_config(d / "cfg.yaml").data, "train")
    assert [r.id for r in good] == [jpg.stem]
    by_line = {p.path.rsplit(":", 1)[1]: p.reason for p in problems}
    assert set(by_line) == {"3", "4", "5"}, problems
    assert "duplicate id" in by_line["3"]  # sub/../sub/x.jpg stays in images/: the same image
    assert all("leaves the split's image folder" in by_line[n] for n in "45")
