"""``suite run``: train every (attention, task, seed) cell, evaluate it over the length ladder,
log it to MLflow, skip cells already finished with the same config hash, print the leaderboard.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time

import torch

import attentions
import tasks
from tasks.metrics import summary

from . import profiles as P
from .evaluate import evaluate
from .train import Cell, train
from .version import __version__


def builtin_attentions() -> list[str]:
    """The variants that ship with the suite: those registered by the attentions package's own
    modules (not by plugins)."""
    return [n for n in attentions.names() if attentions.get(n).__module__.split(".")[0]
            == attentions.__name__]


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
    atts = [attentions.canonical_spec(s) for s in (attention_specs or builtin_attentions())]
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


def experiment(cell: Cell) -> str:
    """The experiment a cell's runs go to."""
    from results.schema import cell_experiment

    return cell_experiment(tasks.get(cell.task).name)


def cell_tags(cell: Cell, **more: str) -> dict[str, str]:
    """The tags of a cell's run that say what it is (``more``: which executor, sweep, ...)."""
    from results.schema import cell_tags as tags

    task = tasks.get(cell.task)
    return tags({"config_hash": cell.config_hash, "version": __version__,
                 "task_version": task.version, "attention": cell.attention, "task": cell.task,
                 "seed": cell.seed, "profile": cell.profile.name,
                 "train_length": task.train_length, **more})


def _environment_tags(cell: Cell, model) -> dict[str, str]:
    """The cell's tags, with where it runs: kernel backend, device, git state, versions."""
    from attentions.backends import resolve
    from results.gitinfo import git_state
    from results.schema import cell_tags as tags

    attn = model.blocks[0].attn.attn
    try:
        kernel = resolve(cell.backend, attn.normalizer(), torch.device(cell.device)).NAME
    except NotImplementedError:  # a plain-function variant is its own kernel
        kernel = "function"
    from . import cpu

    dev = torch.cuda.get_device_name() if cell.device == "cuda" else cpu.model()
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for dist in ("numba", "mlflow", "numpy", "triton"):
        try:  # metadata, not an import: the offline mode must not load mlflow
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    numerics = {}
    if cell.device == "cpu":  # what fixes a CPU cell's bits (suite.cpu)
        numerics = cpu.state()
    where = tags({"backend": kernel, "device": f"{cell.device}: {dev}", **numerics,
                  **git_state()}, versions)
    return {**cell_tags(cell), **where}


def run_cell(cell: Cell, tracker, progress: bool = True) -> dict:
    """Train, evaluate and log one cell; its run ends FINISHED, or FAILED with the error."""
    from results.schema import metric_key

    from .train import build_model

    model = build_model(cell)
    params = {**cell.config(), "n_params": sum(p.numel() for p in model.parameters())}
    with tracker.run(experiment(cell), cell.name, params, _environment_tags(cell, model)) as log:
        cpu0 = time.process_time()
        model, summary = train(cell, log=log, progress=progress)
        log.metrics({k: v for k, v in summary.items() if v is not None}, step=0)
        task = tasks.get(cell.task)
        _, budget = cell.size_budget
        t0 = time.perf_counter()
        results = evaluate(model, task, cell.eval_lengths(), budget.eval_samples, cell.seed,
                           torch.device(cell.device), budget.eval_tokens)
        # CPU seconds of this process (every thread) for training and evaluation: on the CPU,
        # what a cell costs whatever else the machine runs
        log.metrics({"eval_seconds": time.perf_counter() - t0,
                     "cpu_seconds": time.process_time() - cpu0}, step=0)
        for length, res in results.items():
            diag = res.pop("diagnostics", {})
            scalars = {k: v for k, v in diag.items() if not k.endswith("_heads")}
            values = {**res, **scalars}
            log.metrics({**{metric_key(k, length): v for k, v in values.items()}, **values},
                        step=length)
            res["diagnostics"] = diag
        log.dict({str(k): v for k, v in results.items()}, "eval.json")
    return results


def ladder(results: dict[int, dict]) -> str:
    """One line of a cell's results: the headline value at each evaluation length."""
    return " ".join(f"{n}:{summary(r)}" for n, r in results.items())
