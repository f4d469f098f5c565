"""The suite's version, in every config hash and run."""

__version__ = "0.3.0"
