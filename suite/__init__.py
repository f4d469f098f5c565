"""The attention suite: models, training, evaluation, sweeps, benchmarks and the ``suite`` CLI."""

__version__ = "0.1.0"
