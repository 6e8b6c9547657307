"""Several seeds of one config: the DAG once per run.seed, then the spread report.

Only the stages that declare run.seed (and their descendants) get a new key per seed, so
prepare_data, sam_masks and an imported warm start's artifacts are computed once and shared
(tests/test_seeds.py pins which). The spread artifact ``spread-<key>`` (key over the seeds and
their evaluate keys) holds (pipeline/artifacts.py SpreadArtifact) spread.json (pipeline/evaluation/spread.py
SpreadReport), spread.md, spread.png.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

from pipeline.config import Config
from pipeline.store import State, Store, artifact_key
from stages.plan import RunPlan, select
from stages.runner import run_all

log = logging.getLogger("wsss")
SPREAD_VERSION = "1"


def with_seed(cfg: Config, seed: int) -> Config:
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": int(seed)})})


def seeds_of(cfg: Config, seeds: Optional[Sequence[int]] = None) -> list[int]:
    """The seeds to run: the given ones, else run.seeds; [] = a plain single-seed run."""
    out = [int(s) for s in (seeds if seeds else (cfg.run.seeds or []))]
    if len(set(out)) != len(out):
        raise ValueError(f"seeds {out}: each seed once")
    return out


def _evaluate_plans(cfg: Config, seeds: Sequence[int]) -> dict[int, RunPlan]:
    return {s: RunPlan(with_seed(cfg, s), ["evaluate"]) for s in seeds}


def _spread_key(plans: dict[int, RunPlan]) -> str:
    return artifact_key("spread", SPREAD_VERSION, {"seeds": list(plans)},
                        {f"seed_{s}": p.keys["evaluate"] for s, p in plans.items()})


def spread_key(cfg: Config, seeds: Sequence[int]) -> str:
    return _spread_key(_evaluate_plans(cfg, seeds))


def result(cfg: Config) -> tuple[Path, State]:
    """What `wsss compare` reads of a config, and its state: the evaluate artifact, or the
    spread artifact of a multi-seed config (run.seeds)."""
    seeds = seeds_of(cfg)
    if seeds:
        store, key = Store(cfg.run.work_dir), spread_key(cfg, seeds)
        return store.path(key), store.state(key)
    plan = RunPlan(cfg, ["evaluate"])
    return plan.path("evaluate"), plan.state("evaluate")


def write_spread(cfg: Config, seeds: Sequence[int]) -> Path:
    """The spread artifact of the seeds' finished evaluate artifacts (made once, then cached)."""
    from pipeline.artifacts import EvalArtifact, SpreadArtifact
    from pipeline.evaluation.report import EvalReport
    from pipeline.evaluation.spread import save_spread_chart, spread, spread_markdown
    plans = _evaluate_plans(cfg, seeds)
    store, key = Store(cfg.run.work_dir), _spread_key(plans)
    if store.state(key) == "cached":
        return store.path(key)
    missing = [f"seed {s}: {p.path('evaluate')}" for s, p in plans.items() if p.state("evaluate") != "cached"]
    if missing:
        raise RuntimeError("spread report needs every seed's finished evaluate artifact; missing: "
                           + "; ".join(missing))
    started = time.time()
    out = store.open(key)
    dirs = {s: p.path("evaluate") for s, p in plans.items()}
    reports = {s: EvalReport.load(EvalArtifact(d).report) for s, d in dirs.items()}
    sp, art = spread(reports, dirs), SpreadArtifact(out)
    sp.save(art.report)
    art.markdown.write_text(spread_markdown(sp))
    save_spread_chart(art.chart, sp)
    store.finalize(key, "spread", {"seeds": list(seeds)}, {f"seed_{s}": p.keys["evaluate"] for s, p in plans.items()},
                   {f"{k}_mean": st.mean for k, st in sp.metrics.items()}, started)
    log.info("spread over seeds %s: %s", list(seeds), art.markdown)
    return out


def run_seeds(cfg: Config, seeds: Sequence[int], until: Optional[str] = None, start: Optional[str] = None,
              force: tuple[str, ...] = ()) -> dict:
    """Without Prefect: the DAG per seed (shared artifacts computed by the first seed that needs
    them), then the spread report when evaluate ran."""
    done = {}
    for s in seeds:
        log.info("seed %d of %s", s, list(seeds))
        done[f"seed_{s}"] = {k: str(v) for k, v in run_all(with_seed(cfg, s), until, start, force).items()}
    if "evaluate" in select(until, start, cfg):
        done["spread"] = str(write_spread(cfg, seeds))
    return done
