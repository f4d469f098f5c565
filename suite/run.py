"""``suite run``: train every (attention, task, seed) cell, evaluate it over the length ladder,
log it to MLflow, skip cells already finished with the same config hash, print the leaderboard.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from pathlib import Path

import torch

import attentions
import tasks

from . import __version__
from . import profiles as P
from .evaluate import evaluate
from .train import Cell, train

BUILTIN = ("softmax", "ssmax", "entmax", "sparsemax", "asentmax", "topk")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise attentions.SpecError(
            "--device cuda: no CUDA device is visible here (torch.cuda.is_available() is False); "
            "use --device cpu or --device auto"
        )
    if device not in ("cpu", "cuda"):
        raise attentions.SpecError(f"--device {device!r}: use auto, cpu or cuda")
    return device


def plan(attention_specs, task_specs, profile: str, seeds: int, device: str,
         backend: str = "auto", check_device: bool = True, **budget) -> list[Cell]:
    """The cells of a sweep, every spec validated up front (bad input fails in seconds).
    ``budget`` overrides profile budget fields (steps, eval_samples, max_eval_length, ...).
    ``check_device=False`` leaves the device to the executor (Ray resolves ``auto`` against
    the cluster, not the driver's machine)."""
    for key, value in budget.items():
        if value is not None and value <= 0:
            raise attentions.SpecError(f"--{key.replace('_', '-')} {value}: must be positive")
    prof = P.get(profile).with_budget(**budget)
    if seeds < 1:
        raise attentions.SpecError(f"--seeds {seeds}: give at least 1")
    atts = [attentions.canonical_spec(s) for s in (attention_specs or BUILTIN)]
    tsks = [tasks.get(s).spec for s in (task_specs or prof.tasks)]
    for spec in atts:  # build once, so a bad parameter fails before any training
        attentions.build(spec, n_heads=2, head_dim=4, backend=backend)
    if check_device:
        dev = resolve_device(device)
    elif device in ("auto", "cpu", "cuda"):
        dev = device
    else:
        raise attentions.SpecError(f"--device {device!r}: use auto, cpu or cuda")
    return [Cell(a, t, seed, prof, dev, backend) for t in tsks for a in atts
            for seed in range(seeds)]


def run_name(cell: Cell) -> str:
    """A short run name (the experiment already names the task; the profile is a column)."""
    return f"{cell.attention} s{cell.seed}"


def device_name(device: str) -> str:
    """``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: AMD EPYC 9R14 (2 threads)``."""
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


def _kernel(cell: Cell, model) -> str:
    from attentions.backends import resolve

    attn = model.blocks[0].attn.attn
    try:
        return resolve(cell.backend, attn.normalizer(), torch.device(cell.device)).NAME
    except NotImplementedError:  # a plain-function variant is its own kernel
        return "function"


def _tags(cell: Cell) -> dict[str, str]:
    from results.gitinfo import git_state
    from results.offline import HASH_TAG

    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for dist in ("numba", "mlflow", "numpy", "triton"):
        try:  # metadata, not an import: the offline mode must not load mlflow
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    git = git_state()
    return {HASH_TAG: cell.config_hash, "suite.kind": "cell", "suite.version": __version__,
            "suite.task_version": str(tasks.get(cell.task).version),
            "suite.attention": cell.attention, "suite.task": cell.task,
            "suite.seed": str(cell.seed), "suite.profile": cell.profile.name,
            "suite.device": device_name(cell.device),
            "suite.train_length": str(tasks.get(cell.task).train_length),
            "mlflow.source.name": "suite run", "mlflow.source.type": "LOCAL",
            **({"mlflow.source.git.commit": git["git_commit"]}
               if git["git_commit"] != "unknown" else {}),
            **{f"suite.{k}": v for k, v in git.items()},
            **{f"version.{k}": v for k, v in versions.items()}}


def describe_task(task) -> str:
    """The description of a task's experiment, shown by the MLflow UI."""
    doc = (type(task).__doc__ or "").strip().split("\n\n")[0]
    return (f"Task `{task.name}`: {' '.join(doc.split())}\n\n"
            "One run per (attention, seed, profile) cell, named `<attention> s<seed>`; the "
            "profile is the `suite.profile` tag. Metrics: `score` (what the leaderboard ranks "
            "by: the mean exact match, retrieval accuracy or perplexity over the lengths "
            "beyond training) and `<metric>_<m>x` at each multiple m of the training length "
            f"({task.train_length} tokens) sort the runs table. The step axis: for "
            "`exact_match`, `token_acc` and the attention diagnostics it is the evaluation "
            "length in tokens (the chart view draws them against length); for `train_loss`, "
            "`lr`, `tokens_per_s` and `val_*` it is the training step. Per-length results: the "
            "table `eval_table.json`; everything: `eval.json`.")


def run_cell(cell: Cell, tracker, progress: bool = True) -> dict:
    """Train, evaluate and log one cell; its run ends FINISHED, or FAILED with the error
    (KILLED on Ctrl-C): the run exists before anything that can fail."""
    from results.leaderboard import score

    from .train import build_model

    task = tasks.get(cell.task)
    with tracker.run(task.name, run_name(cell), cell.config(), _tags(cell),
                     description=describe_task(task)) as log:
        _dataset(log, cell, task)
        model = build_model(cell)
        log.params({"n_params": sum(p.numel() for p in model.parameters())})
        log.tags({"suite.backend": _kernel(cell, model)})
        model, summary = train(cell, log=log, progress=progress)
        log.metrics({k: v for k, v in summary.items() if v is not None}, step=0)
        _, budget = cell.size_budget
        results = evaluate(model, task, cell.eval_lengths(), budget.eval_samples, cell.seed,
                           torch.device(cell.device), budget.eval_tokens)
        for length, res in results.items():
            diag = res.pop("diagnostics", {})
            scalars = {k: v for k, v in diag.items() if not k.endswith("_heads")}
            values = {**res, **scalars}
            log.metrics({**{f"{k}_L{length}": v for k, v in values.items()}, **values},
                        step=length)
            res["diagnostics"] = diag
        metric = _headline_metric(results)
        by_multiple = {f"{metric}_{_multiple(n, task.train_length)}x": r[metric]
                       for n, r in results.items() if metric in r}
        main = score({n: r.get(metric) for n, r in results.items()}, task.train_length, metric)
        log.metrics({**by_multiple, **({"score": main} if main is not None else {})}, step=0)
        log.table(_eval_table(results, task.train_length), "eval_table.json")
        log.dict({str(k): v for k, v in results.items()}, "eval.json")
    return results


def _headline_metric(results: dict) -> str:
    first = next(iter(results.values()), {})
    return next((m for m in ("exact_match", "retrieval_acc", "perplexity") if m in first),
                "exact_match")


def _multiple(length: int, train_length: int) -> str:
    return f"{length / train_length:g}"


def _eval_table(results: dict, train_length: int) -> dict[str, list]:
    """The per-length results as columns: length, multiple, then every scalar metric."""
    keys = list(dict.fromkeys(k for r in results.values() for k, v in r.items()
                              if isinstance(v, (int, float))))
    cols: dict[str, list] = {"length": list(results),
                             "multiple": [n / train_length for n in results]}
    for k in keys:
        cols[k] = [results[n].get(k) for n in results]
    return cols


def _dataset(log, cell: Cell, task) -> None:
    """The task as the run's dataset input: generated, so its source is the generator."""
    import hashlib

    digest = hashlib.sha256(f"{cell.task}|v{task.version}".encode()).hexdigest()[:8]
    log.dataset(name=cell.task, digest=digest,
                source=f"{type(task).__module__}.{type(task).__qualname__} (generated, "
                       f"seed {cell.seed})",
                profile={"vocab_size": task.vocab_size, "train_lengths": task.train_lengths,
                         "eval_lengths": cell.eval_lengths(), "version": task.version})


def sweep(cells: list[Cell], tracking_uri: str | None = None, progress: bool = True,
          out=None) -> int:
    """Run the cells in order; returns the number that failed."""
    out = out or sys.stdout
    from results.offline import JsonlTracker, is_offline

    if is_offline(tracking_uri):  # no MLflow on this machine: an offline log to import later
        tracker = JsonlTracker(tracking_uri)
    else:
        from results.tracking import Tracker

        tracker = Tracker(tracking_uri)
    print(f"store: {tracker.uri}  ({len(cells)} cells)", file=out, flush=True)
    failed = 0
    for i, cell in enumerate(cells, 1):
        head = f"[{i}/{len(cells)}] {cell.name}"
        done = tracker.finished(tasks.get(cell.task).name, cell.config_hash)
        if done:
            print(f"{head}: skipped, finished already (config {cell.config_hash}, run {done})",
                  file=out, flush=True)
            continue
        t0 = time.perf_counter()
        try:
            results = run_cell(cell, tracker, progress)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # recorded FAILED in the store; the sweep goes on
            failed += 1
            print(f"{head}: FAILED: {type(err).__name__}: {err}", file=out, flush=True)
            continue
        ladder = " ".join(f"{n}:{_headline(r)}" for n, r in results.items())
        print(f"{head}: done in {time.perf_counter() - t0:.0f}s  {ladder}", file=out, flush=True)
    return failed


def _headline(res: dict) -> str:
    if "perplexity" in res:
        return f"ppl {res['perplexity']:.2f}"
    em = res.get("exact_match", res.get("retrieval_acc"))
    return f"{em:.0f}%/{res.get('token_acc', 0):.0f}%"

