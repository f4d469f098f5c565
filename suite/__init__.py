"""The attention suite: models, training, evaluation, sweeps, benchmarks and the ``suite`` CLI."""

__version__ = "0.2.0"
