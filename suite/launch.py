"""The ``suite`` command's entry point (the console script and ``python -m suite``): for
``suite run`` on the CPU it sets the reproducible CPU settings (``suite.cpu``) before torch or
numba is imported, then hands over to ``suite.cli``."""

from __future__ import annotations

import sys

from . import cpu


def _device(argv: list[str]) -> str:
    device = "auto"
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            device = argv[i + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    return device


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["run"] and _device(args) != "cuda":
        cpu.apply()
    from .cli import main as cli_main

    return cli_main(argv)
