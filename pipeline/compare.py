"""`wsss compare`: the evaluate reports of several runs side by side.

A run is an evaluate artifact directory (holding report.json) or a run
store holding exactly one finished evaluate artifact; the CLI also accepts
configs and resolves them to their evaluate artifact. Output: one text table
(markdown) of seed / pseudo-mask / final mIoU, per-class IoU and pseudo-mask
pixel shares, and a bar chart PNG. A run whose eval split has no ground-truth
masks (a folder dataset) has no seed or pseudo-mask scores: those cells say
n/a. Numbers that used ground truth to choose something (the seed threshold
sweep) are marked with '*'.
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
        # GT scores come as a group; without GT masks a report has the pixel shares only
        needed = ["final_model", *(("seed", "seed_sweep", "pseudo_mask") if "seed" in report
                                   else ("pseudo_mask_pixel_shares",))]
        for k in needed:
            report[k]
    except (OSError, ValueError, KeyError) as e:
        raise CompareError(f"{label}: {p} is not an evaluate report ({e!r})") from None
    return Run(label, Path(eval_dir), report)


# (key, row label, uses ground truth to choose something)
KINDS = [("seed", "seed mIoU (fixed threshold)", False), ("seed_best", f"seed mIoU (best threshold){GT_MARK}", True),
         ("pseudo", "pseudo-mask mIoU", False), ("final", "final model mIoU (val)", False)]


def summary(run: Run) -> dict[str, tuple[float | None, str]]:
    """(mIoU, detail) of each kind in KINDS for one run; (None, "no GT") where its split has no masks."""
    r = run.report
    final = r["final_model"]
    out = {"seed": (None, "no GT"), "seed_best": (None, "no GT"), "pseudo": (None, "no GT"),
           "final": (final["miou"] if final.get("available") else None, "")}
    if "seed" in r:
        out.update(seed=(r["seed"]["miou"], f"t={r['seed']['bg_threshold']}"),
                   seed_best=(r["seed_sweep"]["best_miou"], f"t={r['seed_sweep']['best_threshold']}"),
                   pseudo=(r["pseudo_mask"]["miou"], ""))
    return out


def per_class(run: Run, part: str) -> dict[str, float | None]:
    """Per-class IoU of 'seed', 'pseudo_mask' or 'final_model' ({} where not available)."""
    r = run.report.get(part, {})
    return r.get("per_class_iou", {}) if r.get("available", True) else {}


def classes_of(runs: list[Run]) -> list[str]:
    """Class names of all runs, in first-seen order (runs on other datasets add theirs)."""
    names = {}
    for r in runs:
        names.update(dict.fromkeys(per_class(r, "seed") or
                                   [c for c in r.report.get("pseudo_mask_pixel_shares", {}) if c != "uncertain (255)"]))
    return list(names)


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
    classes = classes_of(runs)
    row("**per-class IoU**: seed / pseudo mask / final", ["" for _ in runs])
    for c in classes:
        row(c, [" / ".join(_fmt(per_class(r, part).get(c)) for part in ("seed", "pseudo_mask", "final_model"))
                for r in runs])
    row("**pseudo-mask pixel share (%)**", ["" for _ in runs])
    for c in [*classes, "uncertain (255)"]:
        row(f"{c} (share)", [_fmt(None if (v := r.report.get("pseudo_mask_pixel_shares", {}).get(c)) is None
                                  else 100 * v) for r in runs])
    return "\n".join(lines) + f"\n\n{GT_NOTE}\n"


def save_compare_chart(runs: list[Run], path: Path) -> None:
    """Top: mIoU figures grouped by kind, one bar per run (GT-selected ones hatched).
    Bottom: per-class pseudo-mask IoU, one bar per run."""
    import numpy as np

    from pipeline.plots import plt

    sums = [summary(r) for r in runs]
    classes = classes_of(runs)
    w = 0.8 / len(runs)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 0.45 * len(classes) + 2), 8),
                                      gridspec_kw={"height_ratios": [1, 1.3]})
    x = np.arange(len(KINDS))
    for i, (r, s) in enumerate(zip(runs, sums)):
        # n/a (no GT, no final model): no bar
        bars = top.bar(x + i * w, [np.nan if s[k][0] is None else s[k][0] for k, _, _ in KINDS], width=w,
                       label=r.label, color=f"C{i}")
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
        vals = [np.nan if (v := per_class(r, "pseudo_mask").get(c)) is None else v for c in classes]
        bottom.bar(xc + i * w, vals, width=w, label=r.label, color=f"C{i}")
    bottom.set_xticks(xc + w * (len(runs) - 1) / 2)
    bottom.set_xticklabels(classes, rotation=60, ha="right", fontsize=7)
    bottom.set_ylabel("pseudo-mask IoU (%)")
    bottom.set_title("per-class pseudo-mask IoU (no bar: n/a, e.g. no ground truth)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
