"""`suite leaderboard` and `suite ui` (suite/cli.py dispatches here). Importing this module is
cheap: mlflow loads only when a command runs."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else results/mlflow.db)"


def add_leaderboard_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None, help=URI_HELP)
    parser.add_argument("--profile", default=None,
                        help="the profile whose runs to rank (default: the newest run's)")
    parser.add_argument("--no-log", action="store_true",
                        help="write results/leaderboard.* but log no leaderboard run")
    parser.add_argument("--format", default="text", choices=["text", "markdown"],
                        help="what to print: the terminal tables, or the README's markdown "
                        "section (how the runs were made, mean ± std over seeds, the ranking)")
    parser.add_argument("--reference", nargs="*", default=None, metavar="LOG",
                        help="rank the published reference runs of the same profile and "
                        "tasks beside the store's, marked as references (default: the logs "
                        "the suite ships in results/published/; or these offline logs or "
                        "folders)")
    parser.add_argument("--write-readme", nargs="?", const="README.md", default=None,
                        metavar="PATH", help="put the markdown section between the markers "
                        "of PATH (default README.md: the main job's; docs/results.md holds "
                        "the reference profiles' sections, e.g. --reference --profile repro "
                        "--write-readme docs/results.md)")


def leaderboard_cmd(args, git: dict[str, str] | None = None) -> int:
    """Print the tables, write results/leaderboard.{csv,md,png,html}, log the leaderboard run
    (tagged with ``git``, default git's state); with ``--format markdown`` / ``--write-readme``,
    the README's section too."""
    from .report import make

    try:
        rep = make(args.tracking_uri, getattr(args, "profile", None), Path("results"),
                   log=not getattr(args, "no_log", False),
                   reference=getattr(args, "reference", None), git=git)
    except (FileNotFoundError, ValueError) as err:  # a --reference log that is not one
        if getattr(args, "reference", None) is None:
            raise
        print(f"suite: error: {err}", file=sys.stderr)
        return 2
    markdown = getattr(args, "format", "text") == "markdown"
    target = getattr(args, "write_readme", None)
    if markdown or target:
        from . import readme
        from .tracking import Tracker

        try:
            text = readme.section(Tracker(rep.uri), rep.profile, rep.records,
                                  rep.reference_runs)
            if target:
                readme.write(Path(target), text, rep.profile)
        except readme.ReadmeError as err:
            print(f"suite: error: {err}", file=sys.stderr)
            return 2
    print(text if markdown else rep.text)
    if target:
        print(f"\nwritten: {target} (the section between its markers)")
    if rep.files:
        print(f"\nwritten: {', '.join(str(p) for p in rep.files)}")
    if rep.run_id:
        print(f"logged: leaderboard run {rep.run_id} in {rep.uri} (see it with `suite ui`)")
    return 0


def add_ui_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (5000)")
    parser.add_argument("--tracking-uri", default=None, help=URI_HELP)


def ui_cmd(args) -> int:
    """Start the MLflow UI over the store and print the leaderboard run's URL and each task's
    chart view; Ctrl-C (or SIGTERM) stops the server and returns within seconds."""
    from . import ui
    from .report import latest
    from .schema import is_http
    from .tracking import Tracker

    tracker = Tracker(args.tracking_uri)  # a corrupt or unreachable store fails here
    ui.model_training_view(tracker)
    found = latest(tracker)
    if is_http(tracker.uri):
        print(f"the store is a tracking server: its UI is {ui.run_url(tracker.uri, found)}")
        _print_tasks(ui, tracker, tracker.uri)
        return 0
    base = f"http://{ui.HOST}:{args.port}"
    log_path = ui.log_path(tracker.uri)
    proc = ui.start(tracker.uri, args.port, log=open(log_path, "a"))  # noqa: SIM115
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ui.wait_ready(proc, base)
        print(f"MLflow UI over {tracker.uri} (mlflow server pid {proc.pid}, its log "
              f"{log_path})", flush=True)
        print(("leaderboard run: " if found else "no leaderboard run yet (run `suite "
               "leaderboard`); experiments: ") + ui.run_url(base, found), flush=True)
        _print_tasks(ui, tracker, base)
        print("Ctrl-C stops it.", flush=True)
        return proc.wait()
    except (KeyboardInterrupt, SystemExit) as stop:
        print("\nsuite ui: stopped; the MLflow server is shut down", file=sys.stderr, flush=True)
        return 143 if isinstance(stop, SystemExit) else 0
    finally:
        ui.stop(proc)


def _print_tasks(ui, tracker, base: str) -> None:
    for name, exp_id in ui.task_experiments(tracker):
        print(f"task {name}, chart view: {ui.experiment_url(base, exp_id, chart=True)}",
              flush=True)
