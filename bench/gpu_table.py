"""The one table of bench/gpu_check.sh: each goal of issue #36 against the figure a bench
measured (the RESULT line of its log in LOGS) and the bench's state (LOGS/states.tsv: name,
state, seconds). A figure counts against its goal only where the bench says it is a GPU
figure (gpu=True); on a CPU, and after gpu_check.sh --quick (--quick here), every goal reads
"no GPU figure".

    python bench/gpu_table.py runs/gpu_check [--quick]
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

TRAIN_AUG = 10_582
M2F_ITERS = 80_000  # voc-full train_segmentation.iters


def result(logs: Path, bench: str, tag: str) -> dict:
    """The last ``tag`` line of ``bench``'s log as {key: value} ({} if none)."""
    path = logs / f"{bench}.log"
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith(tag)] if path.exists() else []
    return dict(re.findall(r"(\w+)=(\S+)", lines[-1])) if lines else {}


def number(r: dict, key: str) -> float:
    try:
        return float(r[key])
    except (KeyError, ValueError):
        return math.nan


def rows(logs: Path) -> list[tuple]:
    """(goal, figure, unit, target, at most?, gpu figure?, bench) per goal."""
    ts, ex = result(logs, "train_step", "TRAIN_STEP_RESULT"), result(logs, "export_speed", "EXPORT_RESULT")
    sam, m2f = result(logs, "sam_speed", "SAM_SPEED_RESULT"), result(logs, "m2f_step", "M2F_RESULT")
    smoke = result(logs, "gpu_smoke", "GPU_SMOKE_RESULT")
    gpu = {name: r.get("gpu") == "True" for name, r in
           (("train_step", ts), ("export_speed", ex), ("sam_speed", sam), ("gpu_smoke", smoke))}
    m2f_h = number(m2f, "s_per_iter") * M2F_ITERS / 3600
    gpu["m2f_step"] = not math.isnan(m2f_h)  # it measures on CUDA only
    sam_h = TRAIN_AUG / number(sam, "ips") / 3600 if number(sam, "ips") > 0 else math.nan
    whole = number(smoke, "hours") + sam_h + m2f_h  # phases, export, pseudo masks + SAM + final model
    return [
        ("match images/s (official batch)", number(ts, "match"), "img/s", 880, False, gpu["train_step"], "train_step"),
        ("refine images/s (official batch)", number(ts, "refine"), "img/s", 880, False, gpu["train_step"],
         "train_step"),
        ("export images/s (VOC scales)", number(ex, "ips"), "img/s", 200, False, gpu["export_speed"], "export_speed"),
        ("SAM ViT-H images/s", number(sam, "ips"), "img/s", 2, False, gpu["sam_speed"], "sam_speed"),
        ("Mask2Former Swin-L 80k iters", m2f_h, "h", 6, True, gpu["m2f_step"], "m2f_step"),
        ("whole voc-full", whole, "GPU-h", 10, True, all(gpu.values()), "gpu_smoke+sam_speed+m2f_step"),
    ]


def verdict(figure: float, target: float, at_most: bool, gpu: bool) -> str:
    if math.isnan(figure):
        return "no figure"
    if not gpu:
        return "no GPU figure"
    return "meets" if (figure <= target if at_most else figure >= target) else "MISSES"


def main(logs: Path, quick: bool = False) -> None:
    states = {}
    if (logs / "states.tsv").exists():
        for line in (logs / "states.tsv").read_text().splitlines():
            name, state, secs = line.split("\t")
            states[name] = f"{state} {secs}s"
    print(f"{'goal':34s} {'figure':>10s} {'target':>12s}  {'verdict':13s} bench (state, seconds)")
    for goal, figure, unit, target, at_most, gpu, bench in rows(logs):
        shown = "-" if math.isnan(figure) else f"{figure:.2f}"
        state = ", ".join(f"{b} {states.get(b, 'not run')}" for b in bench.split("+"))
        print(f"{goal:34s} {shown:>10s} {('<= ' if at_most else '>= ') + f'{target:g} {unit}':>12s}  "
              f"{verdict(figure, target, at_most, gpu and not quick):13s} {state}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    main(Path(args[0] if args else "runs/gpu_check"), "--quick" in sys.argv[1:])
