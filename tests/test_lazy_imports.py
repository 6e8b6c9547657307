"""Stage records name their work lazily (stages/contract.py Lazy), so the registry, a run
plan, its keys and `wsss status` import no model library (#38): a cached run and a status
pay for config and store, not for torch, mmseg, open_clip or SAM."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from stages import STAGES
from stages.contract import Lazy, Stage

ROOT = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = ("torch", "torchvision", "mmseg", "mmengine", "mmcv", "open_clip", "timm", "segment_anything")


def test_status_imports_no_model_library(tmp_path):
    cfg = tmp_path / "smoke.yaml"
    cfg.write_text(f"_base_: {ROOT / 'configs/voc-smoke.yaml'}\nrun: {{work_dir: {tmp_path / 'runs'}}}\n")
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom flows.cli import app\n"
            f"res = CliRunner().invoke(app, ['status', '--config', {str(cfg)!r}])\n"
            "assert res.exit_code == 0, res.output\nassert 'missing' in res.output, res.output\n"
            f"print(sorted(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def _defines(module: str, name: str) -> bool:
    """The repository's module ``module`` defines or imports ``name`` at top level (read, not imported)."""
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return name in names


def test_every_lazy_stage_function_names_a_function_of_its_module():
    lazy = [(s.name, v.target) for s in STAGES.values() for v in vars(s).values() if isinstance(v, Lazy)]
    assert len(lazy) >= 20  # the work of every stage
    for stage, target in lazy:
        assert _defines(*target.split(":")), f"stage '{stage}': {target} names no function of its module"


def test_a_lazy_function_is_imported_at_its_first_call_and_named_module_function():
    stage = Stage(name="probe", inputs=(), sections=(), version="1", run="json:dumps", check="json:loads")
    assert isinstance(stage.run, Lazy) and stage.run._fn is None
    assert stage.run([1]) == "[1]" and stage.check("[2]") == [2]
    assert stage.run.resolve() is __import__("json").dumps
    with pytest.raises(ValueError, match="'json.dumps': a lazy stage function is named 'module:function'"):
        Stage(name="probe", inputs=(), sections=(), version="1", run="json.dumps")
