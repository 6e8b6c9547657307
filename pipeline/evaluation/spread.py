"""Spread over seeds: the evaluate reports of one config run with several run.seed values,
summarised per metric (mean, standard deviation, min, max and every seed's value) and per class
(IoU of the seeds, of each pseudo-mask route and of the final model).

Standard deviation: the sample one (ddof=1, what "mean +- std over N runs" in papers means);
None for a single seed. A class whose IoU is None in a seed's report (in neither its ground truth
nor its prediction) is left out of that class's statistics, and ``n`` says how many seeds remain.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.evaluation.protocol import Protocol
from pipeline.evaluation.report import EvalReport
from pipeline.fileio import write_json_atomic

STD_RULE = "sample standard deviation over seeds (ddof=1); None for one seed"


class Stat(BaseModel):
    mean: float
    std: Optional[float]
    min: float
    max: float
    n: int
    values: dict[str, float]  # seed -> value

    @classmethod
    def of(cls, values: dict[str, Optional[float]]) -> Optional["Stat"]:
        v = {k: float(x) for k, x in values.items() if x is not None and not math.isnan(x)}
        if not v:
            return None
        xs = list(v.values())
        mean = math.fsum(xs) / len(xs)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        return cls(mean=mean, std=std, min=min(xs), max=max(xs), n=len(xs), values=v)

    def text(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}" if self.std is not None else f"{self.mean:.2f}"


class SpreadReport(BaseModel):
    model_config = ConfigDict(extra="allow")
    seeds: list[int]
    evaluate: dict[str, str]  # seed -> evaluate artifact directory
    std_rule: str = STD_RULE
    metrics: dict[str, Stat]
    per_class_iou: dict[str, dict[str, Stat]]  # part (seed, pseudo_mask_<route>, final_val) -> class -> Stat
    protocol: Optional[Protocol] = None  # the first seed's (the seeds differ in run.seed only)

    def save(self, path: Path) -> None:
        write_json_atomic(Path(path), self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: Path) -> "SpreadReport":
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except (OSError, ValidationError) as e:
            raise ValueError(f"{path}: not a spread report ({e})") from None


def headline(r: EvalReport) -> dict[str, float]:
    """The numbers of one report that the spread summarises (percent)."""
    out: dict[str, float] = {}
    if r.seed:
        out |= {"seed_miou": r.seed.miou, "seed_fg_precision": r.seed.fg_precision, "seed_fg_recall": r.seed.fg_recall}
    if r.seed_sweep:
        out["seed_best_miou_gt_sweep"] = r.seed_sweep.best_miou
        if r.seed_sweep.official_miou is not None:
            out["seed_official_miou_gt_sweep"] = r.seed_sweep.official_miou
    if r.pseudo_mask:
        out["pseudo_mask_miou"] = r.pseudo_mask.miou
    for k, v in (r.pseudo_mask_routes or {}).items():
        out[f"pseudo_mask_miou_{k}"] = v.miou
    if r.final_model.available:
        out["final_val_miou"] = r.final_model.miou
    return {k: v for k, v in out.items() if v is not None}


def per_class_parts(r: EvalReport) -> dict[str, dict[str, Optional[float]]]:
    parts = {}
    if r.seed:
        parts["seed"] = r.seed.per_class_iou
    for k, v in (r.pseudo_mask_routes or {}).items():
        parts[f"pseudo_mask_{k}"] = v.per_class_iou
    if r.final_model.available:
        parts["final_val"] = r.final_per_class
    return parts


def spread(reports: dict[int, EvalReport], dirs: dict[int, str]) -> SpreadReport:
    seeds = list(reports)
    heads = {s: headline(r) for s, r in reports.items()}
    names = list(dict.fromkeys(k for h in heads.values() for k in h))
    metrics = {k: st for k in names if (st := Stat.of({str(s): heads[s].get(k) for s in seeds}))}
    parts = {s: per_class_parts(r) for s, r in reports.items()}
    per_class: dict[str, dict[str, Stat]] = {}
    for part in dict.fromkeys(p for ps in parts.values() for p in ps):
        classes = dict.fromkeys(c for ps in parts.values() for c in ps.get(part, {}))
        stats = {c: st for c in classes if (st := Stat.of({str(s): parts[s].get(part, {}).get(c) for s in seeds}))}
        if stats:
            per_class[part] = stats
    first = reports[seeds[0]]
    return SpreadReport(seeds=seeds, evaluate={str(s): str(d) for s, d in dirs.items()}, metrics=metrics,
                        per_class_iou=per_class, protocol=first.protocol)


def spread_markdown(sp: SpreadReport) -> str:
    seeds = [str(s) for s in sp.seeds]
    cell = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# Spread over seeds {', '.join(seeds)}", "", f"Standard deviation: {sp.std_rule}.", "",
             "| metric | mean | std | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---" * (5 + len(seeds)) + "|"]
    for k, st in sp.metrics.items():
        lines.append(f"| {k} | {st.mean:.2f} | {cell(st.std)} | {st.min:.2f} | {st.max:.2f} | "
                     + " | ".join(cell(st.values.get(s)) for s in seeds) + " |")
    parts = list(sp.per_class_iou)
    if parts:
        classes = list(dict.fromkeys(c for p in parts for c in sp.per_class_iou[p]))
        lines += ["", "## Per-class IoU, mean ± std over seeds", "", "| class | " + " | ".join(parts) + " |",
                  "|---" * (len(parts) + 1) + "|"]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(st.text() if (st := sp.per_class_iou[p].get(c)) else "n/a"
                                                  for p in parts) + " |")
    if sp.protocol:
        from pipeline.evaluation.protocol import protocol_markdown
        lines += ["", *protocol_markdown(sp.protocol)]
    lines += ["", "Per-seed evaluate artifacts: " + "; ".join(f"seed {s}: `{d}`" for s, d in sp.evaluate.items())]
    return "\n".join(lines) + "\n"


def save_spread_chart(path: Path, sp: SpreadReport) -> None:
    """mIoU figures as mean bars with std error bars and every seed as a dot; below, the
    per-class IoU of the trained pseudo-mask route (or the seeds) the same way."""
    import numpy as np

    from pipeline.plots import plt
    keys = [k for k in sp.metrics if "miou" in k]
    part = next((p for p in sp.per_class_iou if p.startswith("pseudo_mask")), next(iter(sp.per_class_iou), None))
    fig, axes = plt.subplots(2 if part else 1, 1, figsize=(max(7, 0.5 * len(keys) + 3), 8 if part else 4),
                             squeeze=False)

    def bars(ax, stats: dict, title: str):
        x = np.arange(len(stats))
        ax.bar(x, [s.mean for s in stats.values()], yerr=[s.std or 0 for s in stats.values()], capsize=4,
               color="C0", alpha=0.7, label="mean ± std")
        for i, s in enumerate(stats.values()):
            ax.scatter([i] * len(s.values), list(s.values.values()), color="k", s=10, zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels(list(stats), rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("%")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    bars(axes[0][0], {k: sp.metrics[k] for k in keys}, f"mIoU over seeds {sp.seeds} (dots: seeds)")
    if part:
        bars(axes[1][0], sp.per_class_iou[part], f"per-class IoU, {part}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
