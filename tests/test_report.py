"""The typed evaluate report (pipeline/evaluation/report.py) as evaluate writes it and as
the flow (the evaluate record's publish hook) and `wsss compare` read it, with and without
ground truth: a split without GT masks (a folder dataset) has no seed or
pseudo-mask scores, and readers show what the report has (n/a otherwise)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cam_fixtures import gt_store
from flows.cli import app
from pipeline.evaluation.compare import CompareError, load_run
from pipeline.config import load_config
from pipeline.data.datasets import LabelTable, read_mask, write_mask
from pipeline.evaluation.report import REPORT, EvalReport, Scores, report_markdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real evaluate artifacts of the smoke data: 'gt' (CAMs = one-hot GT, pseudo masks
    with a band of background / uncertain / class 5 painted over, a final model's val
    result) and 'nogt' (the same without any GT mask, as a folder dataset)."""
    from stages.evaluate import STAGE as evaluate
    from stages.runner import run_stage
    tmp = tmp_path_factory.mktemp("report")
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={"run": {"work_dir": str(tmp / "runs")},
                                                                   "evaluate": {"gallery_size": 2}})
    prepared = run_stage(cfg, "prepare_data")
    export, pm, seg = tmp / "export", tmp / "pm", tmp / "seg"
    ids = gt_store(prepared, "train", export)
    table = LabelTable.from_artifact(prepared, "train")
    (pm / "masks").mkdir(parents=True)
    seg.mkdir()
    for k, i in enumerate(ids):
        m = read_mask(table[i].mask).copy()
        m[: m.shape[0] // (2 + k % 3)] = (0, 255, 5)[k % 3]
        write_mask(pm / "masks" / f"{i}.png", m)
    (seg / "val_metrics.json").write_text(json.dumps({"miou": 12.5, "per_class_iou": {"background": 70.0}}))
    nogt = tmp / "prepared_nogt"
    shutil.copytree(prepared, nogt)
    doc = json.loads((nogt / "labels_train.json").read_text())
    for r in doc["records"]:
        r["mask"] = None
    (nogt / "labels_train.json").write_text(json.dumps(doc))
    dirs = {}
    for name, prep in (("gt", prepared), ("nogt", nogt)):
        out = dirs[name] = tmp / name
        out.mkdir()
        evaluate.run(cfg, {"prepare_data": prep, "export_cams": export, "pseudo_masks": pm,
                           "train_segmentation": seg}, out)
        (out / "manifest.json").write_text("{}")  # what marks a finished artifact for compare
    return cfg, dirs


def test_report_json_loads_and_writes_back_unchanged(runs, tmp_path):
    _, dirs = runs
    for d in dirs.values():
        raw = json.loads((d / REPORT).read_text())
        EvalReport.load(d / REPORT).save(tmp_path / REPORT)
        assert json.loads((tmp_path / REPORT).read_text()) == raw
    nogt = json.loads((dirs["nogt"] / REPORT).read_text())
    assert not {"seed", "seed_sweep", "pseudo_mask", "pseudo_mask_routes"} & set(nogt)
    assert nogt["final_model"]["miou"] == 12.5
    # an older or newer report keeps the keys this code does not know
    raw = json.loads((dirs["gt"] / REPORT).read_text())
    raw["seed"]["added_later"] = [1, None]
    (tmp_path / "r.json").write_text(json.dumps(raw))
    EvalReport.load(tmp_path / "r.json").save(tmp_path / "back.json")
    assert json.loads((tmp_path / "back.json").read_text()) == raw


def test_a_damaged_report_is_an_error_naming_file_and_field(runs, tmp_path):
    _, dirs = runs
    bad = tmp_path / "bad"
    shutil.copytree(dirs["gt"], bad)
    raw = json.loads((bad / REPORT).read_text())
    del raw["selection"]
    (bad / REPORT).write_text(json.dumps(raw))
    with pytest.raises(CompareError, match=r"mine: .*bad/report.json: not an evaluate report "
                                           r"\(selection: Field required\)"):
        load_run("mine", bad)


def test_compare_shows_what_each_report_has(runs, tmp_path):
    _, dirs = runs
    gt = EvalReport.load(dirs["gt"] / REPORT)
    png = tmp_path / "c.png"
    res = CliRunner().invoke(app, ["compare", str(dirs["gt"]), str(dirs["nogt"]), "--png", str(png)])
    assert res.exit_code == 0, res.output
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in res.output.splitlines() if line.startswith("| ")}
    assert rows["images with ground truth"] == ["70", "0"]
    assert rows["seed mIoU (fixed threshold)"] == [f"{gt.seed.miou:.2f} (t={gt.seed.bg_threshold})", "n/a (no GT)"]
    assert rows["pseudo-mask mIoU"] == [f"{gt.pseudo_mask.miou:.2f}", "n/a (no GT)"]
    assert rows["final model mIoU (val)"] == ["12.50", "12.50"]
    assert rows["background"] == [f"100.00 / {gt.pseudo_mask.per_class_iou['background']:.2f} / 70.00",
                                  "n/a / n/a / 70.00"]
    assert rows["aeroplane"][1] == "n/a / n/a / n/a"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_publish_report_with_and_without_ground_truth(runs, monkeypatch):
    """The Prefect calls are recorded instead of sent (no server here); what the evaluate
    record's publish hook hands them comes from the report."""
    import flows.dag as dag
    from stages import get
    cfg, dirs = runs
    sent = {}
    monkeypatch.setattr(dag, "create_markdown_artifact", lambda md, key, description: sent.update({key: md}))
    monkeypatch.setattr(dag, "create_table_artifact", lambda rows, key, description: sent.update({key: rows}))
    for name, d in dirs.items():
        sent.clear()
        dag.create_artifacts(get("evaluate").publish(d), cfg.run.name, "evaluate")
        report = EvalReport.load(d / REPORT)
        rows = sent["voc-smoke-evaluate-per-class-iou"]
        assert all(r["pixel_share"] == report.pseudo_mask_pixel_shares[r["class"]] for r in rows)
        assert rows[0]["final_val"] == 70.0
        md = sent["voc-smoke-evaluate-report"]
        assert "![gallery](data:image/png;base64," in md
        if name == "gt":
            assert [r["class"] for r in rows] == list(report.seed.per_class_iou)
            assert [r["seed"] for r in rows] == list(report.seed.per_class_iou.values())
            assert "![per-class IoU](data:image/png;base64," in md
        else:  # the pixel shares, the uncertain pixels too
            assert [r["class"] for r in rows] == list(report.pseudo_mask_pixel_shares)
            assert all(r["seed"] is None and r["pseudo_mask"] is None for r in rows)
            assert "No ground-truth masks" in md and "per-class IoU chart" not in md.lower()


def test_markdown_lists_pseudo_mask_routes_and_the_official_threshold(runs):
    _, dirs = runs
    r = EvalReport.load(dirs["gt"] / REPORT)
    r.pseudo_mask_routes = {"crf": r.pseudo_mask, "sam": Scores(miou=50.0, per_class_iou={}, fg_precision=60.0,
                                                                 fg_recall=70.0)}
    r.seed_sweep.official_threshold, r.seed_sweep.official_miou = 0.42, 99.0
    md = report_markdown(r)
    assert "| pseudo mask (sam) | train | 50.00 | 60.00 | 70.00 |" in md
    assert "| seed, official sweep threshold 0.42 (stops at the first non-improving threshold; uses GT) | train | 99.00 | | |" in md


def test_markdown_and_metrics_report_each_ensemble_model_and_the_blend(runs, tmp_path):
    from pipeline.evaluation.report import EnsembleScores
    from pipeline.evaluation.evaluate import _ensemble, _metrics
    _, dirs = runs
    ens = tmp_path / "ensemble"
    ens.mkdir()
    (ens / "val_metrics.json").write_text(json.dumps({
        "miou": 61.25, "per_class_iou": {"background": 80.0}, "label": "ensemble of 2 mask2former models",
        "weights": [0.85, 0.15], "members": {"train_segmentation (sam)": {"miou": 60.0},
                                             "ensemble member (crf)": {"miou": 55.5}}}))
    e = _ensemble({"ensemble": ens})
    assert isinstance(e, EnsembleScores) and e.members == {"train_segmentation (sam)": 60.0,
                                                           "ensemble member (crf)": 55.5}
    assert _ensemble({}) is None
    r = EvalReport.load(dirs["gt"] / REPORT)
    r.ensemble = e
    md = report_markdown(r)
    assert "| train_segmentation (sam) alone (ensemble stage's scoring) | val | 60.00 | | |" in md
    assert "| ensemble member (crf) alone (ensemble stage's scoring) | val | 55.50 | | |" in md
    assert "| ensemble of 2 mask2former models | val | 61.25 | | |" in md
    assert _metrics(r)["ensemble_val_miou"] == 61.25
    assert EvalReport.model_validate_json(r.model_dump_json()).ensemble == e  # report.json round trip
    (ens / "val_metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="not an ensemble val_metrics.json"):
        _ensemble({"ensemble": ens})


def test_protocol_card_and_per_class_precision_recall_in_the_report(runs):
    """Every report carries its protocol card and per-class precision/recall beside IoU; the
    smoke fixture has no input manifests, so the card says what it cannot know as '?'."""
    cfg, dirs = runs
    r = EvalReport.load(dirs["gt"] / REPORT)
    card = r.protocol
    assert (card.eval_split, card.num_images_with_gt, card.subset) == ("train", 70, "full split")
    assert "fixed background threshold 0.43" in card.seed_threshold and "0.4..0.59 step 0.01" in card.sweep
    assert "crf" in card.pseudo_mask_routes and "255" in card.ignore_255
    assert any("seed sweep" in g for g in card.ground_truth_chose)
    for part in (r.seed, r.pseudo_mask):
        assert set(part.per_class_precision) == set(part.per_class_recall) == set(part.per_class_iou)
    assert r.seed.per_class_precision["background"] == 100.0  # CAMs = one-hot GT
    md = report_markdown(r)
    assert md.index("## Protocol") < md.index("| what | split | mIoU")
    assert "## Per-class IoU / precision / recall" in md
    bg = r.pseudo_mask
    assert (f"| background | 100.00 / 100.00 / 100.00 | 100.00 / 100.00 / 100.00 | {bg.per_class_iou['background']:.2f}"
            f" / {bg.per_class_precision['background']:.2f} / {bg.per_class_recall['background']:.2f} |") in md


def test_compare_shows_the_spread_of_a_multi_seed_run(runs, tmp_path):
    """A spread artifact (two 'seeds': the GT report and a copy with other numbers) in `wsss compare`:
    mean ± sample std of the two, per-class means."""
    from pipeline.artifacts import SpreadArtifact
    from pipeline.evaluation.spread import spread
    _, dirs = runs
    a = EvalReport.load(dirs["gt"] / REPORT)
    other = tmp_path / "seed1"
    shutil.copytree(dirs["gt"], other)
    b = EvalReport.load(other / REPORT)
    b.pseudo_mask.miou += 4.0
    b.pseudo_mask_routes["crf"].miou += 4.0
    b.pseudo_mask_routes["crf"].per_class_iou["background"] -= 2.0
    b.save(other / REPORT)
    sp_dir = tmp_path / "spread"
    sp_dir.mkdir()
    spread({0: a, 1: b}, {0: dirs["gt"], 1: other}).save(SpreadArtifact(sp_dir).report)
    (sp_dir / "manifest.json").write_text("{}")
    res = CliRunner().invoke(app, ["compare", str(sp_dir), str(dirs["gt"]), "--png", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in res.output.splitlines() if line.startswith("| ")}
    assert rows["pseudo-mask mIoU"] == [f"{a.pseudo_mask.miou + 2:.2f} (± {4 / 2 ** 0.5:.2f}, n=2)",
                                        f"{a.pseudo_mask.miou:.2f}"]
    bg = a.pseudo_mask.per_class_iou["background"]
    assert rows["background"][0].split(" / ")[1] == f"{bg - 1:.2f}"
    assert "(2 seeds)" in res.output.splitlines()[0]
