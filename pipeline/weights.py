"""Pretrained weights the configs download from a hub: what they are and how to resolve them.

A ``HubWeight`` names a model, the config key that takes a local file instead, and the
library's own cache/download function (timm + huggingface_hub, open_clip's
``download_pretrained``, torch.hub's checkpoint cache that mmengine reads). Each Stage
record declares the hub weights it loads (stages/contract.py ``weights``); the runner's
preflight (stages/runner.py) gathers them for the stages about to run and ``resolve``s
them, so a connected machine downloads first and an offline one fails with one
paragraph: the model, the config key, and what to do. The loading code calls ``explain``
on a failure too (a cache emptied in between). Before the first download the weight's
host is probed once (one TCP connect, ``PROBE_TIMEOUT_S``): an unreachable host puts the
libraries in their offline mode (cache only), so an offline machine gets its answer in
seconds, not after huggingface_hub's retry loop (~1 min). Local files and random-init (smoke)
models cost nothing here.

The same preflight lists the compiled mmcv ops the segmentation model will call on this device
(``compiled_ops``): compiled, or mmcv's pure-PyTorch version in their place (mmcv-lite on CUDA,
pipeline/segmentation/mmcv_compat.py); ``train_segmentation.require_compiled_ops`` makes a
missing one an error before any stage runs.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional
from urllib.parse import urlparse

from pipeline.config import _is_hub_tag

log = logging.getLogger("wsss")
SAM_URLS = {  # Meta's SAM checkpoints by sam.model_type: segment-anything README, "Model Checkpoints"
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
PROBE_TIMEOUT_S = 3.0  # name lookup + TCP connect of the one probe per host


# The compiled mmcv ops: what the preflight lists, and what pipeline/segmentation/mmcv_compat.py
# puts in place of a missing one
INSTALL_HINT = ("install full mmcv 2.1.0 built with its compiled ops (see docker/Dockerfile: "
                "pip install --no-build-isolation mmcv==2.1.0 with setuptools<81 and -std=c++20)")
# compiled mmcv ops a segmentation model (train_segmentation.model) calls on CUDA, and what for
COMPILED_OPS = {"mask2former": {"ms_deform_attn": "multi-scale deformable attention (Mask2Former's pixel decoder)"}}
FALLBACK_COST = ("mmcv's pure-PyTorch version (multi_scale_deformable_attn_pytorch, the one mmcv runs on CPU): "
                 "the same results within float rounding, but slower and with more GPU memory (one grid_sample "
                 "per feature level instead of the fused kernel)")


def has_full_mmcv() -> bool:
    ext = sys.modules.get("mmcv._ext")
    if ext is not None:
        return not getattr(ext, "is_stand_in", False)
    return importlib.util.find_spec("mmcv") is not None and importlib.util.find_spec("mmcv._ext") is not None


def op_path(device_type: str, compiled: bool) -> str:
    """How a COMPILED_OPS op runs on ``device_type``: "compiled" (mmcv's CUDA kernel),
    "fallback" (CUDA without the kernel: mmcv's pure-PyTorch version in its place) or
    "pytorch" (any other device: mmcv's own choice, its pure-PyTorch version)."""
    if device_type != "cuda":
        return "pytorch"
    return "compiled" if compiled else "fallback"


class CompiledOpsMissing(RuntimeError):
    """train_segmentation.require_compiled_ops, and a compiled mmcv op the run needs is missing."""


class WeightsUnavailable(RuntimeError):
    """Hub weights neither cached nor downloadable: the message is the whole explanation."""


@dataclass(frozen=True)
class HubWeight:
    key: str  # config key that takes a local file instead
    value: str  # what the config says now
    what: str  # the model, in words
    source: str  # where the library downloads it from
    cache: str  # where the library keeps it
    alternative: str = ""  # another way round, if any
    fetch: Callable[[], object] = lambda: None  # the library's own resolve/download
    stages: tuple[str, ...] = ()  # the stages that load it (the preflight fills it in)
    hf: bool = False  # downloaded through huggingface_hub (its endpoint is probed, its offline mode used)


def timm_weight(name: str) -> HubWeight:
    """mask_generator.pretrained: true: timm's ImageNet weights of the backbone."""
    import timm

    pcfg = timm.models.get_pretrained_cfg(name)
    hub = getattr(pcfg, "hf_hub_id", None)
    source = f"https://huggingface.co/{hub}" if hub else (getattr(pcfg, "url", None) or "timm's model hub")
    # create_model is exactly the loading path of the stage (tag, safetensors or bin, hf or url)
    return HubWeight("mask_generator.pretrained", "true",
                     f"the ImageNet weights of timm model '{name}' (the mask generator's backbone)", source,
                     "the Hugging Face cache (HF_HOME, default ~/.cache/huggingface/hub)",
                     "or set train_cam.init_checkpoint to WeakTr's released checkpoint_best_mIoU.pth "
                     "(the warm start is then imported and needs no ImageNet weights)",
                     lambda: timm.create_model(name, pretrained=True, num_classes=0), hf=bool(hub))


def clip_weight(model: str, tag: str) -> HubWeight:
    """clip.pretrained: a hub tag ('openai', 'laion2b_s34b_b79k', ...) of an open_clip model."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, is_pretrained_cfg

    if not is_pretrained_cfg(model, tag):
        raise WeightsUnavailable(f"clip.pretrained: open_clip has no '{tag}' weights for model '{model}' "
                                 f"(it has: {', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'}); "
                                 "name one of those tags or a local checkpoint file")
    pcfg = get_pretrained_cfg(model, tag)
    source = f"https://huggingface.co/{pcfg['hf_hub'].rstrip('/')}" if pcfg.get("hf_hub") else pcfg.get("url", "")
    return HubWeight("clip.pretrained", tag, f"open_clip's '{tag}' weights of CLIP {model}", source,
                     "the Hugging Face cache (HF_HOME, default ~/.cache/huggingface/hub; URL downloads: ~/.cache/clip)",
                     "a local OpenAI checkpoint also needs clip.quick_gelu: true",
                     lambda: download_pretrained(pcfg), hf=bool(pcfg.get("hf_hub")))


def _mm_url(name: str) -> str:
    """open-mmlab://x -> the URL mmengine's CheckpointLoader loads it from."""
    from mmengine.runner.checkpoint import get_deprecated_model_names, get_external_models

    for prefix in ("open-mmlab://", "openmmlab://"):
        if name.startswith(prefix):
            model = name[len(prefix):]
            model = get_deprecated_model_names().get(model, model)
            return get_external_models()[model]
    return name


def hub_cache_path(url: str) -> Path:
    """Where torch.hub keeps a downloaded checkpoint (what load_state_dict_from_url, and so
    mmengine's load_from_http, reads)."""
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def hub_download(url: str) -> Path:
    """The torch.hub cache file of ``url``, downloaded first if it is not there."""
    import torch.hub
    path = hub_cache_path(url)
    if not path.is_file():
        if _offline.active:
            raise ConnectionError(f"{_host(url)} is not reachable ({_offline.active}) and {path} is not cached")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    return path


def segmentation_weight(sec) -> HubWeight:
    """train_segmentation.pretrained: a URL or open-mmlab:// name that mmengine downloads."""
    value = sec.pretrained
    url = _mm_url(value)
    cached = hub_cache_path(url)

    def fetch():
        if not url.startswith(("http://", "https://")):
            raise FileNotFoundError(f"{value} resolves to {url}, which is not a URL mmengine downloads")
        return hub_download(url)

    return HubWeight("train_segmentation.pretrained", value,
                     f"the backbone weights of the {sec.model} {sec.backbone} segmentation model", url,
                     f"torch.hub's checkpoint cache ({cached})", "", fetch)


def timm_weights(mg, init_checkpoint) -> list[HubWeight]:
    """mask_generator.pretrained: true loads timm's ImageNet weights, unless a warm start is imported."""
    return [timm_weight(mg.backbone)] if mg.pretrained is True and not init_checkpoint else []


def clip_weights(c) -> list[HubWeight]:
    """clip.pretrained as an open_clip hub tag (not a local file, not a factory's random model)."""
    if c.factory is None and isinstance(c.pretrained, str) and _is_hub_tag(c.pretrained):
        return [clip_weight(c.model, c.pretrained)]
    return []


def segmentation_weights(sec) -> list[HubWeight]:
    """train_segmentation.pretrained as a URL (tiny: random init, loads none)."""
    if not sec.tiny and isinstance(sec.pretrained, str) and "://" in sec.pretrained:
        return [segmentation_weight(sec)]
    return []


def explain(w: HubWeight, error: BaseException, offline: Optional[str] = None) -> WeightsUnavailable:
    """The one paragraph for a weight that could not be resolved (``offline``: why the probe
    found its host unreachable)."""
    first = (str(error).strip().splitlines() or [""])[0][:300]
    if offline:
        first = f"host unreachable, {offline}; cache only: {first}"
    who = f"{', '.join(w.stages)} {'needs' if len(w.stages) == 1 else 'need'}" if w.stages else "the run needs"
    return WeightsUnavailable(
        f"{who} {w.what} ({w.key}: {w.value}), which is neither in {w.cache} nor "
        f"downloadable from here ({type(error).__name__}: {first}). Either run `wsss run` once on a machine "
        f"with internet access (the file lands in that cache; copy the cache over or point this machine at "
        f"it), or download the file from {w.source} yourself, copy it here and set {w.key}: /path/to/the/file "
        f"in the config{('; ' + w.alternative) if w.alternative else ''}. Nothing was written to the run store.")


_resolved: set[tuple[str, str]] = set()  # (key, value) already resolved by this process
_probes: dict[tuple[str, int], Optional[str]] = {}  # (host, port) -> None (reachable) or why not


class _Offline(threading.local):
    active: Optional[str] = None  # why the hub is treated as offline, while it is


_offline = _Offline()


def _host(url: str) -> str:
    return urlparse(url).hostname or url


def unreachable(url: str) -> Optional[str]:
    """None if ``url``'s host takes a TCP connection within PROBE_TIMEOUT_S, else the reason.
    One probe per host and process; the name lookup runs in a thread, so a hanging resolver
    costs no more than the timeout either."""
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        return None  # not a network address: the library reports what it is
    where = (u.hostname, u.port or (443 if u.scheme == "https" else 80))
    if where not in _probes:
        result: list[Optional[str]] = [f"no answer from {where[0]}:{where[1]} in {PROBE_TIMEOUT_S:g} s"]

        def probe():
            try:
                socket.create_connection(where, timeout=PROBE_TIMEOUT_S).close()
                result[0] = None
            except OSError as e:
                result[0] = f"{where[0]}:{where[1]}: {e}"

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(PROBE_TIMEOUT_S + 0.5)
        _probes[where] = result[0]
    return _probes[where]


@contextmanager
def hub_offline(reason: str):
    """The libraries' cache-only mode: huggingface_hub's HF_HUB_OFFLINE (read at call time
    through its constants) and hub_download's own check; a cached file still resolves."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE, _offline.active = True, reason
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, _offline.active = before, None


def _probe_url(w: HubWeight) -> str:
    if w.hf:
        from huggingface_hub import constants
        return constants.ENDPOINT
    return w.source


def resolve(weights: Iterable[HubWeight]) -> None:
    """Resolve (download if needed) every weight; WeightsUnavailable on the first that cannot be had."""
    for w in weights:
        if (w.key, w.value) in _resolved:
            continue
        log.info("preflight: %s (%s: %s)", w.what, w.key, w.value)
        down = None
        try:
            down = unreachable(_probe_url(w))
            if down:
                with hub_offline(down):
                    w.fetch()
            else:
                w.fetch()
        except WeightsUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to get the file gets the same advice
            raise explain(w, e, down) from None
        _resolved.add((w.key, w.value))


def compiled_ops(sec, device_type: str, stages: Iterable[str]) -> list[str]:
    """One line per compiled mmcv op that ``stages`` (those building train_segmentation's model)
    call on ``device_type``, saying what runs there; CompiledOpsMissing if
    sec.require_compiled_ops and one would fall back. The preflight logs the lines."""
    ops = COMPILED_OPS.get(sec.model, {})
    if not ops:
        return []
    path = op_path(device_type, has_full_mmcv())
    runs = {"compiled": "compiled (full mmcv)",
            "pytorch": f"not needed on {device_type} (mmcv runs its pure-PyTorch version there)",
            "fallback": f"NOT compiled (mmcv-lite): {FALLBACK_COST}"}[path]
    who = ", ".join(stages)
    if path == "fallback" and sec.require_compiled_ops:
        raise CompiledOpsMissing(
            f"train_segmentation.require_compiled_ops is set, and {who} would call the compiled mmcv op "
            f"{', '.join(ops)} on {device_type}, which mmcv-lite does not have. Use the docker image "
            f"(docker/Dockerfile) or {INSTALL_HINT}; or set train_segmentation.require_compiled_ops: false to "
            "run mmcv's pure-PyTorch version in its place. Nothing was written to the run store.")
    return [f"compiled op {op} ({use}) for {who} on {device_type}: {runs}" for op, use in ops.items()]
