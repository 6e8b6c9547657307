"""Folder datasets (images + tags), `wsss data check` / `wsss
init-dataset` on them, the COCO JSON export, and configs/folder-smoke.yaml
(the vendored coco-tiny photos as a folder dataset) run stage by stage
through pseudo masks, segmentation training without validation and evaluate."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.pseudo_masks.coco_export import coco_document, decode, export_coco
from pipeline.config import ConfigError, load_config
from pipeline.data.classes import ClassFileError, read_class_file
from pipeline.data.datasets import LabelTable, check_split, read_mask, write_mask

ROOT = Path(__file__).resolve().parents[1]
COCO_TRAIN = ROOT / "data/coco-tiny/images/train2017"


def _cli(*args):
    from flows.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------- class lists
def test_class_list_txt_and_csv(tmp_path):
    (tmp_path / "c.txt").write_text("cat\n\ndog\n")
    cs = read_class_file(tmp_path / "c.txt")
    assert cs.names == ("background", "cat", "dog") and cs.prompts == ("cat", "dog") and not cs.colors
    (tmp_path / "c.csv").write_text("name,prompt,color\ncat,,#ff0000\ntv,television,\n")
    cs = read_class_file(tmp_path / "c.csv")
    assert cs.names == ("background", "cat", "tv") and cs.prompts == ("cat", "television")
    assert tuple(cs.palette()[1]) == (255, 0, 0) and tuple(cs.palette()[2]) != (255, 0, 0)


@pytest.mark.parametrize("text, where, what", [
    ("name\ncat\ncat\n", ":3", "already listed"),
    ("name\nbackground\n", ":2", "implicit"),
    ("name,color\ncat,red\n", ":2", "#rrggbb"),
    ("label\ncat\n", ":1", "'name' column"),
])
def test_class_list_errors_name_file_and_line(tmp_path, text, where, what):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(ClassFileError, match=f"c.csv{where}: .*{what}"):
        read_class_file(tmp_path / "c.csv")


def test_folder_config_needs_classes_and_labels(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: folder, root: {tmp_path}, splits: {{train: {{labels: l.csv}}}}, "
                   "val_split: null}\n")
    with pytest.raises(ConfigError, match="data.classes"):
        load_config(cfg)


# ----------------------------------------------------------------- data check
def _bad_folder(tmp_path: Path) -> Path:
    """Every kind of bad row, one per line of labels.csv."""
    d = tmp_path / "mine"
    (d / "images/sub").mkdir(parents=True)
    jpgs = sorted(COCO_TRAIN.glob("*.jpg"))[:2]
    for j in jpgs:
        shutil.copy(j, d / "images" / j.name)
    shutil.copy(jpgs[0], d / "images/sub" / jpgs[0].name)  # same stem: duplicate id
    (d / "images/broken.jpg").write_bytes(b"not a jpeg")
    (d / "classes.txt").write_text("cat\ndog\nperson\n")
    (d / "labels.csv").write_text(
        "image,labels\n"
        f"{jpgs[0].name},cat;person\n"         # 2 good
        f"{jpgs[1].name},cat;unicorn\n"        # 3 unknown class
        "broken.jpg,dog\n"                     # 4 unreadable image
        f"sub/{jpgs[0].name},dog\n"            # 5 duplicate id
        "missing.jpg,dog\n"                    # 6 image file missing
        f"{jpgs[1].name},\n")                  # 7 no labels
    (d / "cfg.yaml").write_text(f"_base_: {ROOT / 'configs/_base_/semples.yaml'}\n"
                                f"data: {{dataset: folder, root: {d}, classes: classes.txt, val_split: null,\n"
                                "       splits: {train: {images: images, labels: labels.csv}}}\n")
    return d


def test_data_check_reports_each_bad_row_with_file_and_line(tmp_path):
    d = _bad_folder(tmp_path)
    good, problems, _ = check_split(load_config(d / "cfg.yaml").data, "train")
    assert [r.id for r in good] == [sorted(COCO_TRAIN.glob("*.jpg"))[0].stem]
    assert good[0].labels == [1, 3] and good[0].mask is None and good[0].height > 0
    by_line = {p.path.rsplit(":", 1)[1]: p.reason for p in problems}
    assert all(p.path.startswith(str(d / "labels.csv") + ":") for p in problems), problems
    assert set(by_line) == {"3", "4", "5", "6", "7"}, problems
    assert "unknown classes ['unicorn']" in by_line["3"]
    assert "unreadable" in by_line["4"] and "broken.jpg" in by_line["4"]
    assert "duplicate id" in by_line["5"] and "labels.csv:2" in by_line["5"]
    assert "missing" in by_line["6"]
    assert "no labels" in by_line["7"]

    res = _cli("data", "check", "--config", d / "cfg.yaml")
    assert res.exit_code == 1
    assert "5 bad items" in res.output and f"{d / 'labels.csv'}:3" in res.output


def test_init_dataset_writes_a_config_that_checks_clean(tmp_path):
    d = tmp_path / "pets"
    (d / "images").mkdir(parents=True)
    jpgs = sorted(COCO_TRAIN.glob("*.jpg"))[:3]
    for j in jpgs:
        shutil.copy(j, d / "images" / j.name)
    tags = [["dog", "person"], ["dog"], ["cat"]]
    (d / "labels.jsonl").write_text("".join(json.dumps({"image": j.name, "labels": t}) + "\n"
                                            for j, t in zip(jpgs, tags)))
    out = tmp_path / "configs/pets.yaml"
    res = _cli("init-dataset", d, "--out", out)
    assert res.exit_code == 0, res.output
    # beside the config, not in the data folder
    assert (out.parent / "pets.classes.txt").read_text() == "cat\ndog\nperson\n" and not (d / "classes.txt").exists()
    counts = {ln.split()[0]: int(ln.split()[1]) for ln in res.output.splitlines() if ln.startswith("  ")}
    assert counts == {"dog": 2, "cat": 1, "person": 1}
    cfg = load_config(out)
    assert cfg.data.dataset == "folder" and cfg.clip.pretrained == "openai"  # the SemPLeS defaults
    res = _cli("data", "check", "--config", out)
    assert res.exit_code == 0 and "train: 3 images" in res.output, res.output
    assert _cli("init-dataset", d, "--out", out).exit_code == 1  # no silent overwrite


# ----------------------------------------------------------------- COCO export
def test_coco_export_round_trip_and_fields(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.choice([0, 1, 3, 255], size=(37, 51), p=[0.4, 0.3, 0.2, 0.1]).astype(np.uint8)
    b = np.zeros((20, 30), np.uint8)  # background only: an image with no annotation
    c = np.full((9, 7), 255, np.uint8)
    c[2:5, 1:3] = 2
    names = ["background", "cat", "dog", "tv"]
    path = tmp_path / "x.json"
    n = export_coco(path, [("a", "/i/a.jpg", a), ("b", "/i/b.jpg", b), ("c", "/i/c.jpg", c)], names, "t")
    assert n == {"images": 3, "annotations": 3}
    back = decode(path)
    for k, m in (("a", a), ("b", b), ("c", c)):
        assert np.array_equal(back[k], m), k
    doc = json.loads(path.read_text())
    assert [x["id"] for x in doc["categories"]] == [1, 2, 3] and doc["categories"][2]["name"] == "tv"
    ann = next(x for x in doc["annotations"] if x["image_id"] == 3)
    assert ann["category_id"] == 2 and ann["iscrowd"] == 0
    assert ann["area"] == 6 and ann["bbox"] == [1.0, 2.0, 2.0, 3.0]  # x, y, w, h
    assert "uncertain_rle" not in doc["images"][1] and "uncertain_rle" in doc["images"][2]
    with pytest.raises(ValueError, match="image 'z'.*label ids \\[7\\]"):
        coco_document([("z", "/z.jpg", np.full((2, 2), 7, np.uint8))], names, "t")


# ----------------------------------------------------------------- folder-smoke, stage by stage
@pytest.fixture(scope="module")
def folder_run(folder_flow_run):
    """folder-smoke run by `wsss run` (conftest): its config and stage directories."""
    return folder_flow_run["cfg"], folder_flow_run["dirs"]


FLOW_SCRIPT = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs()
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sys.argv[1:])))
        print(json.dumps({"runs": [{"flow": (await client.read_flow(r.flow_id)).name, "state": r.state.name}
                                   for r in runs],
                          "artifacts": [{"key": a.key, "type": a.type, "data": a.data} for a in arts]}))
asyncio.run(main())
"""


@pytest.mark.slow
def test_folder_smoke_runs_through_the_prefect_flow_and_publishes_its_report(folder_flow_run):
    """No GT masks: the flow still completes and publishes what the report has (pixel
    shares, gallery); the IoU columns of the per-class table are empty."""
    import sys

    from stages.runner import select
    from flow_helpers import _run
    report = json.loads((Path(folder_flow_run["dirs"]["evaluate"]) / "report.json").read_text())
    assert "seed" not in report  # the case that failed in publish_report
    wanted = [f"folder-smoke-{n.replace('_', '-')}" for n in select(cfg=folder_flow_run["cfg"])] + [
        "folder-smoke-evaluate-report", "folder-smoke-evaluate-per-class-iou"]
    res = _run([sys.executable, "-c", FLOW_SCRIPT, *wanted], folder_flow_run["env"], 300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert [(r["flow"], r["state"]) for r in got["runs"] if r["flow"] == "wsss"] == [("wsss", "Completed")]
    arts = {a["key"]: a for a in got["artifacts"]}
    assert sorted(arts) == sorted(wanted)
    rows = json.loads(arts["folder-smoke-evaluate-per-class-iou"]["data"])
    shares = report["pseudo_mask_pixel_shares"]
    assert [r["class"] for r in rows] == list(shares)
    for r in rows:
        assert r["seed"] is None and r["pseudo_mask"] is None and r["final_val"] is None, r
        assert r["pixel_share"] == shares[r["class"]], r
    md = arts["folder-smoke-evaluate-report"]["data"]
    assert "No ground-truth masks" in md and "![gallery](data:image/png;base64," in md and "gallery.png" in md


@pytest.mark.slow
def test_folder_smoke_label_table_carries_the_class_list(folder_run):
    cfg, dirs = folder_run
    table = LabelTable.from_artifact(dirs["prepare_data"], "train")
    names = list(table.classes)
    assert len(table) == 32 and names[0] == "background" and len(names) == 77
    assert table.prompt_names[names.index("tv") - 1] == "television"  # the CLIP prompt name
    assert table.prompt_names[names.index("dog") - 1] == "dog"
    assert tuple(table.palette[names.index("person")]) == (0xdc, 0x14, 0x3c)
    rec = table.records[0]  # train.csv line 2: 000000000009.jpg,bowl;broccoli;orange
    assert rec.id == "000000000009" and rec.mask is None
    assert sorted(names[c] for c in rec.labels) == ["bowl", "broccoli", "orange"]


@pytest.mark.slow
def test_folder_smoke_pseudo_masks_coco_json_round_trips(folder_run):
    cfg, dirs = folder_run
    masks = Path(dirs["pseudo_masks"]) / "masks"
    doc = json.loads((Path(dirs["pseudo_masks"]) / "pseudo_masks_coco.json").read_text())
    back = decode(doc)
    assert len(back) == 32
    for image_id, label in back.items():
        assert np.array_equal(label, read_mask(masks / f"{image_id}.png")), image_id
    values = np.concatenate([m.ravel() for m in back.values()])
    assert (values == 255).any() and (values == 0).any() and ((values > 0) & (values < 255)).any()
    names = LabelTable.from_artifact(dirs["prepare_data"], "train").classes
    assert {c["id"]: c["name"] for c in doc["categories"]} == dict(enumerate(names[1:], 1))
    from PIL import Image
    with Image.open(masks / f"{next(iter(back))}.png") as im:
        assert tuple(im.getpalette()[3 * 1:3 * 2]) == (0xdc, 0x14, 0x3c)  # person's colour from classes.csv


@pytest.mark.slow
def test_folder_smoke_segmentation_without_val_gt_and_its_predictions(folder_run):
    cfg, dirs = folder_run
    seg = Path(dirs["train_segmentation"])
    metrics = json.loads((seg / "val_metrics.json").read_text())
    assert metrics["validated"] is False and "no ground-truth" in metrics["reason"]
    assert (seg / "model_final.pth").exists() and (seg / "gallery.png").exists()
    back = decode(seg / "predictions_val_coco.json")
    val = LabelTable.from_artifact(dirs["prepare_data"], "val")
    assert sorted(back) == sorted(val.ids())
    for image_id, label in back.items():
        assert np.array_equal(label, read_mask(seg / "predictions/val" / f"{image_id}.png"))
        assert label.shape == (val[image_id].height, val[image_id].width)


@pytest.mark.slow
def test_folder_smoke_evaluate_without_gt_reports_pixel_shares(folder_run):
    cfg, dirs = folder_run
    report = json.loads((Path(dirs["evaluate"]) / "report.json").read_text())
    assert report["num_images_with_gt"] == 0 and "seed" not in report and "pseudo_mask" not in report
    assert report["final_model"]["available"] is False
    shares = report["pseudo_mask_pixel_shares"]
    assert abs(sum(shares.values()) - 1) < 1e-9 and shares["uncertain (255)"] > 0
    masks = Path(dirs["pseudo_masks"]) / "masks"
    all_px = np.concatenate([read_mask(p).ravel() for p in sorted(masks.glob("*.png"))])
    assert shares["person"] == pytest.approx(float((all_px == 1).mean()))
    assert (Path(dirs["evaluate"]) / "gallery.png").exists()
    assert "No ground-truth masks" in (Path(dirs["evaluate"]) / "report.md").read_text()


@pytest.mark.slow
def test_folder_evaluate_and_validation_use_the_images_with_gt(folder_run, tmp_path):
    """GT for half of the train images (here: their own pseudo masks, so the
    pseudo-mask mIoU on them must be exactly 100): evaluate scores those
    only, and train_segmentation's val list holds those only."""
    from stages.evaluate import STAGE as evaluate
    from stages.runner import run_stage
    from pipeline.segmentation.final import data_lists
    cfg, dirs = folder_run
    masks = Path(dirs["pseudo_masks"]) / "masks"
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    ids = sorted(p.stem for p in masks.glob("*.png"))[::2]
    for i in ids:
        write_mask(gt_dir / f"{i}.png", read_mask(masks / f"{i}.png"))
    split = cfg.data.splits["train"].model_dump() | {"masks": str(gt_dir)}
    gt_cfg = load_config(ROOT / "configs/folder-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs")}, "data": {"splits": {"train": split}, "val_split": "train"},
        "train_segmentation": {"predict_split": None}})
    prep = run_stage(gt_cfg, "prepare_data")
    out = tmp_path / "eval"
    out.mkdir()
    metrics = evaluate.run(gt_cfg, {**dirs, "prepare_data": prep}, out)
    report = json.loads((out / "report.json").read_text())
    assert report["num_images_with_gt"] == metrics["images_with_gt"] == len(ids) == 16
    assert report["pseudo_mask"]["miou"] == pytest.approx(100.0)
    assert 0 <= report["seed"]["miou"] <= 100 and (out / "per_class_iou.png").exists()
    _, val_list, records = data_lists(gt_cfg, {**dirs, "prepare_data": prep}, tmp_path / "seg")
    assert sorted(r.id for r in records) == ids and len(val_list.read_text().splitlines()) == 16


def test_compare_a_report_without_gt_next_to_one_with_gt(tmp_path):
    """Fast check of pipeline/evaluation/compare.py on two stored evaluate artifacts: a folder run without GT
    (pixel shares only) and a VOC-style run: n/a where a figure is missing, classes of both runs."""
    from pipeline.evaluation.compare import compare_table, load_run, save_compare_chart
    shares = {"background": 0.5, "person": 0.25, "tv": 0.125, "uncertain (255)": 0.125}
    common = {"eval_split": "train", "cam_split": "train", "cam_source": "refine",
              "selection": {"uses_ground_truth": False, "note": "last epochs", "train_cam": "last epoch",
                            "match": "last epoch", "refine": "last epoch"}}
    folder = {**common, "num_images": 3, "num_images_with_gt": 0,
              "pseudo_mask_pixel_shares": shares, "final_model": {"available": False, "reason": "no GT"}}
    iou = {"background": 80.0, "aeroplane": 40.0, "person": None}
    voc = {**common, "num_images": 4, "num_images_with_gt": 4,
           "seed": {"bg_threshold": 0.45, "miou": 60.0, "per_class_iou": iou},
           "seed_sweep": {"note": "GT-chosen", "best_threshold": 0.5, "best_miou": 61.0, "curve": {"0.5": 61.0},
                          "at_best": {"miou": 61.0, "per_class_iou": iou}},
           "pseudo_mask": {"miou": 70.0, "per_class_iou": iou},
           "pseudo_mask_pixel_shares": {"background": 0.75, "aeroplane": 0.25, "person": 0.0, "uncertain (255)": 0.0},
           "final_model": {"available": True, "miou": 50.0, "per_class_iou": {"background": 90.0}}}
    runs = []
    for name, rep in (("voc", voc), ("folder", folder)):
        d = tmp_path / name
        d.mkdir()
        (d / "report.json").write_text(json.dumps(rep))
        (d / "manifest.json").write_text("{}")
        runs.append(load_run(name, d))
    table = compare_table(runs)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ")}
    assert rows["seed mIoU (fixed threshold)"] == ["60.00 (t=0.45)", "n/a (no GT)"]
    assert rows["pseudo-mask mIoU"] == ["70.00", "n/a (no GT)"]
    assert rows["final model mIoU (val)"] == ["50.00", "n/a"]
    assert rows["background"] == ["80.00 / 80.00 / 90.00", "n/a / n/a / n/a"]
    assert rows["tv"] == ["n/a / n/a / n/a", "n/a / n/a / n/a"]  # the folder run's class
    assert rows["tv (share)"] == ["n/a", "12.50"] and rows["uncertain (255) (share)"] == ["0.00", "12.50"]
    save_compare_chart(runs, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    # a report with neither GT scores nor pixel shares is not an evaluate report
    (tmp_path / "folder/report.json").write_text(json.dumps({"final_model": folder["final_model"]}))
    with pytest.raises(ValueError, match="pseudo_mask_pixel_shares"):
        load_run("broken", tmp_path / "folder")


def test_init_dataset_finds_its_template_in_an_installed_wheel(tmp_path):
    """Built as a wheel and imported from it with the source tree off sys.path,
    init_dataset still finds its template (package data, importlib.resources)."""
    import subprocess
    import sys
    import zipfile
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside pyproject.toml
    for name in ("pipeline", "stages", "flows"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(wheels)], check=True, capture_output=True)
    wheel = next(wheels.glob("wsss-*.whl"))
    assert "pipeline/data/templates/folder.yaml" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    d = tmp_path / "pets"
    (d / "images").mkdir(parents=True)
    jpg = sorted(COCO_TRAIN.glob("*.jpg"))[0]
    shutil.copy(jpg, d / "images" / jpg.name)
    (d / "labels.csv").write_text(f"image,labels\n{jpg.name},dog\n")
    code = ("import sys, pipeline; from pathlib import Path\n"
            "from pipeline.data.init_dataset import init_dataset\n"
            "from pipeline.config import load_config\n"
            f"assert Path(pipeline.__file__).is_relative_to({str(site)!r}), pipeline.__file__\n"
            f"init_dataset(Path({str(d)!r}), Path('pets.yaml'))\n"
            "print(load_config('pets.yaml').data.dataset)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "folder", res.stderr[-3000:]
