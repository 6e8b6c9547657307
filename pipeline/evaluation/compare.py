"""`wsss compare`: the evaluate reports of several runs side by side.

A run is an evaluate artifact directory (holding report.json) or a run
store holding exactly one finished evaluate artifact; the CLI also accepts
configs and resolves them to their evaluate artifact. Output: one text table
(markdown) of seed / pseudo-mask / final mIoU, per-class IoU and pseudo-mask
pixel shares, and a bar chart PNG. A run whose eval split has no ground-truth
masks (a folder dataset) has no seed or pseudo-mask scores: those cells say
n/a. Numbers that used ground truth to choose something (the seed threshold
sweep) are marked with '*'. Reports are read as pipeline.evaluation.report.EvalReport.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import Optional

from pipeline.artifacts import EvalArtifact, SpreadArtifact
from pipeline.evaluation.report import UNCERTAIN, EvalReport, fmt
from pipeline.evaluation.spread import SpreadReport

GT_MARK = "*"
GT_NOTE = (f"{GT_MARK} the background threshold was chosen with ground truth (best of the sweep): "
           "an upper bound, not a label-free number")


class CompareError(ValueError):
    """A run that cannot be compared, naming it."""


@dataclass
class Run:
    label: str
    path: Path  # evaluate artifact directory (a spread artifact: the first seed's evaluate)
    report: EvalReport
    spread: Optional[SpreadReport] = None  # several seeds: the mIoU figures are their mean +- std


SPREAD_KEYS = {"seed": "seed_miou", "seed_best": "seed_best_miou_gt_sweep", "pseudo": "pseudo_mask_miou",
               "final": "final_val_miou"}  # KINDS -> SpreadReport.metrics


def find_evaluate_dir(path: Path) -> Path:
    """An evaluate artifact directory, or the one finished evaluate artifact of a run store."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such run directory or config")
    if EvalArtifact(path).report.exists() or SpreadArtifact(path).report.exists():
        return path
    found = sorted(d for d in path.glob("evaluate-*") if (d / "manifest.json").exists())
    if not found:
        raise CompareError(f"{path}: no evaluate artifact here (no report.json, no finished evaluate-* "
                           "directory); run the pipeline through evaluate first")
    if len(found) > 1:
        raise CompareError(f"{path}: {len(found)} evaluate artifacts ({', '.join(d.name for d in found)}); "
                           "name one of them or the config that made it")
    return found[0]


def load_run(label: str, eval_dir: Path) -> Run:
    if not (Path(eval_dir) / "manifest.json").exists():
        raise CompareError(f"{label}: {eval_dir} is not a finished evaluate artifact (no manifest.json)")
    try:
        if SpreadArtifact(eval_dir).report.exists():
            sp = SpreadReport.load(SpreadArtifact(eval_dir).report)
            first = Path(sp.evaluate[str(sp.seeds[0])])
            return Run(f"{label} ({len(sp.seeds)} seeds)", first, EvalReport.load(EvalArtifact(first).report), sp)
        return Run(label, Path(eval_dir), EvalReport.load(EvalArtifact(eval_dir).report))
    except ValueError as e:
        raise CompareError(f"{label}: {e}") from None


# (key, row label, uses ground truth to choose something)
KINDS = [("seed", "seed mIoU (fixed threshold)", False), ("seed_best", f"seed mIoU (best threshold){GT_MARK}", True),
         ("pseudo", "pseudo-mask mIoU", False), ("final", "final model mIoU (val)", False)]


def summary(run: Run) -> dict[str, tuple[float | None, str]]:
    """(mIoU, detail) of each kind in KINDS for one run; (None, "no GT") where its split has no masks."""
    r = run.report
    seed, sweep, pseudo = r.seed, r.seed_sweep, r.pseudo_mask
    if run.spread:
        st = {k: run.spread.metrics.get(m) for k, m in SPREAD_KEYS.items()}
        return {k: (s.mean, f"± {s.std:.2f}, n={s.n}" if s.std is not None else f"n={s.n}") if s else (None, "no GT")
                for k, s in st.items()}
    return {"seed": (seed.miou, f"t={seed.bg_threshold}") if seed else (None, "no GT"),
            "seed_best": (sweep.best_miou, f"t={sweep.best_threshold}") if sweep else (None, "no GT"),
            "pseudo": (pseudo.miou, "") if pseudo else (None, "no GT"),
            "final": (r.final_miou, "")}


def _spread_cell(run: Run, metric: str) -> str:
    st = run.spread.metrics.get(metric)
    return "n/a" if st is None else fmt(st.mean) + (f" ± {st.std:.2f}" if st.std is not None else "")


def _spread_per_class(run: Run) -> dict[str, dict]:
    """{class: {seed, pseudo_mask, final_val: mean IoU over seeds}} of a multi-seed run."""
    pc = run.spread.per_class_iou
    parts = {"seed": pc.get("seed", {}), "pseudo_mask": pc.get(f"pseudo_mask_{run.report.trained_route}", {}),
             "final_val": pc.get("final_val", {})}
    return {c: {k: (v[c].mean if c in v else None) for k, v in parts.items()} for c in run.report.classes()}


def classes(runs: list[Run]) -> list[str]:
    """Class names of all runs, in first-seen order (runs on other datasets add theirs)."""
    return list(dict.fromkeys(c for r in runs for c in r.report.classes()))


def compare_table(runs: list[Run]) -> str:
    """Markdown table: rows = figures, columns = runs; then per-class IoU as seed / pseudo / final,
    then each class's share of the pseudo-mask pixels."""
    lines = ["| | " + " | ".join(r.label for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    row = lambda label, cells: lines.append(f"| {label} | " + " | ".join(cells) + " |")  # noqa: E731
    row("CAM source", [r.report.cam_source for r in runs])
    row("eval split (images)", [f"{r.report.eval_split} ({r.report.num_images})" for r in runs])
    row("images with ground truth", [str(r.report.num_images_with_gt) for r in runs])
    sums = [summary(r) for r in runs]
    for key, label, _ in KINDS:
        row(label, [fmt(s[key][0]) + (f" ({s[key][1]})" if s[key][1] else "") for s in sums])
    route_names = list(dict.fromkeys(m for r in runs for m in (r.report.pseudo_mask_routes or {})))
    for m in route_names:  # every pseudo-mask route a run scored; 'trained' marks the final model's
        row(f"pseudo-mask mIoU, route {m}", [
            (_spread_cell(r, f"pseudo_mask_miou_{m}") if r.spread else fmt(routes[m].miou))
            + (" (trained)" if r.report.trained_route == m else "")
            if m in (routes := r.report.pseudo_mask_routes or {}) else "n/a" for r in runs])
    names = classes(runs)
    row("**per-class IoU**: seed / pseudo mask / final" + (" (several seeds: their mean)" if any(
        r.spread for r in runs) else ""), ["" for _ in runs])
    per_class = [_spread_per_class(r) if r.spread else {p["class"]: p for p in r.report.per_class()} for r in runs]
    for c in names:
        row(c, [" / ".join(fmt(pc.get(c, {}).get(k)) for k in ("seed", "pseudo_mask", "final_val"))
                for pc in per_class])
    row("**pseudo-mask pixel share (%)**", ["" for _ in runs])
    for c in [*names, UNCERTAIN]:
        row(f"{c} (share)", [fmt(None if (v := r.report.pseudo_mask_pixel_shares.get(c)) is None else 100 * v)
                             for r in runs])
    return "\n".join(lines) + f"\n\n{GT_NOTE}\n"


def save_compare_chart(runs: list[Run], path: Path) -> None:
    """Top: mIoU figures grouped by kind, one bar per run (GT-selected ones hatched).
    Bottom: per-class pseudo-mask IoU, one bar per run."""
    import numpy as np

    from pipeline.plots import plt

    sums = [summary(r) for r in runs]
    names = classes(runs)
    w = 0.8 / len(runs)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 0.45 * len(names) + 2), 8),
                                      gridspec_kw={"height_ratios": [1, 1.3]})
    x = np.arange(len(KINDS))
    for i, (r, s) in enumerate(zip(runs, sums)):
        # n/a (no GT, no final model): no bar
        err = [(st.std or 0) if r.spread and (st := r.spread.metrics.get(SPREAD_KEYS[k])) else 0 for k, _, _ in KINDS]
        bars = top.bar(x + i * w, [np.nan if s[k][0] is None else s[k][0] for k, _, _ in KINDS], width=w,
                       label=r.label, color=f"C{i}", yerr=err if r.spread else None, capsize=3)
        for b, (_, _, uses_gt) in zip(bars, KINDS):
            if uses_gt:
                b.set_hatch("//")
    top.set_xticks(x + w * (len(runs) - 1) / 2)
    top.set_xticklabels([label.replace(" mIoU", "\n") for _, label, _ in KINDS], fontsize=8)
    top.set_ylabel("mIoU (%)")
    top.set_title(f"mIoU per run ({GT_MARK}, hatched: threshold chosen with ground truth; error bars: std over "
                  "seeds)", fontsize=9)
    top.legend(fontsize=7)
    xc = np.arange(len(names))
    for i, r in enumerate(runs):
        pseudo = r.report.pseudo_mask.per_class_iou if r.report.pseudo_mask else {}
        vals = [np.nan if pseudo.get(c) is None else pseudo[c] for c in names]
        err = None
        if r.spread and (part := r.spread.per_class_iou.get(f"pseudo_mask_{r.report.trained_route}")):
            vals = [part[c].mean if c in part else np.nan for c in names]
            err = [part[c].std or 0 if c in part else 0 for c in names]
        bottom.bar(xc + i * w, vals, width=w, label=r.label, color=f"C{i}", yerr=err, capsize=2)
    bottom.set_xticks(xc + w * (len(runs) - 1) / 2)
    bottom.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    bottom.set_ylabel("pseudo-mask IoU (%)")
    bottom.set_title("per-class pseudo-mask IoU (no bar: n/a, e.g. no ground truth)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
