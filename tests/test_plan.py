"""The run plan (stages/plan.py) and the Stage hooks (stages/contract.py check, publish),
on stand-in artifacts and stand-in stage records (seconds, no model): keys computed once per
plan, each state read from the store once, the check hook run after a stage computed or
cached, what a record publishes handed to Prefect by the flow, counts shown as integers."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

import pipeline.store
import stages.plan
from stages import ORDER, STAGES
from stages.plan import NotCached, RunPlan
from stages.runner import run_all


@pytest.fixture
def counted(monkeypatch):
    """{key: how often Store.check read its state}, and {stage: checked paths} of a prepare_data
    whose work is a stand-in (one file, 20000 'images') and whose check hook records."""
    reads, checked = {}, {}
    real = pipeline.store.Store.check

    def check(self, key, reuse=False):
        reads[key] = reads.get(key, 0) + 1
        return real(self, key, reuse)

    def run(cfg, inputs, out):
        (out / "labels_train.json").write_text("{}")
        return {"train_images": 20000, "share": 0.123456}

    monkeypatch.setattr(pipeline.store.Store, "check", check)
    monkeypatch.setitem(STAGES, "prepare_data", replace(
        STAGES["prepare_data"], run=run, input_files=None,
        check=lambda cfg, out: checked.setdefault("prepare_data", []).append(out)))
    return reads, checked


def _finished(plan: RunPlan, metrics: dict | None = None) -> None:
    """A stand-in finished artifact (no files) of every stage of ``plan``."""
    for n in plan.names:
        plan.store.open(plan.keys[n])
        plan.store.finalize(plan.keys[n], n, {}, {}, metrics or {}, 0.0)


def test_a_cached_run_reads_each_state_once_and_computes_each_key_once(smoke_cfg, counted, monkeypatch):
    reads, checked = counted
    plan = RunPlan(smoke_cfg)
    _finished(plan)
    made = []
    real_key = stages.plan.artifact_key
    monkeypatch.setattr(stages.plan, "artifact_key", lambda *a: made.append(a[0]) or real_key(*a))
    done = run_all(smoke_cfg)
    assert list(done) == list(plan.names) and sorted(made) == sorted(ORDER)
    assert reads == {plan.keys[n]: 1 for n in plan.names}
    assert checked == {"prepare_data": [plan.path("prepare_data")]}  # the hook runs on a cached artifact too


def test_a_computed_stage_is_checked_and_its_state_kept(smoke_cfg, counted):
    reads, checked = counted
    plan = RunPlan.of(smoke_cfg, until="prepare_data")
    assert plan.names == ("prepare_data",) and plan.state("prepare_data") == "missing"
    with pytest.raises(NotCached, match="wsss stage prepare_data"):
        plan.cached("prepare_data")
    from stages.runner import run_plan
    path = run_plan(plan)["prepare_data"]
    assert checked == {"prepare_data": [path]}
    key = plan.keys["prepare_data"]
    assert reads[key] == 2  # once for the plan, once more under the artifact's lock
    assert plan.state("prepare_data") == "cached" and plan.cached("prepare_data") == path and reads[key] == 2
    assert RunPlan(smoke_cfg).state("sam_masks") == "missing"  # a new plan reads the store


def test_a_stage_plan_validates_names_and_forces(smoke_cfg):
    plan = RunPlan.of(smoke_cfg, start="train_cam", until="export_cams", force=["match"])
    assert plan.forced("match") and not plan.forced("train_cam")
    assert plan.names[0] == "train_cam" and plan.names[-1] == "export_cams"
    assert plan.input_dirs("match") == {i: plan.path(i) for i in plan.inputs("match")}
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        RunPlan.of(smoke_cfg, until="nope")
    assert plan.to_compute() == list(plan.names)  # nothing cached in a fresh store


def test_the_flow_publishes_metrics_and_what_the_record_declares(tmp_path, monkeypatch):
    import flows.dag as dag
    from pipeline.publish import Publication
    sent = {}
    monkeypatch.setattr(dag, "create_markdown_artifact", lambda md, key, description: sent.update({key: md}))
    monkeypatch.setattr(dag, "create_table_artifact", lambda rows, key, description: sent.update({key: rows}))
    (tmp_path / "manifest.json").write_text(json.dumps({
        "stage": "evaluate", "metrics": {"miou": 50.0}, "timings": {"seconds": 1.5},
        "resources": {"wall_s": 1.5, "device": "cpu"}}))
    page = Publication("my_page", "a page", markdown="# hello")
    dag.publish_stage(replace(STAGES["evaluate"], publish=lambda path: (page,)), tmp_path, "Run 1")
    assert sent == {"run-1-evaluate": [{"metric": "miou", "value": 50.0}, {"metric": "seconds", "value": 1.5},
                                       {"metric": "device", "value": "cpu"}],
                    "run-1-evaluate-my-page": "# hello"}
    sent.clear()
    dag.publish_stage(STAGES["prepare_data"], tmp_path, "r")  # no publish hook: the metrics only
    assert list(sent) == ["r-prepare-data"]
    with pytest.raises(TypeError, match="one of them"):
        Publication("x", "neither")


def test_status_and_log_headlines_print_counts_as_integers(smoke_cfg, counted, caplog):
    import logging

    from stages.status import metrics_line, status_lines
    assert metrics_line({"images": 20000, "flag": True, "miou": 0.123456, "split": "train", "x": 3}) == \
        "images=20000, miou=0.1235, x=3"
    caplog.set_level(logging.INFO, logger="wsss")
    run_all(smoke_cfg, until="prepare_data")
    assert "prepare_data: done train_images=20000, share=0.1235" in caplog.text
    plan = RunPlan.of(smoke_cfg, until="prepare_data")
    row = next(ln for ln in status_lines(plan, "cfg.yaml") if ln.startswith("prepare_data"))
    assert row.split()[1] == "cached" and row.endswith("train_images=20000")


def test_wsss_run_hands_the_flow_the_states_it_read(smoke_cfg, counted, monkeypatch, tmp_path):
    """The Prefect route of a cached `wsss run`: the CLI's plan reads each state (its preflight),
    the flow takes them and reads none again. The flow runs as a plain function here, its tasks
    stand-ins that are cached in Prefect (as an unchanged rerun's are: their body does not run)."""
    from concurrent.futures import Future

    from typer.testing import CliRunner

    import flows.dag as dag
    from flows.cli import app
    reads, _ = counted
    plan = RunPlan(smoke_cfg)
    _finished(plan)
    submitted = {}

    class CachedTask:
        def with_options(self, refresh_cache):
            self.refresh = refresh_cache
            return self

        def submit(self, config, name, keys, work_dir, states, force, devices):
            submitted[name] = (self.refresh, states)
            done = Future()
            done.set_result(str(plan.path(name)))
            return done

    real_schedule = dag.schedule
    monkeypatch.setattr(dag, "stage_task", CachedTask())
    monkeypatch.setattr(dag, "schedule", lambda *a: real_schedule(*a, first_done=lambda futures: futures[0]))
    monkeypatch.setattr(dag, "publish_stage", lambda *a: None)
    monkeypatch.setattr(dag, "wsss_flow", dag.wsss_flow.fn)
    cfg = tmp_path / "smoke.yaml"
    cfg.write_text(f"_base_: {smoke_cfg.source}\nrun: {{work_dir: {smoke_cfg.run.work_dir}}}\n")
    res = CliRunner().invoke(app, ["run", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert reads == {plan.keys[n]: 1 for n in plan.names}
    assert list(submitted) == list(plan.names) and not any(refresh for refresh, _ in submitted.values())
    assert submitted["evaluate"][1] == plan.states(("evaluate", *plan.inputs("evaluate")))


def test_cost_table_prints_plain_numbers():
    """The report's cost table prints large seconds/MB as plain numbers (12346), never as 1.235e+04,
    and keeps small GPU-hour figures readable."""
    from pipeline.resources import cost_markdown
    rows = [{"stage": "train_cam", "key": "k", "wall_s": 12345.6, "device": "cuda:0", "gpu_hours": 0.000123,
             "peak_rss_mb": 2048.4, "peak_children_rss_mb": None, "cuda_max_allocated_mb": 512.25}]
    body = "\n".join(cost_markdown(rows))
    assert "e+" not in body
    assert "| train_cam | 12346 | cuda:0 | 0.000123 | 2048 |  | 512.2 |" in body
    assert "| total | 12346 |" in body
