"""docs/extending/training-phase.md's worked example runs: its titled code blocks (the toy phase
retune, its config section, its stage record, a smoke config) copied into a temporary checkout,
plus the two one-line registrations the page describes (the section in Config, the stage in
STAGES); `wsss run --until export_cams --no-prefect` then trains retune from train_cam (one epoch
each on voc-tiny's train split) and exports its CAMs."""
from __future__ import annotations

import json
from pathlib import Path

from guide_examples import checkout_with, example_files, run_wsss

PAGE = "docs/extending/training-phase.md"


def _insert_after(path: Path, anchor: str, text: str) -> None:
    """The page's one-line registrations, made as a reader makes them."""
    src = path.read_text()
    assert anchor in src, f"{path}: '{anchor}' not found: update the page's registration steps"
    path.write_text(src.replace(anchor, anchor + text, 1))


def test_toy_phase_trains_and_export_cams_reads_it(tmp_path):
    files = example_files(PAGE)
    assert {"pipeline/semples/phases/retune.py", "pipeline/config/retune.py", "stages/retune.py",
            "configs/voc-retune-smoke.yaml"} <= set(files)
    co = checkout_with(tmp_path / "co", files)
    root = co / "pipeline/config/root.py"
    _insert_after(root, "from pipeline.config.base import Section\n",
                  "from pipeline.config.retune import RetuneCfg\n")
    _insert_after(root, "    refine: RefineCfg = Field(default_factory=RefineCfg)\n",
                  "    retune: RetuneCfg = Field(default_factory=RetuneCfg)\n")
    stages_init = co / "stages/__init__.py"
    _insert_after(stages_init, "refine, ", "retune, ")
    _insert_after(stages_init, "refine.STAGE, ", "retune.STAGE, ")

    res = run_wsss(co, ["run", "--config", "configs/voc-retune-smoke.yaml", "--until", "export_cams",
                        "--no-prefect"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    work = co / "runs/retune-smoke"
    (retune,) = [d for d in work.glob("retune-*") if (d / "manifest.json").exists()]
    assert (retune / "model.pt").is_file() and (retune / "retune_history.json").is_file()
    (export,) = [d for d in work.glob("export_cams-*") if (d / "manifest.json").exists()]
    inputs = json.loads((export / "manifest.json").read_text())["inputs"]
    assert inputs["retune"] == retune.name and "refine" not in inputs and "match" not in inputs
    assert not list(work.glob("match-*")) and not list(work.glob("refine-*"))
