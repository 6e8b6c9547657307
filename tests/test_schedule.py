"""The flow's scheduler (flows/dag.py schedule) over stages that sleep or fail, on a thread
pool: which stages run at once, on which devices, and what a failure does. The flow itself
runs two branches at once in tests/test_sam.py (test_sam_route_through_the_flow_resumes_after_a_kill:
sam_masks beside export_cams, the result equal to the sequential run's)."""
from __future__ import annotations


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
        time.sleep(seconds / 10 if name in fail else seconds)  # fails well before its sibling finishes
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
    from stages import get
    cfg = load_config(ROOT / "configs/voc-sam-smoke.yaml", overrides={"run": run, "export_cams": {"source": "train_cam"}},
                      check_paths=False)
    assert get("export_cams").inputs_of(cfg) == ("prepare_data", "train_cam")
    return cfg


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
