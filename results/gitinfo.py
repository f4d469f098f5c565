"""The git state of the checkout the suite runs from."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(path: Path | None = None) -> dict[str, str]:
    """The commit and dirty flag of the checkout the suite runs from ("unknown" outside one)."""
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
