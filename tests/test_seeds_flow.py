"""Several seeds through `wsss run --seeds 0 1` (Prefect: the wsss-seeds parent flow, one wsss
sub-flow per seed) on a new store, with the smallest DAG that reaches evaluate (CAMs of the warm
start: no match / learn_prompts / refine); then the trained final model of seed 0 through
`wsss predict` and `wsss export-model`. About 3 minutes on a free 2-core CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.artifacts import SegmentationArtifact
from pipeline.config import load_config
from pipeline.store import Store
from stages.runner import stage_keys
from flow_helpers import _env, _run
from test_flow import _write_cfg, wsss_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # a loaded shared CPU: the run can take 20 min


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seeds")
    work = tmp / "runs"
    cfg = _write_cfg(tmp / "seeds.yaml", work, "export_cams: {source: train_cam}\n")
    env = _env(tmp)
    res = wsss_run(cfg, env, "--seeds", "0", "1", timeout=3000)
    return {"tmp": tmp, "work": work, "cfg": cfg, "env": env, "res": res}


def _rows(stdout: str) -> dict:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in stdout.splitlines() if line.startswith("| ")}


def test_seeds_share_seed_free_artifacts_and_spread_equals_the_seed_reports(seeds):
    """prepare_data is computed once and shared, the seeded stages twice; the spread report's
    numbers are those of the two seed reports; compare shows mean ± std."""
    from pipeline.evaluation.report import EvalReport
    from pipeline.evaluation.spread import SpreadReport
    from stages.seeds import spread_key, with_seed
    work, cfg_path, res = seeds["work"], seeds["cfg"], seeds["res"]
    assert res.stderr.count("prepare_data: running in") == 1
    for n in ("train_cam", "export_cams", "pseudo_masks", "train_segmentation", "evaluate"):
        assert res.stderr.count(f"{n}: running in") == 2, n
    assert "seed-0" in res.stderr and "seed-1" in res.stderr  # the sub-flow runs
    cfg = load_config(cfg_path)
    store = Store(work)
    k0, k1 = stage_keys(with_seed(cfg, 0)), stage_keys(with_seed(cfg, 1))
    assert k0["prepare_data"] == k1["prepare_data"] and k0["train_cam"] != k1["train_cam"]
    reports = {s: EvalReport.load(store.path(k["evaluate"]) / "report.json") for s, k in ((0, k0), (1, k1))}
    out = json.loads(res.stdout[res.stdout.rindex("\n{\n") + 1:])  # the command's JSON ends stdout
    sp_dir = Path(out["spread"])
    assert sp_dir == store.path(spread_key(cfg, [0, 1])) and store.state(sp_dir.name) == "cached"
    sp = SpreadReport.load(sp_dir / "spread.json")
    for metric, value in (("seed_miou", lambda r: r.seed.miou), ("pseudo_mask_miou", lambda r: r.pseudo_mask.miou),
                          ("final_val_miou", lambda r: r.final_model.miou)):
        st, vals = sp.metrics[metric], [value(reports[0]), value(reports[1])]
        assert st.values == {"0": vals[0], "1": vals[1]}
        assert (st.min, st.max) == (min(vals), max(vals)) and st.mean == pytest.approx(sum(vals) / 2, abs=1e-12)
        assert st.std == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5, abs=1e-12)  # ddof=1 with two values
    c = next(c for c, v in reports[0].pseudo_mask.per_class_iou.items() if v is not None
             and reports[1].pseudo_mask.per_class_iou[c] is not None)
    assert sp.per_class_iou["pseudo_mask_crf"][c].values == {str(s): reports[s].pseudo_mask.per_class_iou[c]
                                                             for s in (0, 1)}
    assert (sp_dir / "spread.png").read_bytes()[:4] == b"\x89PNG"
    assert "| seed_miou |" in (sp_dir / "spread.md").read_text()
    # compare: the config names its seeds, the table shows mean +- std, the chart error bars
    multi = _write_cfg(seeds["tmp"] / "seeds-compare.yaml", work, "export_cams: {source: train_cam}\n"
                       "run: {work_dir: %s, seeds: [0, 1]}\n" % work)
    png = seeds["tmp"] / "compare-seeds.png"
    one = store.path(k0["evaluate"])
    cmp = _run([sys.executable, "-m", "flows.cli", "compare", str(multi), str(one), "--png", str(png)],
               seeds["env"], 300)
    assert cmp.returncode == 0, cmp.stderr[-3000:]
    st = sp.metrics["pseudo_mask_miou"]
    assert _rows(cmp.stdout)["pseudo-mask mIoU"] == [f"{st.mean:.2f} (± {st.std:.2f}, n=2)",
                                                     f"{reports[0].pseudo_mask.miou:.2f}"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def _val_images(cfg, tmp: Path, n: int = 3) -> tuple[Path, list]:
    """n vendored val images in a folder, the second as PNG (cv2's decode of the JPEG, the reader
    mmseg uses, so the pixels are the same)."""
    import shutil

    import cv2

    from pipeline.data.datasets import LabelTable
    table = LabelTable.from_artifact(Store(cfg.run.work_dir).path(stage_keys(cfg)["prepare_data"]), "val")
    folder = tmp / "images"
    folder.mkdir(parents=True, exist_ok=True)
    records = table.records[:n]
    for i, r in enumerate(records):
        if i == 1:
            cv2.imwrite(str(folder / f"{r.id}.png"), cv2.imread(r.image))
        else:
            shutil.copy(r.image, folder / Path(r.image).name)
    return folder, records


def test_predict_equals_the_final_models_val_predictions(seeds):
    """`wsss predict` on vendored val images = the final model's own predictions of them (the
    stage's load_model / predict, what its gallery and predict_split use); COCO JSON decodes back."""
    from mmengine.config import Config as MMConfig

    from pipeline.pseudo_masks.coco_export import decode
    from pipeline.data.datasets import read_mask
    from pipeline.segmentation.train import load_model, predict
    cfg = load_config(seeds["cfg"])
    seg = Store(cfg.run.work_dir).path(stage_keys(cfg)["train_segmentation"])
    folder, records = _val_images(cfg, seeds["tmp"] / "predict")
    out = seeds["tmp"] / "predict" / "out"
    res = _run([sys.executable, "-m", "flows.cli", "predict", "--config", str(seeds["cfg"]), "--images", str(folder),
                "--out", str(out)], seeds["env"], 600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "predict (single scale) 3/3" in res.stderr and "ETA" in res.stderr
    model = load_model(MMConfig.fromfile(str(SegmentationArtifact(seg).config)), SegmentationArtifact(seg).model)
    coco = decode(out / "predictions_coco.json")
    for r in records:
        ref = predict(model, r.image)
        got = read_mask(out / "labels" / f"{r.id}.png")
        assert got.shape == ref.shape and (got == ref).all(), r.id
        assert (coco[r.id] == ref).all()
        assert (out / "overlays" / f"{r.id}.png").exists()
    tta = _run([sys.executable, "-m", "flows.cli", "predict", "--config", str(seeds["cfg"]), "--images", str(folder),
                "--out", str(out.with_name("tta")), "--tta"], seeds["env"], 600)  # mmseg's SegTTAModel path
    assert tta.returncode == 0, tta.stderr[-3000:]
    assert all(read_mask(out.with_name("tta") / "labels" / f"{r.id}.png").shape == read_mask(r.mask).shape
               for r in records)
    bad = _write_cfg(seeds["tmp"] / "untrained.yaml", seeds["tmp"] / "runs-untrained")
    res = _run([sys.executable, "-m", "flows.cli", "predict", "--config", str(bad), "--images", str(folder),
                "--out", str(out)], seeds["env"], 300)
    assert res.returncode == 1 and "no trained final model yet" in res.stderr


MMSEG_ALONE = """
import importlib.machinery, importlib.util, json, sys, types
if importlib.util.find_spec("mmcv._ext") is None:  # mmcv-lite (CPU CI): no compiled ops; this model calls none
    def missing(name):
        if name.startswith("__"):
            raise AttributeError(name)
        def op(*args, **kwargs):
            raise RuntimeError(f"mmcv op {name} needs full mmcv")
        return op
    ext = types.ModuleType("mmcv._ext")
    ext.__getattr__ = missing
    ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
    sys.modules["mmcv._ext"] = ext
import numpy as np
from mmseg.apis import inference_model, init_model
model = init_model(sys.argv[1] + "/config.py", sys.argv[1] + "/model.pth", device="cpu")
for path in sys.argv[3:]:
    label = inference_model(model, path).pred_sem_seg.data[0].numpy().astype(np.uint8)
    np.save(sys.argv[2] + "/" + path.rsplit("/", 1)[1].rsplit(".", 1)[0] + ".npy", label)
print(json.dumps({"wsss_modules": sorted(m for m in sys.modules if m == "pipeline" or m.startswith(("pipeline.",
                  "stages", "flows"))), "classes": list(model.dataset_meta["classes"])}))
"""


def test_exported_model_loads_with_mmseg_alone_and_gives_the_same_labels(seeds):
    """`wsss export-model`: mmseg's init_model / inference_model in a fresh process outside the
    project (no project module imported) load the folder and give the final model's labels."""
    import numpy as np

    from pipeline.data.datasets import read_mask
    cfg = load_config(seeds["cfg"])
    folder, records = _val_images(cfg, seeds["tmp"] / "export")
    exp, npy = seeds["tmp"] / "export" / "model", seeds["tmp"] / "export" / "npy"
    npy.mkdir()
    res = _run([sys.executable, "-m", "flows.cli", "export-model", "--config", str(seeds["cfg"]), "--out", str(exp)],
               seeds["env"], 300)
    assert res.returncode == 0, res.stderr[-3000:]
    text = (exp / "config.py").read_text()
    assert "pipeline.segmentation" not in text and "custom_imports" not in text and "Wsss" not in text
    images = sorted(str(p) for p in folder.iterdir())
    alone = subprocess.run([sys.executable, "-c", MMSEG_ALONE, str(exp), str(npy), *images], cwd=exp,
                           env=dict(seeds["env"], PYTHONPATH=""), capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    info = json.loads(alone.stdout.strip().splitlines()[-1])
    assert info["wsss_modules"] == []
    assert info["classes"] == (exp / "classes.txt").read_text().split("\n")[:-1] and info["classes"][0] == "background"
    from mmengine.config import Config as MMConfig

    from pipeline.segmentation.train import load_model, predict
    seg = Store(cfg.run.work_dir).path(stage_keys(cfg)["train_segmentation"])
    model = load_model(MMConfig.fromfile(str(SegmentationArtifact(seg).config)), SegmentationArtifact(seg).model)
    for r in records:
        ours = np.load(npy / f"{r.id}.npy")
        assert ours.shape == read_mask(r.mask).shape and (ours == predict(model, r.image)).all(), r.id
