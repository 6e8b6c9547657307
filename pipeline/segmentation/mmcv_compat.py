"""Make mmseg/mmdet importable with mmcv-lite (pure Python mmcv 2.1.0).

mmseg 1.2.2 and mmdet 3.3.0 import ``mmcv.ops`` at module level, and every op
module there loads the compiled extension ``mmcv._ext`` when imported, even if
the op is never used. mmcv-lite ships no ``_ext``, so the import fails.

``ensure_mmcv()`` installs a stand-in ``mmcv._ext`` module in ``sys.modules``:
any attribute is a function that raises ``MissingMmcvOpError`` when called.
That is the only patch. It is enough because the models we use on CPU need no
compiled op: ResNet/ASPP/separable-conv heads are plain PyTorch, and the
Mask2Former pixel decoder's ``MultiScaleDeformableAttention`` already calls
mmcv's own pure-PyTorch fallback (``multi_scale_deformable_attn_pytorch``) for
tensors that are not on CUDA; ``point_sample`` is ``grid_sample``. On a CUDA
tensor that op calls the extension, so a GPU run with mmcv-lite stops with the
clear error below instead of running slowly or silently differently.

With full mmcv installed (the docker image), ``mmcv._ext`` exists and nothing
is touched.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

INSTALL_HINT = ("install full mmcv 2.1.0 built with its compiled ops (see docker/Dockerfile: "
                "pip install --no-build-isolation mmcv==2.1.0 with setuptools<81 and -std=c++20)")


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


def has_full_mmcv() -> bool:
    ext = sys.modules.get("mmcv._ext")
    if ext is not None:
        return not getattr(ext, "is_stand_in", False)
    return importlib.util.find_spec("mmcv") is not None and importlib.util.find_spec("mmcv._ext") is not None


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
    return True
