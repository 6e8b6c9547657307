"""Make mmseg/mmdet importable with mmcv-lite (pure Python mmcv 2.1.0).

mmseg 1.2.2 and mmdet 3.3.0 import ``mmcv.ops`` at module level, and every op
module there loads the compiled extension ``mmcv._ext`` when imported, even if
the op is never used. mmcv-lite ships no ``_ext``, so the import fails.

``ensure_mmcv()`` installs a stand-in ``mmcv._ext`` module in ``sys.modules``:
any attribute is a function that raises ``MissingMmcvOpError`` when called.
The models we use call one compiled op at most (COMPILED_OPS, pipeline/weights.py): ResNet/ASPP/
separable-conv heads and Swin are plain PyTorch, ``point_sample`` is
``grid_sample``, and the Mask2Former pixel decoder's
``MultiScaleDeformableAttention`` calls mmcv's own pure-PyTorch version
(``multi_scale_deformable_attn_pytorch``) for tensors that are not on CUDA. On a
CUDA tensor it calls the extension; with the stand-in, ``ensure_mmcv`` points
that call at the same pure-PyTorch version (``op_path``, pipeline/weights.py), with one
warning: slower and more GPU memory, the same results within float rounding.
The run's preflight lists these ops (pipeline/weights.py ``compiled_ops``) and, with
``train_segmentation.require_compiled_ops``, refuses to start without them.

With full mmcv installed (the docker image), ``mmcv._ext`` exists and nothing
is touched.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import types

from pipeline.weights import FALLBACK_COST, INSTALL_HINT, has_full_mmcv

log = logging.getLogger("wsss")


class MissingMmcvOpError(RuntimeError):
    """A compiled mmcv op was called but only mmcv-lite is installed."""


class _StandInExt(types.ModuleType):
    """``mmcv._ext`` without compiled code: every op raises when called."""

    is_stand_in = True

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise MissingMmcvOpError(f"mmcv compiled op '{name}' is not available (mmcv-lite has no "
                                     f"mmcv._ext); {INSTALL_HINT}")
        missing.__name__ = name
        return missing


_warned = False


def _ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            im2col_step):
    """``MultiScaleDeformableAttnFunction.apply`` without the extension (mmcv calls it for CUDA
    tensors only: op_path "fallback"): the arguments the module passes the compiled op, computed
    by mmcv's pure-PyTorch version (level starts and im2col step only tile the kernel's work)."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    global _warned
    if not _warned:
        _warned = True
        log.warning("mmcv has no compiled ops (mmcv-lite): Mask2Former's multi-scale deformable attention runs "
                    "%s. For the compiled op use the docker image (docker/Dockerfile) or %s", FALLBACK_COST,
                    INSTALL_HINT)
    # the compiled op's own cast (autocast leaves these float32 while value is float16)
    return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations.type_as(value),
                                               attention_weights.type_as(value))


class _PyTorchMSDeformAttn:
    """Stands in for mmcv's ``MultiScaleDeformableAttnFunction`` (its forward calls ``.apply``)."""
    apply = staticmethod(_ms_deform_attn_pytorch)


def ensure_mmcv() -> bool:
    """Call before importing mmseg/mmdet. Returns True if the stand-in is in use."""
    if importlib.util.find_spec("mmcv") is None:
        raise ImportError(f"mmcv is not installed; pip install mmcv-lite==2.1.0 (CPU) or {INSTALL_HINT}")
    if has_full_mmcv():
        return False
    if "mmcv._ext" not in sys.modules:
        import mmcv
        ext = _StandInExt("mmcv._ext", "stand-in for mmcv's compiled ops (pipeline.segmentation.mmcv_compat)")
        # a spec without loader: importlib/pkgutil accept the module, and mmengine's
        # mmcv_full_available() (pkgutil.find_loader) still reports "no full mmcv"
        ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
        sys.modules["mmcv._ext"] = ext
        mmcv._ext = ext
        from mmcv.ops import multi_scale_deform_attn
        multi_scale_deform_attn.MultiScaleDeformableAttnFunction = _PyTorchMSDeformAttn
    return True
