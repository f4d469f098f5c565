"""The attention suite: models, training, evaluation, sweeps, benchmarks and the ``suite`` CLI."""

from .version import __version__  # noqa: F401
