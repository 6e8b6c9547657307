"""`wsss compare`: the evaluate reports of several runs side by side.

A run is an evaluate artifact directory (holding report.json) or a run
store holding exactly one finished evaluate artifact; the CLI also accepts
configs and resolves them to their evaluate artifact. Output: one text table
(markdown) of seed / pseudo-mask / final mIoU and per-class IoU, and a bar
chart PNG. Numbers that used ground truth to choose something (the seed
threshold sweep) are marked with '*'.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GT_MARK = "*"
GT_NOTE = (f"{GT_MARK} the background threshold was chosen with ground truth (best of the sweep): "
           "an upper bound, not a label-free number")


class CompareError(ValueError):
    """A run that cannot be compared, naming it."""


@dataclass
class Run:
    label: str
    path: Path  # evaluate artifact directory
    report: dict


def find_evaluate_dir(path: Path) -> Path:
    """An evaluate artifact directory, or the one finished evaluate artifact of a run store."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such run directory or config")
    if (path / "report.json").exists():
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
    p = Path(eval_dir) / "report.json"
    if not (Path(eval_dir) / "manifest.json").exists():
        raise CompareError(f"{label}: {eval_dir} is not a finished evaluate artifact (no manifest.json)")
    try:
        report = json.loads(p.read_text())
        for k in ("seed", "seed_sweep", "pseudo_mask", "final_model"):
            report[k]
    except (OSError, ValueError, KeyError) as e:
        raise CompareError(f"{label}: {p} is not an evaluate report ({e!r})") from None
    return Run(label, Path(eval_dir), report)


# (key, row label, uses ground truth to choose something)
KINDS = [("seed", "seed mIoU (fixed threshold)", False), ("seed_best", f"seed mIoU (best threshold){GT_MARK}", True),
         ("pseudo", "pseudo-mask mIoU", False), ("final", "final model mIoU (val)", False)]


def summary(run: Run) -> dict[str, tuple[float | None, str]]:
    """(mIoU, detail) of each kind in KINDS for one run."""
    r = run.report
    final = r["final_model"]
    return {"seed": (r["seed"]["miou"], f"t={r['seed']['bg_threshold']}"),
            "seed_best": (r["seed_sweep"]["best_miou"], f"t={r['seed_sweep']['best_threshold']}"),
            "pseudo": (r["pseudo_mask"]["miou"], ""),
            "final": (final["miou"] if final.get("available") else None, "")}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def compare_table(runs: list[Run]) -> str:
    """Markdown table: rows = figures, columns = runs; then per-class IoU as seed / pseudo / final."""
    lines = ["| | " + " | ".join(r.label for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    row = lambda label, cells: lines.append(f"| {label} | " + " | ".join(cells) + " |")  # noqa: E731
    row("CAM source", [r.report.get("cam_source", "not recorded") for r in runs])
    row("eval split (images)", [f"{r.report.get('eval_split')} ({r.report.get('num_images')})" for r in runs])
    sums = [summary(r) for r in runs]
    for key, label, _ in KINDS:
        row(label, [_fmt(s[key][0]) + (f" ({s[key][1]})" if s[key][1] else "") for s in sums])
    route_names = list(dict.fromkeys(m for r in runs for m in r.report.get("pseudo_mask_routes", {})))
    for m in route_names:  # every pseudo-mask route a run scored; 'trained' marks the final model's
        row(f"pseudo-mask mIoU, route {m}", [
            (_fmt(r.report["pseudo_mask_routes"][m]["miou"]) + (" (trained)" if r.report.get("trained_route") == m
                                                                 else "")) if m in r.report.get("pseudo_mask_routes", {})
            else "n/a" for r in runs])
    row("**per-class IoU**: seed / pseudo mask / final", ["" for _ in runs])
    for c in runs[0].report["seed"]["per_class_iou"]:
        cells = []
        for r in runs:
            rep = r.report
            final = rep["final_model"].get("per_class_iou", {}) if rep["final_model"].get("available") else {}
            cells.append(" / ".join(_fmt(x) for x in (rep["seed"]["per_class_iou"].get(c),
                                                      rep["pseudo_mask"]["per_class_iou"].get(c), final.get(c))))
        row(c, cells)
    return "\n".join(lines) + f"\n\n{GT_NOTE}\n"


def save_compare_chart(runs: list[Run], path: Path) -> None:
    """Top: mIoU figures grouped by kind, one bar per run (GT-selected ones hatched).
    Bottom: per-class pseudo-mask IoU, one bar per run."""
    import numpy as np

    from pipeline.plots import plt

    sums = [summary(r) for r in runs]
    classes = list(runs[0].report["pseudo_mask"]["per_class_iou"])
    w = 0.8 / len(runs)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 0.45 * len(classes) + 2), 8),
                                      gridspec_kw={"height_ratios": [1, 1.3]})
    x = np.arange(len(KINDS))
    for i, (r, s) in enumerate(zip(runs, sums)):
        bars = top.bar(x + i * w, [s[k][0] or 0.0 for k, _, _ in KINDS], width=w, label=r.label, color=f"C{i}")
        for b, (_, _, uses_gt) in zip(bars, KINDS):
            if uses_gt:
                b.set_hatch("//")
    top.set_xticks(x + w * (len(runs) - 1) / 2)
    top.set_xticklabels([label.replace(" mIoU", "\n") for _, label, _ in KINDS], fontsize=8)
    top.set_ylabel("mIoU (%)")
    top.set_title(f"mIoU per run ({GT_MARK}, hatched: threshold chosen with ground truth)", fontsize=9)
    top.legend(fontsize=7)
    xc = np.arange(len(classes))
    for i, r in enumerate(runs):
        vals = [r.report["pseudo_mask"]["per_class_iou"].get(c) or 0.0 for c in classes]
        bottom.bar(xc + i * w, vals, width=w, label=r.label, color=f"C{i}")
    bottom.set_xticks(xc + w * (len(runs) - 1) / 2)
    bottom.set_xticklabels(classes, rotation=60, ha="right", fontsize=7)
    bottom.set_ylabel("pseudo-mask IoU (%)")
    bottom.set_title("per-class pseudo-mask IoU", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
