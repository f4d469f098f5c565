"""Claims: which process trains a cell, agreed through the filesystem (no mlflow, no torch).

A store keeps a claims folder of its own (``suite.attempts.StoreHome``). Before a cell trains,
its process claims it: ``Claims.claim(key)`` writes ``<key>.claim`` (the claimant's host, boot
id, pid, process start time, and when) while holding an exclusive lock on the folder, so that
of any number of processes, on one machine or on several sharing the folder, exactly one wins;
the others get the live ``Holder`` back and skip or wait. A claim ends when its holder releases
it (``Claim.release``, also on an error), or when its holder is found dead:

- on the same host (same host name and boot id): its pid is gone, or now belongs to a process
  started at another time (a reused pid);
- on another host: its heartbeat (the file's mtime, touched every ``HEARTBEAT_S`` seconds by a
  thread of the holder) is older than the folder's ``timeout`` seconds (default 600; the
  suite's setting ``store.claim_timeout``), measured against the shared filesystem's own clock.

A dead holder's claim is taken over by the next claimant, under the same lock. ``file_lock``
is the lock itself (``flock``; released by the kernel when its process dies), also used to
create a store once when several processes open a new one together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

HEARTBEAT_S = 30.0
DEFAULT_TIMEOUT_S = 600.0
SUFFIX = ".claim"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (made if missing) for the block: one process at a time,
    on this machine or over a filesystem with locks; freed by the kernel if the holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, /proc/PID/stat field 22), None where it
    does not exist (or the system has no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _pid_alive(pid: int) -> bool:
    if Path("/proc").is_dir():
        return process_start(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a claim."""

    host: str
    boot: str
    pid: int
    start: str | None  # process start time (see ``process_start``); None where unknown
    since: float  # wall time of the claim
    token: str  # unique per claim
    what: str = ""  # what is claimed, for people (the cell's name)

    @classmethod
    def me(cls, what: str = "") -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), _boot_id(), pid, process_start(pid), time.time(),
                   uuid.uuid4().hex, what)

    def same_host(self) -> bool:
        return self.host == socket.gethostname() and self.boot == _boot_id()

    def alive_here(self) -> bool:
        """On this host: whether the holding process still runs (and is the same process)."""
        if not _pid_alive(self.pid):
            return False
        return self.start is None or process_start(self.pid) in (None, self.start)

    def __str__(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} (since {when})"


class Claim:
    """A claim this process holds; ``release`` (or leaving the ``with`` block) gives it back.
    A thread touches the file every ``HEARTBEAT_S`` seconds while it is held."""

    def __init__(self, claims: Claims, key: str, holder: Holder, took_over: Holder | None):
        self.claims, self.key, self.holder = claims, key, holder
        self.took_over = took_over  # the dead holder whose claim this one replaced, if any
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                      name=f"claim {key}")
        self._beat.start()

    @property
    def path(self) -> Path:
        return self.claims.path(self.key)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                if self.claims._mine(self.key, self.holder):
                    os.utime(self.path)

    def release(self) -> None:
        """Remove the claim file if it is still this claim's (under the folder's lock)."""
        self._stop.set()
        with self.claims.lock():
            if self.claims._mine(self.key, self.holder):
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Claims:
    """A folder of claims, one file per key (a cell's config hash); another host's claim
    counts as dead after ``timeout`` seconds without a heartbeat."""

    def __init__(self, folder: Path, timeout: float = DEFAULT_TIMEOUT_S):
        if not timeout > 0:
            raise ValueError(f"claim timeout {timeout!r}: give a positive number of seconds")
        self.folder, self.timeout = Path(folder), float(timeout)

    def path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad claim key {key!r}")
        return self.folder / f"{key}{SUFFIX}"

    def lock(self):
        return file_lock(self.folder / ".lock")

    def claim(self, key: str, what: str = "") -> Claim | Holder:
        """Claim ``key``: a ``Claim`` when this process now holds it (taking over a dead
        holder's), else the live ``Holder``."""
        me = Holder.me(what)
        with self.lock():
            current = self._read(key)
            if current is not None and self._alive(key, current):
                return current
            self._write(key, me)
        return Claim(self, key, me, current)

    def holder(self, key: str) -> Holder | None:
        """The live holder of ``key``, or None (no claim, or its holder is dead)."""
        current = self._read(key)
        return current if current is not None and self._alive(key, current) else None

    def _alive(self, key: str, holder: Holder) -> bool:
        if holder.same_host():
            return holder.alive_here()
        try:
            age = self._fs_now() - self.path(key).stat().st_mtime
        except FileNotFoundError:
            return False
        return age <= self.timeout

    def _fs_now(self) -> float:
        """The filesystem's clock (a probe file's mtime), so that hosts' clocks never mix."""
        probe = self.folder / f".now-{socket.gethostname()}-{os.getpid()}"
        probe.touch()
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def _mine(self, key: str, holder: Holder) -> bool:
        current = self._read(key)
        return current is not None and current.token == holder.token

    def _read(self, key: str) -> Holder | None:
        try:
            data = json.loads(self.path(key).read_text())
            return Holder(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # not a claim this code wrote: nobody's
            return None

    def _write(self, key: str, holder: Holder) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.{holder.token}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(holder)))
        os.replace(tmp, self.path(key))
