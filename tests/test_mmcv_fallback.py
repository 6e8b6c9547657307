"""mmcv-lite on a GPU: Mask2Former's multi-scale deformable attention runs mmcv's own
pure-PyTorch version in place of the missing compiled op, with one warning, and the
preflight lists (or, with train_segmentation.require_compiled_ops, refuses) the compiled
ops a run needs, before any stage writes. All on CPU: the CUDA dispatch is simulated."""
from __future__ import annotations

import logging

import pytest
import torch

from pipeline.config import load_config
from pipeline.segmentation import mmcv_compat
from pipeline.segmentation.mmcv_compat import ensure_mmcv
from pipeline.weights import CompiledOpsMissing, compiled_ops, has_full_mmcv, op_path

ensure_mmcv()
from mmcv.ops import multi_scale_deform_attn as msda  # noqa: E402

lite = pytest.mark.skipif(has_full_mmcv(), reason="full mmcv installed: nothing is patched")


def test_dispatch_decision():
    assert op_path("cuda", True) == "compiled"
    assert op_path("cuda", False) == "fallback"
    assert op_path("cpu", False) == op_path("cpu", True) == "pytorch"


def random_inputs(seed=0, bs=2, heads=2, dims=4, shapes=((6, 8), (3, 4)), queries=5, points=3):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(shapes)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    value = torch.randn(bs, int((shapes[:, 0] * shapes[:, 1]).sum()), heads, dims, generator=g, requires_grad=True)
    loc = torch.rand(bs, queries, heads, len(shapes), points, 2, generator=g)
    weights = torch.rand(bs, queries, heads, len(shapes), points, generator=g).flatten(-2).softmax(-1)
    return value, shapes, starts, loc, weights.view(bs, queries, heads, len(shapes), points)


@lite
def test_the_dispatched_op_is_mmcvs_pytorch_version(caplog):
    value, shapes, starts, loc, weights = random_inputs()
    assert msda.MultiScaleDeformableAttnFunction is mmcv_compat._PyTorchMSDeformAttn
    mmcv_compat._warned = False
    with caplog.at_level(logging.WARNING, logger="wsss"):
        got = msda.MultiScaleDeformableAttnFunction.apply(value, shapes, starts, loc, weights, 64)
        msda.MultiScaleDeformableAttnFunction.apply(value, shapes, starts, loc, weights, 64)
    assert torch.equal(got, msda.multi_scale_deformable_attn_pytorch(value, shapes, loc, weights))
    got.sum().backward()  # trains: the pure version is differentiable
    assert value.grad is not None and value.grad.abs().sum() > 0
    warnings = [r.getMessage() for r in caplog.records if "compiled ops" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per process, not per call
    assert "slower" in warnings[0] and "docker/Dockerfile" in warnings[0]


@lite
def test_the_module_on_cuda_takes_the_fallback_and_computes_what_mmcv_does_on_cpu(monkeypatch):
    """MultiScaleDeformableAttention's forward as on a CUDA tensor (mmcv checks value.is_cuda)
    = its CPU forward: the same numbers through the patched op."""
    torch.manual_seed(0)
    attn = msda.MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=2, num_points=3,
                                              batch_first=True).eval()
    shapes = torch.tensor([[6, 8], [3, 4]])
    starts = torch.tensor([0, 48])
    query = torch.randn(2, 60, 16)
    ref = torch.rand(2, 60, 2, 2)
    kw = dict(value=query, query_pos=torch.randn(2, 60, 16), reference_points=ref, spatial_shapes=shapes,
              level_start_index=starts)
    cpu = attn(query, **kw)
    calls = []
    monkeypatch.setattr(mmcv_compat, "_warned", True)
    monkeypatch.setattr(msda.MultiScaleDeformableAttnFunction, "apply",
                        staticmethod(lambda *a: calls.append(1) or mmcv_compat._ms_deform_attn_pytorch(*a)))
    monkeypatch.setattr(msda, "IS_CUDA_AVAILABLE", True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    cuda = attn(query, **kw)
    monkeypatch.undo()
    assert calls and torch.equal(cuda, cpu)


def m2f(tmp_path, require=False):
    return load_config("configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(tmp_path / "runs")},
        "train_segmentation": {"model": "mask2former", "backbone": "resnet18", "require_compiled_ops": require}})


def test_preflight_lines(tmp_path, monkeypatch):
    sec = m2f(tmp_path).train_segmentation
    monkeypatch.setattr("pipeline.weights.has_full_mmcv", lambda: False)
    (line,) = compiled_ops(sec, "cuda", ["train_segmentation", "ensemble"])
    assert line.startswith("compiled op ms_deform_attn (multi-scale deformable attention (Mask2Former's pixel "
                           "decoder)) for train_segmentation, ensemble on cuda: NOT compiled (mmcv-lite): mmcv's "
                           "pure-PyTorch version"), line
    assert compiled_ops(sec, "cpu", ["train_segmentation"])[0].endswith(
        "on cpu: not needed on cpu (mmcv runs its pure-PyTorch version there)")
    monkeypatch.setattr("pipeline.weights.has_full_mmcv", lambda: True)
    assert compiled_ops(sec, "cuda", ["train_segmentation"])[0].endswith("on cuda: compiled (full mmcv)")
    assert compiled_ops(sec.model_copy(update={"model": "deeplabv3plus"}), "cuda", ["train_segmentation"]) == []


def test_require_compiled_ops_stops_the_run_before_any_write(tmp_path, monkeypatch, caplog):
    from stages.plan import RunPlan
    from stages.runner import preflight
    cfg = m2f(tmp_path, require=True)
    monkeypatch.setattr("pipeline.weights.has_full_mmcv", lambda: False)
    with caplog.at_level(logging.INFO, logger="wsss"):
        preflight(RunPlan(cfg, ["prepare_data", "train_segmentation"]))  # CPU: nothing compiled needed
    assert "not needed on cpu" in caplog.text
    monkeypatch.setattr("stages.runner.get_device", lambda name: torch.device("cuda"))
    with pytest.raises(CompiledOpsMissing, match=r"train_segmentation would call the compiled mmcv op "
                       r"ms_deform_attn on cuda.*docker/Dockerfile.*require_compiled_ops: false"):
        preflight(RunPlan(cfg, ["prepare_data", "train_segmentation"]))
    preflight(RunPlan(cfg, ["prepare_data", "train_cam"]))  # no stage builds the model: no check
    assert not (tmp_path / "runs").exists()
    cfg.train_segmentation.require_compiled_ops = False
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wsss"):
        preflight(RunPlan(cfg, ["train_segmentation"]))
    assert "NOT compiled (mmcv-lite)" in caplog.text


def test_require_compiled_ops_is_in_no_artifact_key(tmp_path):
    from stages.runner import stage_keys
    assert stage_keys(m2f(tmp_path)) == stage_keys(m2f(tmp_path, require=True))
