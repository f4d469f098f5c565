"""The tracking server a sweep's workers log through: an ``mlflow server`` on 127.0.0.1 in
front of a database store, started under ``guard`` so that it stops with its driver."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tracking_server(uri: str) -> Iterator[tuple[str, int | None, str | None]]:
    """(http URI the workers use, server pid or None, server log or None). An http(s) URI is
    used as it is; any other store gets an ``mlflow server`` on 127.0.0.1 in front of it,
    guarded so that it stops with this process even after a ``kill -9``."""
    from results import ui
    from results.schema import is_http

    if is_http(uri):
        yield uri, None, None
        return
    port = ui.free_port()
    base = f"http://{ui.HOST}:{port}"
    fd, log_path = tempfile.mkstemp(prefix="suite-mlflow-server-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "suite.executors.guard", str(os.getpid()), "--",
             *ui.server_command(uri, port)],
            env={**os.environ, **ui.SERVER_ENV}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        ui.wait_ready(proc, base)
        yield base, proc.pid, log_path
    except BaseException:
        ui.stop(proc)
        raise  # the server's log stays for a look
    ui.stop(proc)
    Path(log_path).unlink(missing_ok=True)
