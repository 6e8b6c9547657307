"""Small shared helpers: device, seeding, progress lines with ETA."""
from __future__ import annotations

import itertools
import logging
import os
import random
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

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
