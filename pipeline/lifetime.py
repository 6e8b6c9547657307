"""Every process a run starts ends with the run, even when the run is killed with -9 and can
clean up nothing: a process we start with Popen (torchrun, Prefect's temporary API server in
flows/dag.py) gets the kernel's parent-death signal (``die_with_parent``, Linux), and a pool
worker or a torchrun rank, whose parent is a forkserver or torchrun, watches the process it
works for (``exit_with``) and ends at once, writing nothing more."""
from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import Callable

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable | None:
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()  # looked up here: a Popen preexec_fn runs in a forked child, where loading is unsafe


def die_with_parent() -> None:
    """SIGKILL this process when its parent ends (Linux; the signal survives exec, not fork).
    A Popen ``preexec_fn``, or the first call of a process its parent started."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def exit_with(owner: int) -> None:
    """End this process as soon as process ``owner`` ends, killed or not: a daemon thread waits
    on its pidfd (Linux), elsewhere polls it each second."""
    def watch() -> None:
        try:
            fd = os.pidfd_open(owner)
        except ProcessLookupError:
            os._exit(1)
        except (AttributeError, OSError):  # no pidfd: poll (a zombie owner still counts as alive)
            while _alive(owner):
                time.sleep(1.0)
            os._exit(1)
        select.select([fd], [], [])
        os._exit(1)
    threading.Thread(target=watch, name=f"exit-with-{owner}", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def worker_of(owner: int, init: Callable, *args) -> None:
    """A process pool's initializer: ``exit_with(owner)`` (the pool's creator), then ``init(*args)``."""
    exit_with(owner)
    init(*args)
