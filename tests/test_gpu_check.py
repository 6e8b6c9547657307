"""bench/gpu_check.sh: its table of goals (bench/gpu_table.py) from the benches' RESULT lines,
and the whole script end to end on this machine in --quick mode (CUDA-only parts skipped)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_table  # noqa: E402

LOGS = {"train_step": "TRAIN_STEP_RESULT match=900.00 refine=850.00 batch=64 gpu=True",
        "export_speed": "EXPORT_RESULT ips=250.00 gpu=True",
        "sam_speed": "SAM_SPEED_RESULT ips=2.5000 tiny=False gpu=True",
        "m2f_step": "M2F_RESULT s_per_iter=0.2250",
        "gpu_smoke": "GPU_SMOKE_RESULT hours=2.000 gpu=True"}


def test_the_table_holds_each_goal_against_its_figure(tmp_path, capsys):
    for name, line in LOGS.items():
        (tmp_path / f"{name}.log").write_text(f"some output\n{line}\n")
    (tmp_path / "states.tsv").write_text("".join(f"{n}\tok\t10\n" for n in LOGS))
    rows = {r[0]: r for r in gpu_table.rows(tmp_path)}
    m2f_h = 0.225 * 80_000 / 3600  # 5 h
    assert rows["Mask2Former Swin-L 80k iters"][1] == pytest.approx(m2f_h)
    assert rows["whole voc-full"][1] == pytest.approx(2.0 + 10_582 / 2.5 / 3600 + m2f_h)
    gpu_table.main(tmp_path)
    out = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "meets" in out["match images/s (official batch)"] and "MISSES" in out["refine images/s (official batch)"]
    assert all("meets" in out[g] for g in ("export images/s (VOC scales)", "SAM ViT-H images/s",
                                           "Mask2Former Swin-L 80k iters", "whole voc-full"))
    (tmp_path / "export_speed.log").write_text("EXPORT_RESULT ips=250.00 gpu=False\n")  # a CPU figure
    (tmp_path / "m2f_step.log").write_text("M2F_RESULT s_per_iter=nan\n")  # skipped
    verdicts = {r[0]: gpu_table.verdict(*r[1:2], *r[3:6]) for r in gpu_table.rows(tmp_path)}
    gpu_table.main(tmp_path, quick=True)
    assert "meets" not in capsys.readouterr().out  # --quick: no figure is a goal's
    assert verdicts["export images/s (VOC scales)"] == "no GPU figure"
    assert verdicts["Mask2Former Swin-L 80k iters"] == verdicts["whole voc-full"] == "no figure"


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_here_in_quick_mode(tmp_path):
    """About a minute on a CPU: every bench runs with tiny arguments, m2f_step says it is skipped."""
    env = {**os.environ, "LOGS": str(tmp_path / "logs"), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), "--quick"], capture_output=True, text=True,
                         env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = res.stdout[res.stdout.index("goal "):]
    for goal in ("match images/s", "export images/s", "SAM ViT-H", "Mask2Former Swin-L", "whole voc-full"):
        assert goal in table
    states = dict(line.split("\t")[:2] for line in (tmp_path / "logs/states.tsv").read_text().splitlines())
    import torch
    assert states == {"train_step": "ok", "export_speed": "ok", "gpu_smoke": "ok", "sam_speed": "ok",
                      "m2f_step": "ok" if torch.cuda.is_available() else "skipped"}
    assert "meets" not in table and "MISSES" not in table  # --quick: tiny models, no goal's figure
