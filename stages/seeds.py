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
from pipeline.store import Store, artifact_key

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


def spread_key(cfg: Config, seeds: Sequence[int]) -> str:
    from stages.runner import stage_keys
    inputs = {f"seed_{s}": stage_keys(with_seed(cfg, s))["evaluate"] for s in seeds}
    return artifact_key("spread", SPREAD_VERSION, {"seeds": list(seeds)}, inputs)


def write_spread(cfg: Config, seeds: Sequence[int]) -> Path:
    """The spread artifact of the seeds' finished evaluate artifacts (made once, then cached)."""
    from pipeline.artifacts import EvalArtifact, SpreadArtifact
    from pipeline.evaluation.report import EvalReport
    from pipeline.evaluation.spread import save_spread_chart, spread, spread_markdown
    from stages.runner import stage_keys
    store = Store(cfg.run.work_dir)
    key = spread_key(cfg, seeds)
    if store.state(key) == "cached":
        return store.path(key)
    eval_keys = {s: stage_keys(with_seed(cfg, s))["evaluate"] for s in seeds}
    missing = [f"seed {s}: {store.path(k)}" for s, k in eval_keys.items() if store.state(k) != "cached"]
    if missing:
        raise RuntimeError("spread report needs every seed's finished evaluate artifact; missing: "
                           + "; ".join(missing))
    started = time.time()
    out = store.open(key)
    reports = {s: EvalReport.load(EvalArtifact(store.path(k)).report) for s, k in eval_keys.items()}
    sp, art = spread(reports, {s: store.path(k) for s, k in eval_keys.items()}), SpreadArtifact(out)
    sp.save(art.report)
    art.markdown.write_text(spread_markdown(sp))
    save_spread_chart(art.chart, sp)
    store.finalize(key, "spread", {"seeds": list(seeds)}, {f"seed_{s}": k for s, k in eval_keys.items()},
                   {f"{k}_mean": st.mean for k, st in sp.metrics.items()}, started)
    log.info("spread over seeds %s: %s", list(seeds), art.markdown)
    return out


def run_seeds(cfg: Config, seeds: Sequence[int], until: Optional[str] = None, start: Optional[str] = None,
              force: tuple[str, ...] = ()) -> dict:
    """Without Prefect: the DAG per seed (shared artifacts computed by the first seed that needs
    them), then the spread report when evaluate ran."""
    from stages.runner import run_all, select
    done = {}
    for s in seeds:
        log.info("seed %d of %s", s, list(seeds))
        done[f"seed_{s}"] = {k: str(v) for k, v in run_all(with_seed(cfg, s), until, start, force).items()}
    if "evaluate" in select(until, start, cfg):
        done["spread"] = str(write_spread(cfg, seeds))
    return done
