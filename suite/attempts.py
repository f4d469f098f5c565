"""One FINISHED run per config, whatever runs at once: a store's folders, claims, attempts.

Every store has a home on the filesystem (``StoreHome``), named by the store's id (taken from
the store itself, so a store made anew at the same path is a new home):

- claims: ``<store folder>/suite-claims/<store id>/``, beside an embedded database or an
  offline log; for a tracking server, ``<checkpoint root>/suite-claims/<store id>/`` (a Ray
  cluster shares its checkpoint root already);
- checkpoints: ``<checkpoint root>/<store id>/<config hash>/``, where the root is
  ``$SUITE_CHECKPOINT_DIR``, else ``checkpoints/`` beside the database or log, else
  ``results/checkpoints`` (a tracking server). The config hash names the code as well
  (``suite.identity``), so a cell never resumes from another store's checkpoint or another
  code's.

An executor claims a cell (``results.claims``) before it trains, and trains it through a
``ClaimedTracker``: as its run starts, every other RUNNING run of the config hash (an attempt
whose process died: only the claim's holder trains) ends KILLED, tagged ``suite.superseded_by``
and with the reason in ``suite.error``; right before its run would end FINISHED, it checks the
store once more (``DuplicateRun``); once FINISHED, the optimizer checkpoint (``last.pt``) is
removed (the selected weights, ``best.pt``, stay).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from results import schema
from results.claims import Claims, Holder


@dataclasses.dataclass(frozen=True)
class StoreHome:
    store_id: str
    claims_dir: Path
    checkpoints: Path  # the store's checkpoint folder: one sub-folder per config hash

    @property
    def claims(self) -> Claims:
        from . import settings

        return Claims(self.claims_dir, timeout=settings.current().store.claim_timeout)

    def cell_dir(self, config_hash: str) -> Path:
        return self.checkpoints / config_hash


def checkpoint_root(local_dir: Path | None) -> Path:
    """``$SUITE_CHECKPOINT_DIR``, else ``checkpoints/`` in the store's folder, else
    ``results/checkpoints`` (absolute)."""
    from . import settings

    chosen = settings.current().store.checkpoint_dir
    if chosen:
        return Path(chosen).resolve()
    return (local_dir / "checkpoints" if local_dir else Path("results") / "checkpoints").resolve()


def local_dir_of(uri: str | None) -> Path | None:
    """The folder of the embedded store or offline log a URI names (resolved as the trackers
    resolve it: ``MLFLOW_TRACKING_URI``, else ``results/mlflow.db``), None for a server."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///results/mlflow.db"
    if schema.is_offline(uri):
        return Path(uri.removeprefix(schema.OFFLINE_PREFIX)).expanduser().absolute().parent
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).absolute().parent
    return None


def store_home(tracker) -> StoreHome:
    """The folders of the tracker's store (see the module's docstring)."""
    store_id = f"store-{tracker.store_id()}"
    local = tracker.local_dir()
    root = checkpoint_root(local)
    claims = (local or root) / "suite-claims" / store_id  # never a module name
    return StoreHome(store_id, claims.resolve(), root / store_id)


class DuplicateRun(BaseException):
    """Another run of the same config hash finished first. A BaseException on purpose: the
    tracker then ends this run KILLED (not FAILED), and no ``except Exception`` swallows it."""


def supersede(tracker, experiment: str, config_hash: str, keep: str, reason: str) -> list[str]:
    """End every RUNNING run of the config hash but ``keep`` KILLED, tagged
    ``suite.superseded_by`` = ``keep`` and ``suite.error`` = ``reason``; their ids."""
    stale = [r for r in tracker.runs(experiment, config_hash=config_hash, status="RUNNING")
             if r != keep]
    for run_id in stale:
        tracker.end(run_id, "KILLED", {schema.SUPERSEDED_BY: keep,
                                       schema.ERROR: reason[:schema.ERROR_LIMIT]})
    return stale


class ClaimedTracker:
    """The tracker through which a claimed cell's run is logged (see the module's docstring);
    ``tags`` are added to the run's (the executor, a sweep's id)."""

    def __init__(self, tracker, config_hash: str, cell_dir: Path | None = None,
                 tags: dict[str, str] | None = None, took_over: Holder | None = None):
        self.tracker, self.config_hash, self.cell_dir = tracker, config_hash, cell_dir
        self.tags, self.took_over = dict(tags or {}), took_over
        self.run_id: str | None = None
        self.superseded: list[str] = []

    @property
    def uri(self) -> str:
        return self.tracker.uri

    def finished(self, experiment: str, config_hash: str) -> str | None:
        return self.tracker.finished(experiment, config_hash)

    @contextlib.contextmanager
    def run(self, experiment, name, params, tags, **kw):
        with self.tracker.run(experiment, name, params, {**tags, **self.tags}, **kw) as log:
            self.run_id = log.run_id
            dead = f" (its claim, held by {self.took_over}, was taken over)" \
                if self.took_over else ""
            self.superseded = supersede(
                self.tracker, experiment, self.config_hash, log.run_id,
                f"interrupted: its process ended before the run did{dead}; run {log.run_id} "
                "took the cell over")
            yield log
            other = self.tracker.finished(experiment, self.config_hash)
            if other:
                raise DuplicateRun(other)
        if self.cell_dir is not None:  # FINISHED: nothing will resume from it
            (self.cell_dir / "last.pt").unlink(missing_ok=True)
