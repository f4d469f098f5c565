"""The store's schema, without importing mlflow: what a run of the suite carries, and how runs
are found, lives here and nowhere else.

- One experiment per task (``cell_experiment``), plus the ``leaderboard`` and ``bench``
  experiments; every run is tagged with its kind (``KIND``: cell, leaderboard or bench).
- A cell run carries its identity and environment as ``suite.*`` tags (``cell_tags``), library
  versions as ``version.*`` tags, the flattened config as params, and metrics per length both
  under ``<metric>_L<length>`` (``metric_key``) and under the bare name with the length as the
  step, so that MLflow's chart of a metric is that metric against length.
- Runs are found by ``where`` (the MLflow filter strings of the suite's queries).
- A URI is a tracking server (``is_http``), an offline log (``is_offline``), or a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OFFLINE_PREFIX = "jsonl:"

# kinds of run (the value of the KIND tag); the runs that are not cells go to an experiment
# named after their kind
CELL, LEADERBOARD, BENCH, BENCH_TRAIN = "cell", "leaderboard", "bench", "bench_train"
LEADERBOARD_EXPERIMENT, BENCH_EXPERIMENT = LEADERBOARD, BENCH

# tags: the suite's own are "suite.<field>"; the ones the code reads or sets by name
PREFIX = "suite."
KIND = "suite.kind"
HASH = "suite.config_hash"
ERROR = "suite.error"  # the exception that ended a run FAILED or KILLED
SWEEP = "suite.sweep_id"  # one Ray sweep's runs
DUPLICATE_OF = "suite.duplicate_of"  # a FINISHED run that lost a race to another of its hash
SUPERSEDED_BY = "suite.superseded_by"  # an interrupted attempt whose cell finished later
IMPORTED_FROM = "suite.imported_from"  # an offline log the run was loaded from
ERROR_LIMIT = 4900  # characters of an error kept in its tag
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")


def tag(field: str) -> str:
    """The tag of one of the suite's fields, e.g. ``tag("task") == "suite.task"``."""
    return f"{PREFIX}{field}"


def fields(tags: Mapping[str, str]) -> dict[str, str]:
    """``tag``'s inverse over a run's tags: {"task": ..., "seed": ..., ...}."""
    return {k.removeprefix(PREFIX): v for k, v in tags.items() if k.startswith(PREFIX)}


def cell_experiment(task_name: str) -> str:
    """The experiment of a task's cells: one per task, named after it."""
    return task_name


def cell_tags(identity: Mapping[str, Any], versions: Mapping[str, str] | None = None
              ) -> dict[str, str]:
    """The tags of a cell run: KIND, then every field of ``identity`` as ``suite.<field>``
    (``config_hash`` becomes HASH), and ``versions`` as ``version.<library>``."""
    tags = {KIND: CELL, **{tag(k): str(v) for k, v in identity.items()}}
    return {**tags, **{f"version.{k}": str(v) for k, v in (versions or {}).items()}}


def metric_key(metric: str, length: int) -> str:
    """The key of a metric at one evaluation length, e.g. ``exact_match_L512``."""
    return f"{metric}_L{int(length)}"


def split_metric_key(key: str) -> tuple[str, int] | None:
    """``metric_key``'s inverse: ("exact_match", 512) for ``exact_match_L512``, else None."""
    name, sep, length = key.rpartition("_L")
    return (name, int(length)) if sep and name and length.isdigit() else None


def where(*, kind: str | None = None, status: str | None = None,
          config_hash: str | None = None, sweep_id: str | None = None) -> str:
    """The filter string of the runs that match every condition given."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    terms = [f"tags.`{name}` = '{_quoted(value)}'" for name, value in
             ((KIND, kind), (HASH, config_hash), (SWEEP, sweep_id)) if value is not None]
    if status is not None:
        terms.append(f"attributes.status = '{status}'")
    return " and ".join(terms)


def _quoted(value: str) -> str:
    if "'" in value:
        raise ValueError(f"a filter value cannot hold a quote: {value!r}")
    return value


def is_http(uri: str | None) -> bool:
    """Whether the store is a tracking server (every worker reaches it over HTTP)."""
    return bool(uri) and uri.startswith(("http://", "https://"))


def is_offline(uri: str | None) -> bool:
    """Whether the "store" is an offline JSON-lines log (``jsonl:PATH``)."""
    return bool(uri) and uri.startswith(OFFLINE_PREFIX)
