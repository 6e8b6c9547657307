"""Independent DAG branches run at the same time (flows/dag.py schedule): the Prefect flow on a
copy of the session's voc-sam-smoke store (conftest sam_smoke_run, run one stage after another
by `wsss run --no-prefect`) without sam_masks, export_cams and pseudo_masks, with run.gpus [0, 1]:
sam_masks (needs prepare_data) and export_cams (needs the cached train_cam) are both GPU stages,
each gets one of the two devices and a process of its own, so their task runs overlap in time;
what they write equals the sequential run's."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np

# the start/end times of the flow's task runs, read back from its Prefect database
QUERY = """
import asyncio, json
from prefect.client.orchestration import get_client

async def main():
    async with get_client() as client:
        runs = await client.read_task_runs()
    print(json.dumps([[r.name, r.start_time.timestamp(), r.end_time.timestamp()]
                      for r in runs if r.start_time and r.end_time]))

asyncio.run(main())
"""


def test_independent_branches_overlap_and_equal_the_sequential_run(sam_smoke_run, tmp_path):
    from flow_helpers import _env, _run
    from pipeline.cams.store import CamStore
    from pipeline.artifacts import CamArtifact
    from pipeline.config import load_config
    from pipeline.store import Store
    from stages.runner import stage_keys

    run = sam_smoke_run
    shutil.copytree(run["cfg"].run.work_dir, tmp_path / "runs")
    cfg_file = tmp_path / "sam.yaml"
    cfg_file.write_text(f"_base_: {run['cfg_path']}\nrun: {{work_dir: {tmp_path / 'runs'}, gpus: [0, 1]}}\n")
    cfg = load_config(cfg_file)
    keys = stage_keys(cfg)
    assert keys == run["keys"]  # run.gpus is part of no key
    store = Store(cfg.run.work_dir)
    for name in ("sam_masks", "export_cams", "pseudo_masks"):
        shutil.rmtree(store.path(keys[name]))

    env = _env(tmp_path)
    res = _run([sys.executable, "-m", "flows.cli", "run", "--config", str(cfg_file), "--until", "pseudo_masks"],
               env, 900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    assert all(store.state(keys[n]) == "cached" for n in ("sam_masks", "export_cams", "pseudo_masks"))

    q = _run([sys.executable, "-c", QUERY], env, 300)
    assert q.returncode == 0, q.stderr[-3000:]
    spans = {name: (start, end) for name, start, end in json.loads(q.stdout.strip().splitlines()[-1])}
    (s0, e0), (s1, e1), (s2, _) = spans["sam_masks"], spans["export_cams"], spans["pseudo_masks"]
    assert s0 < e1 and s1 < e0, spans  # the two branches ran at the same time
    assert s2 >= max(e0, e1) - 1e-3, spans  # pseudo_masks waited for both of its inputs

    ours, seq = store.path(keys["sam_masks"]) / "masks_train", run["dirs"]["sam_masks"] / "masks_train"
    assert sorted(p.name for p in ours.glob("*.json")) == sorted(p.name for p in seq.glob("*.json"))
    assert all((ours / p.name).read_bytes() == p.read_bytes() for p in seq.glob("*.json"))
    a = CamStore(CamArtifact(store.path(keys["export_cams"])).store("train"))
    b = CamStore(CamArtifact(run["dirs"]["export_cams"]).store("train"))
    assert a.ids() == b.ids() and all(np.array_equal(a.read(i)[0], b.read(i)[0]) for i in a.ids())
    for d in ("masks", "masks_crf"):
        mine, theirs = store.path(keys["pseudo_masks"]) / d, run["dirs"]["pseudo_masks"] / d
        names = sorted(p.name for p in theirs.glob("*.png"))
        assert names and names == sorted(p.name for p in mine.glob("*.png"))
        assert all((mine / n).read_bytes() == (theirs / n).read_bytes() for n in names), d


# ------------------------------------------------------------------ the scheduler alone
def _fake_run(cfg, names, seconds=0.3, fail=()):
    """flows.dag.schedule over stages that sleep (or raise), on a thread pool: (spans, devices,
    finished, the raised error or None)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from flows.dag import schedule
    spans, devices, finished, lock = {}, {}, [], threading.Lock()

    def work(name, devs):
        start = time.monotonic()
        time.sleep(seconds)
        with lock:
            spans[name], devices[name] = (start, time.monotonic()), devs
        if name in fail:
            raise RuntimeError(f"stage '{name}' failed")
        return f"/store/{name}"

    with ThreadPoolExecutor(8) as pool:
        try:
            schedule(cfg, names, lambda n, d: pool.submit(work, n, d), lambda n, p: finished.append(n),
                     first_done=lambda fs: next(as_completed(fs)))
            error = None
        except RuntimeError as e:
            error = e
    return spans, devices, finished, error


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _sam_cfg(**run):
    from conftest import ROOT
    from pipeline.config import load_config
    return load_config(ROOT / "configs/voc-sam-smoke.yaml", overrides={"run": run}, check_paths=False)


NAMES = ["prepare_data", "sam_masks", "train_cam", "export_cams", "pseudo_masks"]


def test_one_device_queues_gpu_stages_in_dag_order_of_readiness():
    spans, devices, finished, error = _fake_run(_sam_cfg(gpus=[0]), NAMES)
    assert error is None and sorted(finished) == sorted(NAMES)
    assert set(devices.values()) == {None}  # one device: everything in the flow's process
    gpu = [n for n in NAMES if n != "prepare_data"]
    assert not any(_overlap(spans[a], spans[b]) for a in gpu for b in gpu if a < b)
    assert spans["pseudo_masks"][0] >= max(spans["sam_masks"][1], spans["export_cams"][1])


def test_two_devices_run_independent_branches_at_once_each_on_its_own():
    spans, devices, finished, error = _fake_run(_sam_cfg(gpus=[3, 5]), NAMES)
    assert error is None and sorted(finished) == sorted(NAMES)
    assert _overlap(spans["sam_masks"], spans["train_cam"])
    assert devices["prepare_data"] == [] and {tuple(devices["sam_masks"]), tuple(devices["train_cam"])} == {(3,), (5,)}
    assert spans["export_cams"][0] >= spans["train_cam"][1] and spans["prepare_data"][1] <= spans["sam_masks"][0]


def test_a_distributed_stage_takes_every_device():
    spans, devices, _, error = _fake_run(_sam_cfg(gpus=[0, 1], nproc_per_node=2), NAMES)
    assert error is None and devices["train_cam"] == [0, 1]  # torchrun over both
    assert not _overlap(spans["train_cam"], spans["sam_masks"])


def test_a_failed_branch_fails_the_run_after_the_other_finishes_and_starts_nothing_new():
    spans, _, finished, error = _fake_run(_sam_cfg(gpus=[0, 1]), NAMES, fail=("sam_masks",))
    assert "sam_masks" in str(error)
    assert "train_cam" in finished and "sam_masks" not in finished  # the other branch's result is kept
    assert "pseudo_masks" not in spans  # needs the failed stage: never started
    # export_cams needs only train_cam, but nothing new starts once a stage has failed
    assert "export_cams" not in spans
