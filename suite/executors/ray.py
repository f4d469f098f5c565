"""``suite run --executor ray``: every (attention, task, seed) cell is a Ray task.

The driver connects to ``--ray-address`` (or starts a local cluster and shuts it down at the
end), makes sure one MLflow tracking server fronts the store (the user's http(s) URI, else an
``mlflow server`` on 127.0.0.1 over the embedded ``results/mlflow.db``: workers never write
one SQLite file directly), skips cells already FINISHED, and submits the rest (the sweep's
loop, ``loop``; ``RayTasks`` is how a cell starts here). A task:

1. sets its checkpoint root to the driver's absolute one and torch's
   threads to its CPU share (on CPU a seed then gives the local executor's metrics bit for
   bit, when the local run uses as many threads), and checks that its code is the code the
   driver planned with (the cell's ``code.*`` identity);
2. re-checks the store and returns at once when the cell has finished meanwhile;
3. claims the cell in the store's claims folder, which the driver names (``suite.attempts``):
   when a live process (a worker of another sweep, a local ``suite run``) holds it, returns
   "busy" and the driver waits for that claim to end; a dead holder's claim is taken over;
4. runs ``suite.run.run_cell`` through a ``ClaimedTracker`` (training resumes from the
   store's ``<checkpoints>/<store id>/<config hash>/last.pt``, re-logging the history kept
   there; the dead attempts' RUNNING runs end KILLED, tagged ``suite.superseded_by``; right
   before its run would end FINISHED, the store is checked once more);
5. settles the cell: of several FINISHED runs of one hash the smallest run id stays FINISHED
   and the others become KILLED (claims make this a backstop only).

Faults: Ray reruns a task whose worker or node died (``max_retries``); an exception is retried
by the driver up to ``SUITE_RAY_ATTEMPTS`` attempts in all (default 3), except the
deterministic ones (a non-finite loss, a bad spec), and each failed attempt is a FAILED run
carrying its error. A cell that fails for good is counted and the sweep goes on.

Settings (``suite.settings``; docs/settings.md): ``ray.num_cpus`` (size of a local cluster;
default: all cores), ``ray.cpus_per_cell`` / ``ray.gpus_per_cell`` (override the profile's
resources), ``ray.attempts``, ``store.checkpoint_dir`` (must be shared by every node). The
settings that change a result travel with each cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import traceback
import uuid
from typing import Any

import attentions
from results import schema
from results.claims import Holder

from .. import settings
from ..attempts import ClaimedTracker, DuplicateRun, StoreHome, store_home
from ..profiles import RESOURCES, Resources
from ..train import Cell, ForeignCheckpoint, NonFiniteLoss
from .loop import Executor, Job, Outcome, sweep_loop
from .plugins import load_plugins, plugins_for
from .server import tracking_server

SYSTEM_RETRIES = 2  # Ray reruns of a task whose worker or node died
# deterministic: a retry fails the same way
NOT_RETRIED = (NonFiniteLoss, attentions.SpecError, ForeignCheckpoint)


def cell_resources(cell: Cell) -> Resources:
    """The profile's declaration (``Profile.resources``), then the settings
    ``ray.cpus_per_cell`` / ``ray.gpus_per_cell``."""
    res = cell.profile.resources.get(cell.device, RESOURCES[cell.device])
    cluster = settings.current().cluster
    cpus = cluster.ray_cpus_per_cell or res.num_cpus
    if cell.device != "cuda":
        return Resources(cpus, 0.0)
    return Resources(cpus, cluster.ray_gpus_per_cell or res.num_gpus)


# ---------------------------------------------------------------- the worker side


def settle(tracker, experiment: str, config_hash: str) -> str | None:
    """Leave one FINISHED run for the config hash (the smallest run id) and no RUNNING one;
    returns the FINISHED run's id. Every finisher calls it, so the store converges."""
    done = sorted(tracker.runs(experiment, config_hash=config_hash, status="FINISHED"))
    if not done:
        return None
    keep = done[0]
    for run_id in done[1:]:
        tracker.end(run_id, "KILLED", {schema.DUPLICATE_OF: keep})
    for run_id in tracker.runs(experiment, config_hash=config_hash, status="RUNNING"):
        tracker.end(run_id, "KILLED", {schema.SUPERSEDED_BY: keep})
    return keep


def check_code(cell: Cell) -> None:
    """The worker's code must be the code the driver planned the cell with."""
    from ..identity import code_identity

    here = code_identity(cell.attention, cell.task)
    planned = dict(cell.code)
    if planned and here != planned:
        diff = ", ".join(f"{k}: planned {planned.get(k)}, here {v}" for k, v in here.items()
                         if planned.get(k) != v)
        raise attentions.SpecError(
            f"{cell.name}: this worker's code differs from the driver's ({diff}); install the "
            "same checkout and plugin files on every node, and do not edit them during a sweep")


def run_cell_task(cell: Cell, uri: str, home: StoreHome, tags: dict[str, str], threads: int,
                  plugins: list[str], step: settings.Step | None = None) -> dict[str, Any]:
    """One cell on a Ray worker, with the driver's training-step settings (``step``; those
    that change a result travel in the cell too) and checkpoint root. Returns {"status":
    "finished" | "skipped" | "duplicate" | "busy" | "failed", ...}; raises only when the worker
    itself breaks."""
    import platform

    import torch

    from results.tracking import Tracker

    from ..run import experiment, run_cell

    now = settings.current()
    settings.use(dataclasses.replace(now, step=step or now.step, store=dataclasses.replace(
        now.store, checkpoint_dir=str(home.checkpoints.parent))))
    torch.set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    node = {schema.tag("ray_node"): platform.node()}
    claimed = None
    try:
        load_plugins(plugins)
        check_code(cell)
        tracker = Tracker(uri)
        done = tracker.finished(experiment(cell), cell.config_hash)
        if done:
            return {"status": "skipped", "run": done}
        claim = home.claims.claim(cell.config_hash, cell.name)
        if isinstance(claim, Holder):
            return {"status": "busy", "holder": str(claim)}
        with claim:
            done = tracker.finished(experiment(cell), cell.config_hash)
            if done:
                return {"status": "skipped", "run": done}
            cell_dir = home.cell_dir(cell.config_hash)
            claimed = ClaimedTracker(tracker, cell.config_hash, cell_dir, {**tags, **node},
                                     claim.took_over)
            results = run_cell(cell, claimed, progress=False, ckpt_dir=cell_dir)
            keep = settle(tracker, experiment(cell), cell.config_hash)
        if keep != claimed.run_id:
            return {"status": "duplicate", "run": keep}
        return {"status": "finished", "run": keep, "results": _plain(results),
                "seconds": time.perf_counter() - t0, "superseded": claimed.superseded}
    except DuplicateRun as dup:
        return {"status": "duplicate", "run": dup.args[0]}
    except Exception as err:
        return {"status": "failed", "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(), "retry": not isinstance(err, NOT_RETRIED),
                "run": claimed.run_id if claimed else None,
                "superseded": claimed.superseded if claimed else []}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _plain(results: dict) -> dict:
    """The headline metrics per length (no per-head diagnostics) for the driver's line."""
    return {n: {k: v for k, v in r.items() if k != "diagnostics"} for n, r in results.items()}


# ---------------------------------------------------------------- the driver


def _place(cells: list[Cell], resources: dict) -> list[Cell]:
    """Resolve ``--device auto`` against the cluster (not the driver): cuda when it has GPUs;
    an explicit cuda on a cluster without GPUs fails at once."""
    gpus = float(resources.get("GPU", 0))
    out = []
    for c in cells:
        device = c.device if c.device != "auto" else ("cuda" if gpus else "cpu")
        if device == "cuda" and not gpus:
            raise attentions.SpecError(
                "--device cuda: the Ray cluster has no GPUs; use --device cpu or auto")
        out.append(dataclasses.replace(c, device=device))
    return out


def _init_ray(ray, address: str | None, num_cpus: int | None) -> bool:
    """Connect or start; True when this call started (and so must shut down) the cluster."""
    if ray.is_initialized():
        return False
    common = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        try:
            ray.init(address=address, **common)
        except ConnectionError as err:
            raise attentions.SpecError(
                f"--ray-address {address}: {err}. A cluster with token authentication (Ray's "
                "default when ~/.ray/auth_token exists) needs RAY_AUTH_MODE=token and the token "
                "(that file or RAY_AUTH_TOKEN) in this shell too") from None
        return True  # disconnects this driver; the cluster itself stays up
    cpus = num_cpus or settings.current().cluster.ray_num_cpus or os.cpu_count() or 1
    # a local cluster stays on the loopback interface: nothing listens beyond this machine
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 << 20,
             _node_ip_address="127.0.0.1", **common)
    return True


def _record_failure(tracker, cell: Cell, sweep_id: str, error: str) -> None:
    """End the cell's RUNNING runs of this sweep FAILED with the error (their worker died), or
    log a FAILED run when the attempt left none."""
    from ..run import cell_tags, experiment, run_name

    failed = {schema.ERROR: error[:schema.ERROR_LIMIT]}
    stale = tracker.runs(experiment(cell), config_hash=cell.config_hash, sweep_id=sweep_id,
                         status="RUNNING")
    for run_id in stale:
        tracker.end(run_id, "FAILED", failed)
    if not stale:
        tags = cell_tags(cell, executor="ray", sweep_id=sweep_id)
        log = tracker.start(experiment(cell), run_name(cell), tags, cell.config())
        tracker.end(log.run_id, "FAILED", failed)


def sweep_ray(cells: list[Cell], tracking_uri: str | None = None,
              ray_address: str | None = None, progress: bool = True, out=None, *,
              num_cpus: int | None = None, attempts: int | None = None) -> int:
    """Run the cells as Ray tasks; returns the number that failed. ``progress`` prints a line
    per cell as it is submitted (workers draw no progress bars)."""
    out = out or sys.stdout
    try:
        import ray
    except ImportError:
        raise attentions.SpecError(
            "--executor ray needs Ray: pip install 'attention-suite[ray]'") from None
    from results.tracking import resolve_uri

    if schema.is_offline(tracking_uri):
        raise attentions.SpecError(
            "--executor ray logs through an MLflow tracking server; an offline jsonl: log is "
            "for the local executor (run the Ray sweep on a machine with MLflow)")
    attempts = attempts or settings.current().cluster.ray_attempts
    prior_env = os.environ.get("MLFLOW_TRACKING_URI")  # MLflow sets it to the last URI used
    try:
        return _sweep(ray, cells, resolve_uri(tracking_uri), ray_address, num_cpus, attempts,
                      progress, out)
    finally:
        if prior_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = prior_env


def _sweep(ray, cells, uri, ray_address, num_cpus, attempts, progress, out) -> int:
    from results.tracking import Tracker

    from ..run import experiment

    plugins = plugins_for(cells)
    direct = Tracker(uri)  # the store itself (its home is named by its id and place)
    home = store_home(direct)
    ckpt = str(home.checkpoints)
    if not schema.is_http(uri):
        # Experiments made here (one writer, before the server starts) keep their artifacts
        # beside the database, where the local executor puts them.
        for name in sorted({experiment(c) for c in cells}):
            direct.experiment(name)

    started = _init_ray(ray, ray_address, num_cpus)
    try:
        cells = _place(cells, ray.cluster_resources())
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1 and not schema.is_http(uri):
            raise attentions.SpecError(
                f"the Ray cluster has {len(nodes)} nodes, but the store {uri!r} is not a "
                "tracking server they can all reach: start `mlflow server --host 0.0.0.0 ...` "
                "and pass --tracking-uri http://HOST:PORT (see the README)")
        with tracking_server(uri) as (server, pid, log_path):
            tracker = Tracker(server)
            res = ray.cluster_resources()
            where = f"{uri} via mlflow server {server} (pid {pid}, log {log_path})" if pid \
                else uri
            print(f"store: {where}  ({len(cells)} cells on Ray: {len(nodes)} node(s), "
                  f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU; checkpoints {ckpt})",
                  file=out, flush=True)
            print(f"leaderboard while it runs: suite leaderboard --tracking-uri {server}",
                  file=out, flush=True)
            say = lambda text: print(text, file=out, flush=True)  # noqa: E731
            executor = RayTasks(ray, tracker, home, say, server, plugins, attempts, progress)
            return sweep_loop(executor, cells)
    finally:
        if started:
            ray.shutdown()


class RayTasks(Executor):
    """Every cell a Ray task (``run_cell_task``) that claims the cell where it runs: a task that
    finds the cell held reports it busy, and the loop waits for its holder. A task that raised
    is submitted again, up to ``attempts`` attempts in all, unless its error is deterministic
    (``NOT_RETRIED``); a cell whose worker died and whose Ray retries are spent fails."""

    def __init__(self, ray, tracker, home: StoreHome, say, server: str, plugins: list[str],
                 attempts: int, progress: bool):
        super().__init__(tracker, home, say)
        self.ray, self.server, self.plugins = ray, server, plugins
        self.attempts, self.progress = attempts, progress
        self.sweep_id = uuid.uuid4().hex[:12]
        self.pending: dict[Any, Job] = {}  # task -> its job
        self.attempt: dict[str, int] = {}  # a job's head -> its attempt last submitted

    def claim(self, cell: Cell) -> Holder | None:
        """Only a look: the task claims the cell where it runs. A cell held by another live
        process waits without a task."""
        return self.home.claims.holder(cell.config_hash)

    def run(self, job: Job) -> None:
        self._submit(job, self.attempt.get(job.head, 1))  # after a wait: the same attempt

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def collect(self, timeout: float | None) -> list[Outcome]:
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        outcomes = [self._outcome(ref) for ref in ready]
        return [outcome for outcome in outcomes if outcome is not None]

    def close(self) -> None:
        """Cancel the tasks still running (Ctrl-C, a broken store) and end their runs of this
        sweep KILLED."""
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        with contextlib.suppress(Exception):
            for job in self.pending.values():
                _kill_running(self.tracker, job.cell, self.sweep_id)

    def _submit(self, job: Job, attempt: int) -> None:
        cell, res = job.cell, cell_resources(job.cell)
        task = self.ray.remote(run_cell_task).options(
            num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_retries=SYSTEM_RETRIES,
            retry_exceptions=False, name=f"cell {cell.name}")
        tags = {schema.tag("executor"): "ray", schema.SWEEP: self.sweep_id,
                schema.tag("attempt"): str(attempt)}
        ref = task.remote(cell, self.server, self.home, tags, max(1, int(res.num_cpus)),
                          self.plugins, settings.current().step)
        self.pending[ref] = job
        self.attempt[job.head] = attempt
        if self.progress:
            self.say(f"{job.head}: submitted (attempt {attempt}, {res.num_cpus:g} CPU, "
                     f"{res.num_gpus:g} GPU)")

    def _outcome(self, ref) -> Outcome | None:
        """What a finished task says of its cell; None when the cell was submitted again."""
        from ..run import ladder

        job = self.pending.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:  # the worker or node died, retries spent
            error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:500]}"
            _record_failure(self.tracker, job.cell, self.sweep_id, error)
            return Outcome(job, "failed", error=error)
        status, superseded = result["status"], tuple(result.get("superseded", ()))
        if status == "busy":
            return Outcome(job, "busy", holder=result["holder"])
        if status == "finished":
            return Outcome(job, "done", seconds=result["seconds"],
                           ladder=ladder(result["results"]), superseded=superseded)
        if status in ("skipped", "duplicate"):
            return Outcome(job, "duplicate", run=result["run"])
        attempt = self.attempt[job.head]
        if result["retry"] and attempt < self.attempts:
            self.say(f"{job.head}: attempt {attempt} failed ({result['error']}); retrying")
            self._submit(job, attempt + 1)
            return None
        if result["run"] is None:  # it failed before its run existed
            _record_failure(self.tracker, job.cell, self.sweep_id, result["error"])
        return Outcome(job, "failed", error=result["error"], superseded=superseded)


def _kill_running(tracker, cell: Cell, sweep_id: str) -> None:
    from ..run import experiment

    for run_id in tracker.runs(experiment(cell), config_hash=cell.config_hash,
                               sweep_id=sweep_id, status="RUNNING"):
        tracker.end(run_id, "KILLED")
