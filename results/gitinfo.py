"""The git state of the checkout the suite runs from."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .errors import StatedCommitError


def git_state(path: Path | None = None, stated: str | None = None) -> dict[str, str]:
    """The commit and dirty flag of the checkout the suite runs from ("unknown" outside one).
    ``stated``: the commit a copied tree was made from, as its launcher states it, ``SHA`` or
    ``SHA+dirty`` (the suite's setting ``store.git_commit``, ``$SUITE_GIT_COMMIT``), for
    machines that receive a copy of the working tree without its own up-to-date history, where
    ``git`` would name whatever commit that copy's stale ``.git`` holds; taken instead of
    asking git (``git_source``: stated)."""
    stated = (stated or "").strip()
    if stated:
        sha, _, flag = stated.partition("+")
        if not re.fullmatch(r"[0-9a-f]{7,40}", sha) or flag not in ("", "dirty"):
            raise StatedCommitError(
                f"SUITE_GIT_COMMIT={stated!r} is not a commit: give a hex SHA, optionally "
                "followed by +dirty (e.g. $(git rev-parse HEAD)+dirty)")
        return {"git_commit": sha, "git_dirty": "true" if flag else "false",
                "git_source": "stated"}
    cwd = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit or "unknown",
            "git_dirty": ("true" if dirty else "false") if commit else "unknown"}
