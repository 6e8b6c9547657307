"""Small shared helpers: device, seeding, progress lines with ETA, the run's log file, stage errors."""
from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import random
import re
import sys
import time
from typing import Any, Callable, Container, Iterable, Iterator, Optional, TypeVar

import numpy as np

T = TypeVar("T")
log = logging.getLogger("wsss")


def get_device(name: str = "auto"):
    import torch  # imported here: status/caching paths must not pay torch's import time
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    import torch
    torch.manual_seed(seed)


def num_processes(requested: int) -> int:
    """0 = every core this process may use."""
    if requested:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def progress(items: Iterable[T], desc: str, total: Optional[int] = None,
             every_s: float = 10.0) -> Iterator[T]:
    """Yield items, logging 'desc i/n (rate, ETA)' at most every `every_s` seconds and at the end."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    start = last = time.time()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        now = time.time()
        if now - last >= every_s or (total and i == total):
            last = now
            rate = i / max(now - start, 1e-9)
            eta = f", ETA {(total - i) / rate:.0f}s" if total else ""
            log.info("%s %d/%s (%.2f it/s%s)", desc, i, total or "?", rate, eta)


def log_pending(stage: str, todo: list[str], of: int, label: str = "") -> None:
    """Log which images a (resumed) per-image stage computes, by id: the run's log
    says what was redone."""
    if todo:
        shown = ", ".join(todo[:50]) + (f", ... and {len(todo) - 50} more" if len(todo) > 50 else "")
        log.info("%s%s: computing %d of %d images: %s", stage, f" ({label})" if label else "", len(todo), of, shown)


def read_ahead(items: Iterable[T], load: Callable[[T], Any], ahead: int) -> Iterator[tuple[T, Any]]:
    """(item, load(item)) in order, with up to ``ahead`` loads running in threads ahead of the
    consumer (I/O and decoding that release the GIL overlap the caller's work). A load's
    exception is raised when its item is reached."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    it = iter(items)
    with ThreadPoolExecutor(max(1, ahead)) as pool:
        queue = deque((x, pool.submit(load, x)) for x in itertools.islice(it, max(1, ahead)))
        while queue:
            x, fut = queue.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                queue.append((nxt, pool.submit(load, nxt)))
            yield x, fut.result()


_END = object()


class RunLogFile(logging.FileHandler):
    """The run's log file. A record it cannot write (a full disk: ENOSPC, or another OSError)
    closes it with one line on stderr: logging would report every later record with a
    traceback, under Prefect nested until a RecursionError hid the run's own error."""
    failed: Optional[OSError] = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            return super().handleError(record)
        self.failed, stream, self.stream = err, self.stream, None
        with contextlib.suppress(OSError):
            stream.close()  # its unwritten buffer fails again; the file is closed all the same
        sys.stderr.write(f"warning: stopped writing the log file {self.baseFilename}: "
                         f"{errno.errorcode.get(err.errno, 'OSError')} ({err.strerror or err})\n")


# ------------------------------------------------------------------ stage errors
# config fields an error is about, by what its message says (first match wins); {stage} = the stage
_FIELD_HINTS = (
    (r"Invalid (learning rate|lr)", "{stage}.lr"),
    (r"Invalid weight_decay", "{stage}.weight_decay"),
    (r"No space left on device|Errno 28|Disk quota", "run.work_dir (the disk it is on is full)"),
    (r"out of memory|can't allocate memory|not enough memory|DefaultCPUAllocator",
     "{stage}.batch_size, export_cams.scales, checks.export_memory_gb"),
    (r"Kernel size can't be greater|padded input size|Padding size should be less|input image .* smaller",
     "export_cams.scales, checks.min_patches (an image too small for one patch)"),
    (r"DataLoader worker", "run.num_workers (0 runs the loading in the main process, with its own traceback)"),
)
_FIELD = re.compile(r"(?<![\w/.-])([a-z_]+)\.([a-z_]+)(?:\.[a-z_]+)*")
_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StageError(RuntimeError):
    """An exception that left a stage, re-raised once with the stage, the images or file and the
    config fields it concerns; the original is its __cause__ (the full traceback, for the log)."""

    def __init__(self, stage: str, error: BaseException, images: list[str], file: Optional[str],
                 fields: list[str]):
        self.stage, self.error, self.images, self.file, self.fields = stage, error, images, file, fields
        lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
        msg = "\n  ".join(lines[:12] + ([f"... ({len(lines) - 12} more lines)"] if len(lines) > 12 else []))
        where = ""
        if images:
            more = f" (+{len(images) - 3} more)" if len(images) > 3 else ""
            where += f" on image{'s' if len(images) > 1 else ''} {', '.join(images[:3])}{more}"
        if file and not any(file in i for i in images) and file not in msg:
            where += f" (file {file})"
        super().__init__(f"stage '{stage}' failed{where}: {type(error).__name__}: {msg or '(no message)'}"
                         f" [config: {'; '.join(fields)}]")

    def __reduce__(self):  # Prefect pickles a failed task's exception; the original may not unpickle
        return _restore_stage_error, (str(self), self.stage, self.images, self.file, self.fields)


def _restore_stage_error(message: str, stage: str, images: list[str], file: Optional[str],
                         fields: list[str]) -> StageError:
    e = StageError.__new__(StageError)
    RuntimeError.__init__(e, message)
    e.stage, e.error, e.images, e.file, e.fields = stage, None, images, file, fields
    return e


def _config_fields(text: str) -> list[str]:
    """Dotted config fields (section.field...) named in ``text``: real ones only, not file names."""
    from pipeline.config import Config
    out = []
    for m in _FIELD.finditer(text):
        section = Config.model_fields.get(m.group(1))
        model = getattr(section, "annotation", None)
        if section is not None and m.group(2) in getattr(model, "model_fields", {}):
            out.append(m.group(0))
    return list(dict.fromkeys(out))


def _records_in(frame_locals: dict) -> list:
    """Label records (objects with id, image and labels) a frame holds: single ones, else the
    shortest list of them (a batch rather than the whole split)."""
    def is_rec(v):
        return all(hasattr(v, a) for a in ("id", "image", "labels")) and isinstance(getattr(v, "id"), str)
    single = [v for v in frame_locals.values() if is_rec(v)]
    if single:
        return single[:1]
    lists = [v for v in frame_locals.values() if isinstance(v, (list, tuple)) and 0 < len(v) <= 64
             and is_rec(v[0])]
    return min(lists, key=len) if lists else []


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def stage_error(stage: str, exc: BaseException, sections: tuple[str, ...] = ()) -> StageError:
    """``exc`` (raised while ``stage`` ran) as a StageError: the images of the innermost project
    frame that held label records (one, or a batch) or an image id, the file of an OSError, the
    config fields its message names or hints at, else the stage's declared sections. The
    project's own errors name their images and files already: no guessing for those. A full
    disk anywhere in the cause chain is the error: its OSError, file and run.work_dir."""
    if isinstance(exc, StageError):
        return exc
    full = next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)), None)
    if full is not None:  # wherever it surfaced (a writer thread, torch, a logging error): the disk
        return StageError(stage, full, [], full.filename and str(full.filename),
                          [f"run.work_dir (the disk it is on is full, {errno.errorcode[full.errno]}: "
                           "free space there and rerun; finished work is kept)"])
    images: list[str] = []
    file = None
    ours = type(exc).__module__.split(".")[0] in ("pipeline", "stages")
    for e in [] if ours else _chain(exc):
        file = file or getattr(e, "filename", None)
        frames = []
        tb = e.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for f in reversed(frames):  # innermost first, project code only
            if images or not f.f_code.co_filename.startswith(_PROJECT) or "site-packages" in f.f_code.co_filename:
                continue
            recs = _records_in(f.f_locals)
            if recs:
                images = [r.id for r in recs] if len(recs) > 1 else [f"{recs[0].id} ({recs[0].image})"]
            elif isinstance(f.f_locals.get("image_id"), str):
                images = [f.f_locals["image_id"]]
    text = " ".join(str(e) for e in _chain(exc))
    fields = _config_fields(str(exc))
    for pattern, hint in _FIELD_HINTS:
        if re.search(pattern, text, re.IGNORECASE):
            fields.append(hint.format(stage=stage))
            break
    if not fields:
        fields = [f"one of this stage's sections: {', '.join(sections)}" if sections else "none known"]
    return StageError(stage, exc, images, str(file) if file else None, fields)


def files_under(d, known: Container[str] = ()) -> Iterator[tuple[str, Optional[os.stat_result]]]:
    """(relative posix path, stat) of every file below ``d``, by os.scandir: several times faster
    than Path.rglob over the many small directories of a CAM store (issue #38). An entry (file or
    folder) whose relative path is in ``known`` comes as (path, None), neither stat-ed nor entered."""
    stack = [("", str(d))]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                if f"{rel}{e.name}" in known:
                    yield f"{rel}{e.name}", None
                elif e.is_dir(follow_symlinks=False):
                    stack.append((f"{rel}{e.name}/", e.path))
                elif e.is_file():
                    yield f"{rel}{e.name}", e.stat()


def tree_bytes(d) -> int:
    """Bytes of the files below ``d`` (0 when it does not exist)."""
    return sum(st.st_size for _, st in files_under(d)) if os.path.exists(d) else 0
