"""How a run plan's stages stand, in words: the `wsss status` table (state, size, key, cost
and headline number of each stage; below a damaged artifact, the files that fail their
manifest entry) and the headline numbers the runner logs when a stage is done. Counts
print as integers, other numbers with 4 significant digits."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.resources import cost_row, total_row
from stages.plan import RunPlan

# the number a stage is judged by, where it has one: the training stages' seed mIoU (selected epoch,
# else the last), else their last loss; segmentation's and evaluate's mIoU
HEADLINE = ("selected_seed_miou", "final_seed_miou", "final_loss", "miou", "seed_miou", "final_val_miou")


def _numbers(metrics: Optional[dict]) -> dict:
    """The numeric metrics (not a flag, not a text such as the selection label)."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def headline(metrics: Optional[dict]) -> tuple[str, float] | None:
    """(name, value) of a stage's headline number: the first of HEADLINE it has, else its
    first numeric metric."""
    num = _numbers(metrics)
    for k in (*HEADLINE, *num):
        if k in num:
            return k, num[k]
    return None


def metrics_line(metrics: Optional[dict]) -> str:
    """The first three numeric metrics, as the runner logs a finished stage."""
    return ", ".join(f"{k}={number(v)}" for k, v in list(_numbers(metrics).items())[:3])


def _cost(value, width: int, fmt: str) -> str:
    return f"{value:>{width}{fmt}}" if value is not None else f"{'-':>{width}}"


def _costs(r: dict) -> str:
    return (f"{_cost(r.get('wall_s'), 9, '.1f')}{_cost(r.get('gpu_hours'), 9, '.3f')}"
            f"{_cost(r.get('peak_rss_mb'), 9, '.0f')}{_cost(r.get('cuda_max_allocated_mb'), 9, '.0f')}")


def status_lines(plan: RunPlan, config: Path, show: int = 20) -> list[str]:
    """The `wsss status` table of every stage of ``plan``: state, size, key, cost columns and
    headline metric; ``show`` damaged files under each corrupt artifact; the total; and, when
    something is damaged, the commands that repair it (``config``: the config's path)."""
    store = plan.store
    lines = [f"{'stage':<20}{'state':<9}{'size':>10}  {'key':<36}{'wall s':>9}{'GPU-h':>9}{'RSS MB':>9}"
             f"{'CUDA MB':>9}  {'device':<10}metric"]
    rows, corrupt = [], []
    for name in plan.names:
        key, state = plan.keys[name], plan.state(name)
        man = (store.manifest(key) or {}) if state == "cached" else {}
        head = headline(man.get("metrics")) if man else None
        r = cost_row(man) if man else {}
        rows += [r] if r else []
        lines.append(f"{name:<20}{state:<9}{store.size(key) / 1e6:>8.1f}MB  {key:<36}{_costs(r)}  "
                     f"{(r.get('device') or '-'):<10}{f'{head[0]}={number(head[1])}' if head else ''}")
        if state == "corrupt":
            bad = store.problems(key, plan.damage(name))
            corrupt.append(name)
            lines += [f"    damaged: {line}" for line in bad[:show]]
            if len(bad) > show:
                lines.append(f"    ... and {len(bad) - show} more damaged files")
    lines.append(f"{'total':<20}{'':<9}{'':>10}  {'':<36}{_costs(total_row(rows))}  (peaks: the largest stage)")
    if corrupt:
        lines.append(f"`wsss run --config {config}` recomputes the damaged files (and only those, in per-image "
                     f"stages); `wsss run --config {config} --force {' --force '.join(corrupt)}` recomputes "
                     "the whole stage")
    return lines
