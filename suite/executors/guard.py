"""A guard that keeps a process no longer alive than its parent.

``python -m suite.executors.guard PARENT_PID -- COMMAND...``, started in a session of its own, runs
COMMAND in its process group and waits. When COMMAND exits, the guard exits with its code; when
the parent is gone, even by ``kill -9``, the guard stops its whole process group (SIGTERM, then
SIGKILL after ten seconds). The Ray executor runs its ``mlflow server`` under it, so a killed
sweep leaves no server holding the port and the store. Standard library only: it starts in a
fraction of a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _parent_alive(parent: int) -> bool:
    return os.getppid() == parent


def _stop_group(child: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to every other member of this process group, SIGKILL to what is left."""
    pgid = os.getpgid(0)
    if pgid != os.getpid():  # not started in a session of its own: stop the child only
        child.terminate()
        child.wait(grace)
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the guard outlives its own broadcast
    os.killpg(pgid, signal.SIGTERM)
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(pgid, signal.SIGKILL)  # ends the guard too


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m suite.executors.guard PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    parent = int(argv[0])
    child = subprocess.Popen(argv[2:])
    while child.poll() is None:
        if not _parent_alive(parent):
            _stop_group(child)
        time.sleep(0.5)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
