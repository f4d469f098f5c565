"""The ``suite`` command line (also ``python -m suite``)."""

from __future__ import annotations

import argparse
import inspect
import sys

import attentions
from results.errors import StatedCommitError

from . import settings
from .profiles import PROFILES


def _plugins(args) -> None:
    for target in getattr(args, "plugin", None) or []:
        attentions.load_plugin(target)


def cmd_list(args) -> int:
    _plugins(args)
    for name in attentions.names():
        backends = ",".join(attentions.backends(name))
        print(f"attention  {name:<12} backends={backends:<20} {attentions.describe(name)}")
    import tasks

    for name in tasks.names():
        print(f"task       {name:<12} {_summary(inspect.getdoc(type(tasks.get(name))))}")
    return 0


def _summary(doc: str | None, width: int = 110) -> str:
    """The first sentence of a docstring, on one line."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = text.find(". ")
    text = text if end < 0 else text[: end + 1]
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_show(args) -> int:
    _plugins(args)
    import tasks

    print(tasks.show(args.task, length=args.length, seed=args.seed))
    return 0


def cmd_run(args) -> int:
    _plugins(args)
    from . import checks
    from .run import plan

    profile_settings = settings.changed(settings.current(), PROFILES[args.profile].settings)
    settings.use(settings.changed(profile_settings, args.settings or []))

    seeds = args.seeds if args.seeds is not None else PROFILES[args.profile].seeds
    cells = plan(args.attention, args.task, args.profile, seeds, args.device, args.backend,
                 check_device=args.executor != "ray", steps=args.steps,
                 batch_size=args.batch_size, lr=args.lr, eval_samples=args.eval_samples,
                 max_eval_length=args.max_eval_length)
    checks.cells(cells, args.executor)  # every cell can run: refused now, not after training
    checks.git_commit()
    from results.schema import is_offline

    if not is_offline(args.tracking_uri):
        checks.results_dir()  # the leaderboard files (and the default store) go there
    from .attempts import checkpoint_root, local_dir_of

    store_dir = local_dir_of(args.tracking_uri)
    checks.checkpoints(checkpoint_root(store_dir), beside_store=store_dir is not None)
    if args.executor == "ray":
        from .executors.ray import sweep_ray

        failed = sweep_ray(cells, args.tracking_uri, args.ray_address,
                           progress=not args.no_progress)
    else:
        from .executors.local import sweep

        failed = sweep(cells, args.tracking_uri, progress=not args.no_progress,
                       jobs=_jobs(args.jobs, cells))
    print()
    if is_offline(args.tracking_uri):
        print(f"offline log written; load it into a store with: suite import "
              f"{args.tracking_uri.removeprefix('jsonl:')}")
    else:
        cmd_leaderboard(args)
    if failed:
        print(f"suite: {failed} cell(s) FAILED; their runs hold the error (tag suite.error, "
              "artifact error.txt)", file=sys.stderr)
    return 1 if failed else 0


def _jobs(jobs: int | None, cells) -> int:
    """Worker processes of the local executor: ``--jobs``, else on the CPU one per core (each
    cell at ``suite.cpu.threads()`` threads), else 1 (a GPU trains one cell at a time)."""
    if jobs is not None:
        if jobs < 1:
            raise attentions.SpecError(f"--jobs {jobs}: give at least 1")
        return jobs
    if any(c.device != "cpu" for c in cells):
        return 1
    import os

    from . import cpu

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(cells), (cores or 1) // cpu.threads()))


def cmd_leaderboard(args) -> int:
    from results.cli import leaderboard_cmd

    from . import checks

    checks.profile(getattr(args, "profile", None))
    checks.results_dir()
    return leaderboard_cmd(args, git=settings.git_state())


def cmd_ui(args) -> int:
    from results.cli import ui_cmd

    from . import checks

    checks.port(args.port)
    return ui_cmd(args)


def cmd_import(args) -> int:
    from pathlib import Path

    from results.tracking import replay

    paths = [Path(p) for p in args.path]
    for path in paths:  # every log checked before any is read
        if not path.is_file():
            raise attentions.SpecError(
                f"suite import {path}: no such file; give the path of a log written by "
                "`suite run --tracking-uri jsonl:PATH`")
    status = 0
    for path in paths:
        try:
            counts = replay(path, args.tracking_uri)
        except (ValueError, UnicodeDecodeError) as err:
            raise attentions.SpecError(f"suite import: {err}") from err
        where = f"{path}: " if len(paths) > 1 else ""
        print(f"{where}imported {counts['imported']} run(s), skipped {counts['skipped']} "
              "already finished" + (f"; {counts['incomplete']} imported FAILED (cut off or "
                                    "damaged)" if counts["incomplete"] else ""))
        if counts["bad_lines"]:
            print(f"suite: error: {where}{counts['bad_lines']} damaged line(s) skipped, the "
                  f"first {counts['first_bad']}; the complete runs are imported; recover the "
                  "rest from the machine that wrote the log", file=sys.stderr)
            status = 2
    return status


def cmd_bench_train(args) -> int:
    import json

    import torch

    from .bench import train as bench_train

    if args.from_json:
        with open(args.from_json) as fh:
            result = json.load(fh)
    else:
        device = "cuda" if args.device == "cuda" else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise attentions.SpecError("--device cuda: no CUDA device is visible here")
        cells = [int(n) for n in str(args.cells).split(",") if n.strip()]
        if not cells or min(cells) < 1:
            raise attentions.SpecError(f"--cells {args.cells}: give counts >= 1, e.g. 1,2,4")
        atts = [attentions.canonical_spec(a) for a in (args.attention or
                                                       bench_train.ATTENTIONS)]
        if args.backend != "auto":
            from . import checks
            from . import profiles as P

            pe = P.get(args.profile or ("paper" if device == "cuda" else "quick")).pe
            for att in atts:
                checks.backend_usable(att, args.backend, device, pe)
        result = bench_train.run(args.task or list(bench_train.TASKS), atts, args.profile, device,
                                 steps=args.train_steps, warmup=args.warmup, cells=cells,
                                 out=args.out, backend=args.backend)
    print(bench_train.format_table(result))
    if not args.no_log:
        from results.schema import BENCH_TRAIN
        from results.speed import log_bench

        run_id = log_bench(bench_train.long_rows(result), args.tracking_uri, kind=BENCH_TRAIN,
                           git=settings.git_state())
        print(f"logged: bench_train run {run_id}")
    return 0


def _from_json(path: str) -> list[dict]:
    """The rows of ``--from-json``: a table of ``python -m suite.bench.cuda --out PATH``, or
    the rows `suite bench` kept when the store could not take them."""
    import json

    from results.speed import kept_rows

    from .bench import cuda as bench_cuda

    try:
        with open(path) as fh:
            rows = kept_rows(json.load(fh))
        if rows is None:
            return bench_cuda.from_json(path)
        for row in rows:  # what the printed table shows and a kept row may lack
            row.setdefault("ratio_to_sdpa", None)
            row.setdefault("peak_extra_mib", None)
        return rows
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise attentions.SpecError(
            f"--from-json {path}: not a table written by `python -m suite.bench.cuda --out "
            f"PATH` nor rows kept by `suite bench` ({type(err).__name__}: {err})") from err


def cmd_bench(args) -> int:
    from . import checks

    checks.positive("--lengths", args.lengths)
    checks.positive("--repeats", args.repeats)
    if not args.no_log:  # an unreachable or read-only store fails before measuring
        from results.tracking import Tracker

        Tracker(args.tracking_uri)
    if args.train or (args.from_json and _json_kind(args.from_json) == "train"):
        return cmd_bench_train(args)
    if args.from_json:
        rows = _from_json(args.from_json)
    elif args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise attentions.SpecError("--device cuda: no CUDA device is visible here")
        from .bench import cuda as bench_cuda

        rows = bench_cuda.run(args.lengths or bench_cuda.LENGTHS)
    else:
        from .bench import cpu

        rows = cpu.run(device=args.device, lengths=args.lengths or cpu.LENGTHS,
                       repeats=args.repeats)
    from .bench.common import format_table

    print(format_table(rows))
    if not args.no_log:
        from results.speed import log_bench

        run_id = log_bench(rows, args.tracking_uri, git=settings.git_state())
        print(f"logged: bench run {run_id} (the leaderboard's speed table reads it)")
    return 0


def _json_kind(path: str) -> str | None:
    import json

    try:
        with open(path) as fh:
            return json.load(fh).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="suite",
        description="Attention variants trained short, evaluated long, timed, and ranked.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def plugin_arg(sp):
        sp.add_argument("--plugin", action="append", metavar="FILE_OR_MODULE",
                        help="import a file or module that registers attentions or tasks")

    sp = sub.add_parser("list", help="the variants (with usable backends) and tasks")
    plugin_arg(sp)
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("show", help="print one decoded example of a task")
    sp.add_argument("task", help="task spec, e.g. mqmtar or flip_flop:p_write=0.8")
    sp.add_argument("--length", type=int, default=None)
    sp.add_argument("--seed", type=int, default=0)
    plugin_arg(sp)
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("run", help="train, evaluate across lengths, log, rank")
    sp.add_argument("--attention", action="append", metavar="SPEC",
                    help="attention spec (repeatable); default: every built-in variant")
    sp.add_argument("--task", action="append", metavar="SPEC",
                    help="task spec (repeatable); default: the profile's tasks")
    sp.add_argument("--profile", default="quick", choices=list(PROFILES))
    sp.add_argument("--seeds", type=int, default=None,
                    help="seeds 0..N-1 per cell (default: the profile's; quick: 3)")
    sp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sp.add_argument("--backend", default="auto", help="kernel backend: auto, torch, numba, ...")
    sp.add_argument("--set", action="append", dest="settings", metavar="NAME=VALUE",
                    help="a setting for this sweep (repeatable), over the SUITE_* environment "
                    "and the profile's, e.g. --set triton.skip=1; a setting that can change a "
                    "result enters the config hash (docs/settings.md)")
    sp.add_argument("--executor", default="local", choices=["local", "ray"])
    sp.add_argument("--jobs", type=int, default=None,
                    help="local executor: cells at once, each in a worker process (default: "
                    "one per core on the CPU, each at $SUITE_CPU_THREADS threads, default 1; "
                    "1 on a GPU)")
    sp.add_argument("--ray-address", default=None,
                    help="a running Ray cluster (default: start a local one)")
    sp.add_argument("--tracking-uri", default=None, help="MLflow URI (default: "
                    "$MLFLOW_TRACKING_URI, else results/mlflow.db), or jsonl:PATH for an "
                    "offline log on a machine without MLflow")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("--steps", type=int, default=None,
                    help="override the profile's training steps (warmup and validation shrink)")
    sp.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    sp.add_argument("--lr", type=float, default=None, help="override the peak learning rate")
    sp.add_argument("--eval-samples", type=int, default=None, help="samples per eval length")
    sp.add_argument("--max-eval-length", type=int, default=None,
                    help="cap the evaluation ladder at this length")
    plugin_arg(sp)
    sp.set_defaults(func=cmd_run)

    from results.cli import add_leaderboard_args, add_ui_args

    sp = sub.add_parser("leaderboard", help="aggregate the store: print the tables, write "
                        "results/leaderboard.{md,html,csv,png}, log them to MLflow")
    add_leaderboard_args(sp)
    sp.set_defaults(func=cmd_leaderboard)

    sp = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over the store")
    add_ui_args(sp)
    sp.set_defaults(func=cmd_ui)

    sp = sub.add_parser("import", help="load offline run logs (--tracking-uri jsonl:PATH) "
                        "into a tracking store")
    sp.add_argument("path", nargs="+", help="one or more logs, imported in order")
    sp.add_argument("--tracking-uri", default=None)
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("bench", help="kernel speed and memory benchmarks")
    sp.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sp.add_argument("--lengths", type=int, nargs="+", default=None)
    sp.add_argument("--repeats", type=int, default=3)
    sp.add_argument("--tracking-uri", default=None)
    sp.add_argument("--no-log", action="store_true", help="print only; log no bench run")
    sp.add_argument("--from-json", default=None, metavar="PATH",
                    help="log a GPU table written by `python -m suite.bench.cuda --out PATH` "
                    "on another machine instead of measuring here")
    sp.add_argument("--train", action="store_true",
                    help="training throughput of whole cells (tokens/s of the real step)")
    sp.add_argument("--task", action="append", metavar="SPEC",
                    help="with --train: task (repeatable; default mqmtar and sort)")
    sp.add_argument("--attention", action="append", metavar="SPEC",
                    help="with --train: attention (repeatable; default softmax, entmax, "
                    "asentmax; softmax is always timed as the baseline)")
    sp.add_argument("--profile", default=None,
                    help="with --train: the profile whose model and batch are timed "
                    "(default: paper on CUDA, quick on CPU)")
    sp.add_argument("--train-steps", type=int, default=200, help="with --train: timed steps")
    sp.add_argument("--warmup", type=int, default=20,
                    help="with --train: untimed steps first (compile, capture)")
    sp.add_argument("--cells", default="1",
                    help="with --train: cells per device to time packed, e.g. 1,2,4,8")
    sp.add_argument("--out", default=None, metavar="PATH",
                    help="with --train: also write the table as JSON (for --from-json)")
    sp.add_argument("--backend", default="auto",
                    help="with --train: the kernel backend the attentions are timed on "
                    "(default auto); the softmax baseline is timed on auto as well")
    sp.set_defaults(func=cmd_bench)
    return p


INTERRUPTED = {
    "run": "suite: interrupted; the run in progress is marked KILLED, and the same command "
           "resumes it from its last checkpoint",
    "import": "suite: interrupted; the run being imported is marked KILLED, and the same "
              "command imports what is missing",
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    restore = _terminate_as_interrupt()
    before = settings.current() if settings.loaded() else None
    try:
        settings.apply_environment()  # the SUITE_* variables, read once per command
        return args.func(args)
    except (attentions.SpecError, StatedCommitError) as err:
        print(f"suite: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM): one line, not a traceback
        print("\n" + INTERRUPTED.get(args.command, "suite: interrupted"), file=sys.stderr)
        return 130
    except RuntimeError as err:
        from results.errors import TrackingError

        if isinstance(err, TrackingError):
            print(f"suite: error: {err}", file=sys.stderr)
            return 2
        raise
    finally:
        restore()
        settings.restore(before)  # a caller in this process keeps its own settings


def _terminate_as_interrupt():
    """Ctrl-C (SIGINT) and SIGTERM end a command as a KeyboardInterrupt (a run in progress is
    marked KILLED), even in a process started with SIGINT ignored (as a shell starts a
    background job); in the main thread only. Returns what puts the old handlers back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig, handler in
           ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, interrupt))}
    return lambda: [signal.signal(sig, handler) for sig, handler in old.items()]
