"""The tracker interface: what the executors log a sweep's cells through (the schema of what
they log: ``results.schema``).

``open_tracker`` opens one for a URI: the MLflow store (``results.tracking.Tracker``) or, for
``jsonl:PATH``, an offline log for a machine without MLflow (``results.offline.JsonlTracker``,
loaded into a store later by ``suite import``). Both answer::

    tracker.uri                                   # the resolved store
    tracker.finished(experiment, config_hash)     # a FINISHED run's id, or None
    with tracker.run(experiment, name, params, tags) as log:   # ends FINISHED, or FAILED
        log.metrics(values, step); log.dict(obj, name)          # (KILLED on Ctrl-C) when
        log.run_id                                               # the block raises

The MLflow tracker adds what a sweep over a shared store needs: ``runs(experiment, **where)``
(the ids of the runs that match ``schema.where``), ``start`` and ``end`` (a run begun and ended
by hand, with a status and tags), ``experiment``, ``existing``, ``search`` and ``artifact_text``.
"""

from __future__ import annotations

from .schema import is_offline


def open_tracker(uri: str | None = None):
    """The tracker for a URI: an offline log for ``jsonl:PATH`` (no mlflow import), else the
    MLflow store (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the embedded one)."""
    if is_offline(uri):
        from .offline import JsonlTracker

        return JsonlTracker(uri)
    from .tracking import Tracker

    return Tracker(uri)
