"""The real Prefect flow end to end on the smoke config.

One run store is shared by the module: a real local Prefect server serves
the voc-smoke deployment and `prefect deployment run wsss/voc-smoke --watch`
makes the cold run; the later tests rerun the flow (`wsss run`, embedded
Prefect) against the same store to check caching, partial reruns, damage
detection and resume after a kill.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flow_helpers import _env, _run
from pipeline.config import ConfigError, load_config
from pipeline.store import MANIFEST, Store
from stages import ORDER as ALL_STAGES
from stages.runner import stage_keys

# the stages of voc-smoke: no SAM route, no ensemble (ensemble.routes empty), no imports
ORDER = tuple(n for n in ALL_STAGES if n not in ("sam_masks", "ensemble", "import_cams", "import_masks"))

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_cfg(path: Path, work_dir: Path, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a run: section in extra names its own work_dir (the loader refuses a key given twice)
    run = "" if re.search(r"^run:", extra, re.M) else f"run: {{work_dir: {work_dir}}}\n"
    path.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\n{run}{extra}")
    return path


def wsss_run(cfg: Path, env: dict, *args, timeout=1500) -> subprocess.CompletedProcess:
    res = _run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg), *args], env, timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


def snapshot(store: Store, keys: dict) -> dict:
    """manifest mtime of every finished stage (a rerun that works rewrites it)."""
    return {n: (store.path(k) / MANIFEST).stat().st_mtime_ns
            for n, k in keys.items() if (store.path(k) / MANIFEST).exists()}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Cold run through a real server + served deployment."""
    tmp = tmp_path_factory.mktemp("flow")
    work = tmp / "runs"
    cfg = _write_cfg(tmp / "configs/voc-smoke.yaml", work)  # deployment name = file stem
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _env(tmp, WSSS_WORK_DIR=str(tmp), PREFECT_PORT=str(port))
    up = subprocess.run([str(ROOT / "scripts/prefect-server.sh"), "start"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=200)
    assert up.returncode == 0, up.stdout + up.stderr
    served = None
    try:
        env_api = dict(env, PREFECT_API_URL=api)
        log = open(tmp / "serve.log", "w")
        served = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(cfg)], cwd=ROOT,
                                  env=env_api, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while subprocess.run([PREFECT, "deployment", "inspect", "wsss/voc-smoke"], env=env_api,
                             capture_output=True).returncode != 0:
            assert served.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, "deployment wsss/voc-smoke was not served within 180 s"
            time.sleep(2)
        t0 = time.time()
        run = subprocess.run([PREFECT, "deployment", "run", "wsss/voc-smoke", "--watch"], env=env_api,
                             capture_output=True, text=True, timeout=1800)
        cold_s = time.time() - t0
        assert run.returncode == 0, run.stdout[-2000:] + (tmp / "serve.log").read_text()[-6000:]
        assert "Completed" in run.stdout, run.stdout[-2000:]
        yield {"tmp": tmp, "cfg": cfg, "env": _env(tmp), "cold_s": cold_s, "api": api}
    finally:
        if served and served.poll() is None:
            os.killpg(served.pid, signal.SIGTERM)
            served.wait(30)
        subprocess.run([str(ROOT / "scripts/prefect-server.sh"), "stop"], cwd=ROOT, env=env,
                       capture_output=True, timeout=60)


def test_bad_config_fails_before_any_stage(tmp_path):
    cfg = _write_cfg(tmp_path / "bad.yaml", tmp_path / "runs", "pseudo_masks: {crf: {itertions: 3}}\n")
    with pytest.raises(ConfigError, match=r"pseudo_masks\.crf\.itertions"):
        load_config(cfg)
    res = _run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg)], _env(tmp_path), 300)
    assert res.returncode != 0 and "pseudo_masks.crf.itertions" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_deployment_run_wrote_every_stage(smoke):
    cfg = load_config(smoke["cfg"])
    store, keys = Store(cfg.run.work_dir), stage_keys(cfg)
    for name in ORDER:
        assert store.state(keys[name]) == "cached", name
    report = store.path(keys["evaluate"]) / "report.json"
    doc = json.loads(report.read_text())
    assert "seed" in json.dumps(doc) and "pseudo" in json.dumps(doc)
    for name in ORDER:  # what each stage cost, in its manifest
        res = store.manifest(keys[name])["resources"]
        assert res["wall_s"] > 0 and res["device"] == "cpu" and res["gpu_hours"] == 0 and res["peak_rss_mb"] > 0
    # the evaluate report: protocol card, per-class precision/recall, time per upstream stage
    card = doc["protocol"]
    assert card["cam_source"] == "refine" and card["cam_scales"] == [1.0] and card["cam_flip"] is True
    assert card["num_images_with_gt"] == doc["num_images_with_gt"] and "crf" in card["pseudo_mask_routes"]
    assert "single-scale" in card["final_model"] and card["ground_truth_chose"]
    assert [r["stage"] for r in doc["stage_costs"]] == [n for n in ORDER if n != "evaluate"]
    for part in (doc["seed"], doc["pseudo_mask"], doc["final_model"]):
        assert set(part["per_class_precision"]) == set(part["per_class_recall"]) == set(part["per_class_iou"])
    md = (store.path(keys["evaluate"]) / "report.md").read_text()
    assert "## Protocol" in md and "## Per-class IoU / precision / recall" in md and "| total |" in md


def test_every_training_stage_wrote_its_curves(smoke):
    """The event files in each training stage's tensorboard/ folder, read with TensorBoard's own
    reader: every loss term per update and per epoch (SemPLeS phases), mmengine's loss tags every
    log_interval iterations (train_segmentation), with the step counts the config gives."""
    from pipeline.data.datasets import LabelTable
    from pipeline.semples.phases import phases
    from test_tensorboard import scalars
    cfg = load_config(smoke["cfg"])
    store, keys = Store(cfg.run.work_dir), stage_keys(cfg)
    images = len(LabelTable.from_artifact(store.path(keys["prepare_data"]), cfg.data.train_split))
    for phase in (p.name for p in phases()):
        tcfg = getattr(cfg, phase)
        per_epoch = images // tcfg.batch_size  # the loader drops the last incomplete batch
        tags = scalars(store.path(keys[phase]) / "tensorboard")
        history = json.loads((store.path(keys[phase]) / f"{phase}_history.json").read_text())
        terms = [k for k in history[0] if k not in ("epoch", "lr", "seconds", "images_per_s")]
        assert "loss" in terms and len(terms) > 1, (phase, terms)
        for k in terms:
            assert [s for s, _ in tags[f"step/{k}"]] == list(range(1, tcfg.epochs * per_epoch + 1)), (phase, k)
            assert [s for s, _ in tags[f"epoch/{k}"]] == [(e + 1) * per_epoch for e in range(tcfg.epochs)]
            assert [v for _, v in tags[f"epoch/{k}"]] == pytest.approx([h[k] for h in history], rel=1e-5)
        assert len(tags["lr/group0"]) == len(tags["throughput/images_per_s"]) == tcfg.epochs
        assert len(tags["cams/gallery"]) == tcfg.epochs
    sec = cfg.train_segmentation
    tags = scalars(store.path(keys["train_segmentation"]) / "tensorboard")
    logged = list(range(sec.log_interval, sec.iters + 1, sec.log_interval))
    for k in ("loss", "decode.loss_ce", "lr"):
        assert [s for s, _ in tags[k]] == logged, k
    assert [s for s, _ in tags["mIoU"]] == [sec.iters]


ARTIFACTS_SCRIPT = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
async def main():
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sys.argv[1:])))
        print(json.dumps([{"key": a.key, "type": a.type, "data": a.data, "flow_run_id": str(a.flow_run_id)}
                          for a in found]))
asyncio.run(main())
"""


def _same(a, b) -> bool:
    """Equal numbers; None and NaN both mean 'no value' (Prefect stores NaN as null)."""
    import math
    none = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    return (none(a) and none(b)) or a == b


def test_deployment_run_published_prefect_artifacts(smoke):
    """The served deployment's flow run lists one metrics table per stage and the
    evaluate report (markdown + per-class table) with the numbers of report.json."""
    cfg = load_config(smoke["cfg"])
    keys = stage_keys(cfg)
    report = json.loads((Store(cfg.run.work_dir).path(keys["evaluate"]) / "report.json").read_text())
    wanted = [f"voc-smoke-{n.replace('_', '-')}" for n in ORDER] + ["voc-smoke-evaluate-report",
                                                                    "voc-smoke-evaluate-per-class-iou"]
    res = _run([sys.executable, "-c", ARTIFACTS_SCRIPT, *wanted], dict(smoke["env"], PREFECT_API_URL=smoke["api"]),
               300)
    assert res.returncode == 0, res.stderr[-3000:]
    arts = {a["key"]: a for a in json.loads(res.stdout)}
    assert sorted(arts) == sorted(wanted)
    assert len({a["flow_run_id"] for a in arts.values()}) == 1  # all on the deployment run's page
    evaluate = {r["metric"]: r["value"] for r in json.loads(arts["voc-smoke-evaluate"]["data"])}
    assert evaluate["seed_miou"] == report["seed"]["miou"]
    assert evaluate["seed_best_miou_gt_sweep"] == report["seed_sweep"]["best_miou"]
    assert evaluate["pseudo_mask_miou"] == report["pseudo_mask"]["miou"]
    assert evaluate["final_val_miou"] == report["final_model"]["miou"]
    assert evaluate["cam_source"] == report["cam_source"] == "refine"
    rows = json.loads(arts["voc-smoke-evaluate-per-class-iou"]["data"])
    assert [r["class"] for r in rows] == list(report["seed"]["per_class_iou"])
    for r in rows:
        assert _same(r["seed"], report["seed"]["per_class_iou"][r["class"]]), r
        assert _same(r["pseudo_mask"], report["pseudo_mask"]["per_class_iou"][r["class"]]), r
        assert _same(r["final_val"], report["final_model"]["per_class_iou"].get(r["class"])), r
    md = arts["voc-smoke-evaluate-report"]
    assert md["type"] == "markdown" and "stage `refine`" in md["data"]
    assert f"{report['pseudo_mask']['miou']:.2f}" in md["data"]
    assert "![per-class IoU](data:image/png;base64," in md["data"] and "per_class_iou.png" in md["data"]
    train_cam = {r["metric"]: r["value"] for r in json.loads(arts["voc-smoke-train-cam"]["data"])}
    manifest = Store(cfg.run.work_dir).manifest(keys["train_cam"])
    assert {k: train_cam[k] for k in manifest["metrics"]} == manifest["metrics"]


def test_compare_smoke_run(smoke):
    """`wsss compare` by config and by evaluate directory: the numbers of report.json, GT-chosen marked."""
    cfg = load_config(smoke["cfg"])
    eval_dir = Store(cfg.run.work_dir).path(stage_keys(cfg)["evaluate"])
    report = json.loads((eval_dir / "report.json").read_text())
    png = smoke["tmp"] / "compare.png"
    res = _run([sys.executable, "-m", "flows.cli", "compare", str(smoke["cfg"]), str(eval_dir), "--png", str(png)],
               smoke["env"], 300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in res.stdout.splitlines() if line.startswith("| ")}
    assert rows["pseudo-mask mIoU"] == [f"{report['pseudo_mask']['miou']:.2f}"] * 2
    best = f"{report['seed_sweep']['best_miou']:.2f} (t={report['seed_sweep']['best_threshold']})"
    assert rows["seed mIoU (best threshold)*"] == [best] * 2
    assert rows["final model mIoU (val)"] == [f"{report['final_model']['miou']:.2f}"] * 2
    assert rows["CAM source"] == ["refine", "refine"]
    c = next(iter(report["pseudo_mask"]["per_class_iou"]))
    assert rows[c][0].split(" / ")[1] == f"{report['pseudo_mask']['per_class_iou'][c]:.2f}"
    assert "chosen with ground truth" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_voc_run_with_a_folder_run_without_gt(smoke, folder_flow_run):
    """A folder run without GT masks next to the VOC run: its scores are n/a, its pixel shares shown."""
    voc = json.loads((Store(load_config(smoke["cfg"]).run.work_dir).path(stage_keys(load_config(smoke["cfg"]))
                                                                       ["evaluate"]) / "report.json").read_text())
    folder = json.loads((Path(folder_flow_run["dirs"]["evaluate"]) / "report.json").read_text())
    png = smoke["tmp"] / "compare-folder.png"
    res = _run([sys.executable, "-m", "flows.cli", "compare", str(smoke["cfg"]), str(folder_flow_run["cfg_path"]),
                "--png", str(png)], smoke["env"], 300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in res.stdout.splitlines() if line.startswith("| ")}
    assert rows["pseudo-mask mIoU"] == [f"{voc['pseudo_mask']['miou']:.2f}", "n/a (no GT)"]
    assert rows["seed mIoU (fixed threshold)"][1] == "n/a (no GT)"
    assert rows["final model mIoU (val)"] == [f"{voc['final_model']['miou']:.2f}", "n/a"]
    assert rows["aeroplane"][1] == "n/a / n/a / n/a"  # a VOC class the folder run has not
    assert rows["tv"][0] == "n/a / n/a / n/a"  # a class of the folder run only (COCO names)
    share = folder["pseudo_mask_pixel_shares"]
    assert rows["person (share)"][1] == f"{100 * share['person']:.2f}"
    assert rows["uncertain (255) (share)"] == [f"{100 * voc['pseudo_mask_pixel_shares']['uncertain (255)']:.2f}",
                                               f"{100 * share['uncertain (255)']:.2f}"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_cams_source_picks_the_training_stage(smoke):
    """export_cams.source: match exports the phase-1 model's CAMs, reusing every
    cached upstream artifact of the smoke run (refine's are different CAMs)."""
    import numpy as np

    from pipeline.cams.store import CamStore, store_path
    from stages.runner import run_stage
    base = load_config(smoke["cfg"])
    cfg = load_config(smoke["cfg"], overrides={"export_cams": {"source": "match"}})
    keys, base_keys = stage_keys(cfg), stage_keys(base)
    assert all(keys[n] == base_keys[n] for n in ("prepare_data", "train_cam", "match", "refine"))
    out = run_stage(cfg, "export_cams", keys=keys)
    store = Store(base.run.work_dir)
    assert store.manifest(keys["export_cams"])["inputs"] == {"prepare_data": keys["prepare_data"],
                                                            "match": keys["match"]}
    ours = CamStore(store_path(out, cfg.export_cams.split))
    refined = CamStore(store_path(store.path(base_keys["export_cams"]), cfg.export_cams.split))
    assert ours.ids() == refined.ids()
    assert any(not np.array_equal(ours.read(i)[0], refined.read(i)[0]) for i in ours.ids())


def test_two_runs_at_once_compute_each_stage_once(smoke):
    """Two `wsss run` processes on one new store, the Prefect flow and `--no-prefect` (one
    Prefect start-up less on a 2-core machine; the lock is compute_stage's in both): each stage is
    computed by one of them (counted from the 'running in' log line compute_stage writes
    once per computation), both succeed, and the artifacts equal the smoke run's."""
    base = load_config(smoke["cfg"])
    work = smoke["tmp"] / "runs-twice"
    cfg2 = _write_cfg(smoke["tmp"] / "twice.yaml", work)
    procs, logs = [], []
    for i in range(2):
        logs.append(smoke["tmp"] / f"twice-{i}.log")
        procs.append(subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg2),
                                       "--until", "train_cam"] + (["--no-prefect"] if i else []),
                                      cwd=ROOT, env=_env(smoke["tmp"] / f"twice-{i}"),
                                      stdout=subprocess.DEVNULL, stderr=open(logs[-1], "w"),
                                      start_new_session=True))
    try:
        for p in procs:
            p.wait(900)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    text = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], text[0][-3000:] + text[1][-3000:]
    for stage in ("prepare_data", "train_cam"):
        computed = [t.count(f"{stage}: running in") + t.count(f"{stage}: resuming in") for t in text]
        assert sorted(computed) == [0, 1], (stage, computed)
        other = text[computed.index(0)]
        assert f"{stage}: waiting for {stage}-" in other or f"{stage}: cached" in other
    keys = stage_keys(base)
    ref, new = Store(base.run.work_dir), Store(work)
    for stage in ("prepare_data", "train_cam"):
        a, b = ref.manifest(keys[stage])["files"], new.manifest(keys[stage])["files"]
        assert sorted(a) == sorted(b)
        for rel in a:
            if rel == "checkpoint.pt" or rel.endswith("_history.json"):
                continue  # hold per-epoch wall-clock seconds
            assert a[rel]["sha256"] == b[rel]["sha256"], (stage, rel)
    assert not any(p.name.endswith(".tmp") for p in work.rglob("*"))


def test_unchanged_rerun_does_no_stage_work(smoke):
    cfg = load_config(smoke["cfg"])
    store, keys = Store(cfg.run.work_dir), stage_keys(cfg)
    # TensorBoard event files are not the result: damaged or gone, the stage is still cached
    events = {n: sorted((store.path(keys[n]) / "tensorboard").glob("events.*"))
              for n in ("train_cam", "refine", "train_segmentation")}
    events["train_cam"][0].write_bytes(b"damaged")
    for f in events["refine"] + events["train_segmentation"]:
        f.unlink()
    before = snapshot(store, keys)
    res = wsss_run(smoke["cfg"], smoke["env"])
    assert snapshot(store, keys) == before
    assert res.stderr.count("Cached(type=COMPLETED)") + res.stderr.count(": cached (") >= len(ORDER)
    assert "running in" not in res.stderr and "resuming in" not in res.stderr


def test_crf_change_reruns_only_downstream(smoke):
    base = load_config(smoke["cfg"])
    cfg2 = _write_cfg(smoke["tmp"] / "crf.yaml", base.run.work_dir, "pseudo_masks: {crf: {bilateral_srgb: 7}}\n")
    store, old = Store(base.run.work_dir), stage_keys(base)
    new = stage_keys(load_config(cfg2))
    changed = {n for n in ORDER if new[n] != old[n]}
    assert changed == {"pseudo_masks", "train_segmentation", "evaluate"}
    before = snapshot(store, old)
    res = wsss_run(cfg2, smoke["env"])
    after = snapshot(store, old)
    assert all(after[n] == before[n] for n in ORDER)  # nothing of the old run was touched
    for n in changed:
        assert store.state(new[n]) == "cached"
        assert f"{n}: running in" in res.stderr
    for n in set(ORDER) - changed:
        assert f"{n}: running in" not in res.stderr


def test_damaged_artifact_is_recomputed(smoke):
    cfg = load_config(smoke["cfg"])
    store, keys = Store(cfg.run.work_dir), stage_keys(cfg)
    art = store.path(keys["pseudo_masks"])
    victim = sorted(p for p in art.rglob("*.png") if p.is_file())[0]
    victim.unlink()
    assert store.state(keys["pseudo_masks"]) == "corrupt"
    res = wsss_run(smoke["cfg"], smoke["env"])
    assert "pseudo_masks: artifact" in res.stderr and "damaged" in res.stderr
    assert victim.exists() and store.state(keys["pseudo_masks"]) == "cached"
    assert "export_cams: running in" not in res.stderr


def test_hung_holder_is_taken_over_and_resumed(smoke):
    """A match with its own key: stop the run that computes it after the first
    epoch's checkpoint (SIGSTOP: its lock stays, its heartbeat stops, as when a
    machine is lost); a second run waits, takes the lock over once the lease
    expires, and continues training from that epoch. Both are `wsss run --no-prefect`:
    the lock is compute_stage's, the same in the flow (test_two_runs_at_once...), and
    two Prefect start-ups would add a minute."""
    base = load_config(smoke["cfg"])
    cfg2 = _write_cfg(smoke["tmp"] / "match.yaml", base.run.work_dir,
                      "run: {work_dir: %s, lock_lease_s: 10}\nmatch: {lambda_b: 2.0, epochs: 3}\n"
                      % base.run.work_dir)
    keys = stage_keys(load_config(cfg2))
    match_dir = Store(base.run.work_dir).path(keys["match"])
    holder = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg2), "--until", "match",
                               "--no-prefect"],
                              cwd=ROOT, env=smoke["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 900
    try:
        while not _checkpoint_epoch(match_dir) >= 1:
            assert holder.poll() is None, "flow ended before the first match checkpoint"
            assert time.time() < deadline
            time.sleep(0.5)
        os.killpg(holder.pid, signal.SIGSTOP)
        done_epochs = _checkpoint_epoch(match_dir)
        assert done_epochs < 3 and not (match_dir / MANIFEST).exists()
        res = wsss_run(cfg2, _env(smoke["tmp"] / "taker"), "--until", "match", "--no-prefect")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert f"match: waiting for {keys['match']} held by " in res.stderr and f":{holder.pid} since " in res.stderr
    assert "match: resuming in" in res.stderr
    assert f"match: resuming after epoch {done_epochs}" in res.stderr
    history = json.loads((match_dir / "match_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert Store(base.run.work_dir).state(keys["match"]) == "cached"


def _checkpoint_epoch(d: Path) -> int:
    """Epochs completed according to the stage's resume checkpoint (0 if none)."""
    import torch
    ckpt = d / "checkpoint.pt"
    if not ckpt.exists():
        return 0
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]) + 1
    except Exception:  # being replaced right now
        return 0


def test_status_lists_every_stage_cached(smoke):
    res = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--config", str(smoke["cfg"])], cwd=ROOT,
                         env=smoke["env"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
    assert rows == {n: "cached" for n in ORDER}
    cfg = load_config(smoke["cfg"])
    store, keys = Store(cfg.run.work_dir), stage_keys(cfg)
    wall = sum(store.manifest(keys[n])["resources"]["wall_s"] for n in ORDER)
    assert lines[-1].split()[:2] == ["total", f"{wall:.1f}"]


def test_dask_shards_give_identical_pseudo_masks(smoke):
    """pseudo_masks mapped over a Dask LocalCluster of 2 worker processes
    writes byte-identical PNGs to the thread-runner run."""
    import shutil
    base = load_config(smoke["cfg"])
    keys = stage_keys(base)
    src = Store(base.run.work_dir)
    work2 = smoke["tmp"] / "runs-dask"
    for n in ("prepare_data", "train_cam", "match", "learn_prompts", "refine", "export_cams"):
        shutil.copytree(src.path(keys[n]), work2 / keys[n])
    cfg2 = _write_cfg(smoke["tmp"] / "dask.yaml", work2,
                      "run: {work_dir: %s, task_runner: dask, dask_workers: 2, shard_size: 16}\n" % work2)
    res = wsss_run(cfg2, smoke["env"], "--from", "pseudo_masks", "--until", "pseudo_masks")
    assert "pseudo_masks: running in" in res.stderr
    assert stage_keys(load_config(cfg2))["pseudo_masks"] == keys["pseudo_masks"]
    a, b = src.path(keys["pseudo_masks"]), work2 / keys["pseudo_masks"]
    pngs = sorted(p.relative_to(a) for p in a.rglob("*.png") if "gallery" not in p.name)
    assert len(pngs) >= 70
    for rel in pngs:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel

