"""The right to compute one artifact: several processes (and machines sharing the store's file
system) may run stages against one store; ArtifactLock lets one of them compute a given artifact
at a time while the others wait and then use its result."""
from __future__ import annotations

import json
import os
import socket
import time

from pipeline.fileio import write_json_atomic, writing
from pipeline.store import Store


class LockLost(RuntimeError):
    """The lease on an artifact was taken over while this process computed it."""


class ArtifactLock:
    """The right to compute one artifact, across processes and machines.

    A filelock SoftFileLease: a marker file <store>/.locks/<key>.lock created
    with O_EXCL, naming host, pid and process start time, and touched by a
    heartbeat thread every lease_s / 3. Waiters poll it; they take it over
    at once when its holder is a dead process on their own host, and when
    the marker has not changed for lease_s (holder's machine lost or hung).
    The file system must give atomic exclusive create and rename, and show
    other clients' mtime changes within lease_s (NFSv3+: keep lease_s well
    above the attribute cache time, acregmax, 60 s by default).
    A holder whose lease was taken over notices it (on_compromise) and must
    not finish: check() raises LockLost before the manifest is written.
    """

    def __init__(self, store: Store, key: str, lease_s: float = 180.0, poll_s: float = 1.0):
        from filelock import SoftFileLease
        self.key = key
        self.path = store.root / ".locks" / f"{key}.lock"
        self.holder_file = self.path.with_suffix(".holder.json")  # who and since when, for waiters' logs
        self.lost: str | None = None
        self.waited = False
        self._lease = SoftFileLease(str(self.path), lease_duration=lease_s, poll_interval=poll_s,
                                    on_compromise=self._on_lost, thread_local=False)

    def _on_lost(self, compromise) -> None:
        self.lost = compromise.reason

    def holder(self) -> str:
        """'host:pid since <time>' of the current holder, as far as the lock files tell."""
        owner = self._lease.owner
        if owner is None:
            return "another process"
        who = f"{owner.hostname}:{owner.pid}"
        try:
            note = json.loads(self.holder_file.read_text())
            if note.get("holder") == who:
                return f"{who} since {note['since']}"
        except (OSError, ValueError, KeyError):
            pass
        return who

    def acquire(self, log=None, report_every_s: float = 60.0) -> "ArtifactLock":
        from filelock import Timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with writing(self.path):  # a full disk names the lock file
                self._lease.acquire(blocking=False)
        except Timeout:
            self.waited = True
            started = time.monotonic()
            while True:
                if log:
                    log(f"waiting for {self.key} held by {self.holder()} "
                        f"(waited {time.monotonic() - started:.0f} s)")
                try:
                    with writing(self.path):
                        self._lease.acquire(timeout=report_every_s)
                    break
                except Timeout:
                    continue
        owner = self._lease.owner
        write_json_atomic(self.holder_file, {
            "holder": f"{owner.hostname}:{owner.pid}" if owner else f"{socket.gethostname()}:{os.getpid()}",
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z")})
        return self

    def check(self) -> None:
        if self.lost:
            raise LockLost(f"{self.path}: this process lost its lease on {self.key} ({self.lost}); another "
                           "process took it over after the lease expired, so this one does not finish it")

    def release(self) -> None:
        if self.lost is None:
            self.holder_file.unlink(missing_ok=True)
        self._lease.release()

