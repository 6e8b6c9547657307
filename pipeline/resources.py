"""What a stage cost: wall time, device, GPU-hours and peak memory, recorded in its manifest
("resources"), and the table of a run's stages (evaluate's report, `wsss status`).

Peak memory: the CPU resident set of this process (Linux VmHWM, reset at the stage's start
through /proc/self/clear_refs) and of its child processes (DataLoader workers, torchrun ranks,
process pools: their RSS summed, sampled every 0.5 s, so a shorter peak can be missed); CUDA:
torch.cuda.max_memory_allocated of this process (torchrun ranks are other processes: not in it).
GPU-hours = wall hours x GPUs the stage used (run.nproc_per_node for the distributed training
stages under CUDA, else 1); 0 on CPU.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Optional

MB = 2 ** 20


def _vm_hwm() -> Optional[int]:
    """Peak RSS of this process in bytes since the last reset (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _torch_cuda():
    """torch.cuda if torch is imported and CUDA initialised in this process (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


class Meter:
    """Measures one stage's computation: ``with Meter(...) as m: ...; m.result``."""

    def __init__(self, device: str = "auto", gpus: int = 1, poll_s: float = 0.5):
        self.device, self.gpus, self.poll_s = device, gpus, poll_s
        self.result: dict = {}
        self._children_peak = 0
        self._self_peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        try:
            import psutil
            me = psutil.Process()
        except Exception:  # psutil missing: VmHWM alone
            return
        while not self._stop.wait(self.poll_s):
            try:
                kids = me.children(recursive=True)
                self._children_peak = max(self._children_peak, sum(k.memory_info().rss for k in kids
                                                                   if k.is_running()))
                self._self_peak = max(self._self_peak, me.memory_info().rss)
            except Exception:  # a child exited while being read
                continue

    def __enter__(self) -> "Meter":
        self._hwm_reset = _reset_hwm()
        cuda = _torch_cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._t0 = time.time()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="wsss-meter")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.time() - self._t0
        self._stop.set()
        self._thread.join(2)
        hwm = _vm_hwm() if self._hwm_reset else None
        peak_self = max(hwm or 0, self._self_peak)
        cuda = _torch_cuda()
        on_gpu = self.device != "cpu" and cuda is not None
        self.result = {
            "wall_s": round(wall, 3),
            "device": f"cuda ({cuda.get_device_name()})" if on_gpu else "cpu",
            "gpus": self.gpus if on_gpu else 0,
            "gpu_hours": round(wall / 3600 * self.gpus, 6) if on_gpu else 0.0,
            "peak_rss_mb": round(peak_self / MB, 1) if peak_self else None,
            "peak_children_rss_mb": round(self._children_peak / MB, 1),
            "cuda_max_allocated_mb": round(cuda.max_memory_allocated() / MB, 1) if on_gpu else None,
        }


# ------------------------------------------------------------------ tables
COLUMNS = ("stage", "wall_s", "device", "gpu_hours", "peak_rss_mb", "peak_children_rss_mb", "cuda_max_allocated_mb")


def cost_row(manifest: dict) -> dict:
    """One stage's row from its manifest (older manifests: wall time from "timings" only)."""
    res = manifest.get("resources") or {}
    return {"stage": manifest["stage"], "key": manifest["key"],
            "wall_s": res.get("wall_s", manifest.get("timings", {}).get("seconds")),
            **{k: res.get(k) for k in COLUMNS[2:]}}


def upstream_costs(store_root: Path, keys: list[str]) -> list[dict]:
    """Rows of the artifacts ``keys`` and of everything upstream of them (through the manifests'
    input keys), upstream first, each artifact once."""
    seen: dict[str, dict] = {}

    def visit(key: str) -> None:
        if key in seen:
            return
        p = Path(store_root) / key / "manifest.json"
        if not p.exists():
            return
        m = json.loads(p.read_text())
        for k in m.get("inputs", {}).values():
            visit(k)
        seen[key] = cost_row(m)
    for k in keys:
        visit(k)
    return list(seen.values())


def total_row(rows: list[dict]) -> dict:
    peak = lambda k: max((r[k] for r in rows if r.get(k) is not None), default=None)  # noqa: E731
    return {"stage": "total", "wall_s": round(sum(r["wall_s"] or 0 for r in rows), 3),
            "device": ", ".join(dict.fromkeys(r["device"] for r in rows if r.get("device"))) or None,
            "gpu_hours": round(sum(r["gpu_hours"] or 0 for r in rows), 6),
            "peak_rss_mb": peak("peak_rss_mb"), "peak_children_rss_mb": peak("peak_children_rss_mb"),
            "cuda_max_allocated_mb": peak("cuda_max_allocated_mb")}


def cost_markdown(rows: list[dict]) -> list[str]:
    """Markdown lines: one row per stage and the total (peaks: the largest of any stage)."""
    def cell(v) -> str:  # 12345.6 s prints as 12346, not 1.235e+04; small values keep 4 significant digits
        if not isinstance(v, float):
            return "" if v is None else str(v)
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    head = ["stage", "wall (s)", "device", "GPU-hours", "peak RSS (MB)", "children RSS (MB)", "CUDA max alloc (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in [*rows, total_row(rows)]:
        lines.append("| " + " | ".join(cell(r.get(k)) for k in COLUMNS) + " |")
    return lines

