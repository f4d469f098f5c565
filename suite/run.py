"""``suite run``: train every (attention, task, seed) cell, evaluate it over the length ladder,
log it to MLflow, skip cells already finished with the same config hash, print the leaderboard.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import time

import torch

import attentions
import tasks
from tasks.metrics import NONFINITE, summary

from . import profiles as P
from . import settings
from .evaluate import evaluate
from .identity import code_identity
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
    code = {(a, t): tuple(code_identity(a, t).items()) for t in tsks for a in atts}
    chosen = settings.for_cell(settings.current(), dev)
    return [Cell(a, t, seed, prof, dev, backend, code[a, t], chosen) for t in tsks for a in atts
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


def run_name(cell: Cell) -> str:
    """A short run name (the experiment already names the task; the profile is a column)."""
    return f"{cell.attention} s{cell.seed}"


def device_name(device: str) -> str:
    """``cuda: NVIDIA H200`` or ``cpu: AMD EPYC 9R14 (family 25, model 17, AVX2, 2 cores)
    (1 threads)``."""
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    from . import cpu

    return f"cpu: {cpu.model()} ({torch.get_num_threads()} threads)"


def kernel_backend(cell: Cell, model) -> str:
    """The backend that runs the model's attention in training, resolved as its training calls
    resolve it: with the model's position bias and the shape of a batch at the longest
    training length (softmax under ALiBi or NAPE: one masked SDPA call at training lengths,
    then FlexAttention on CUDA or numba on the CPU; evaluation's longer rows may go
    elsewhere)."""
    from attentions.backends import resolve
    from attentions.normalizer import Alibi

    block = model.blocks[0].attn
    try:
        norm = block.attn.normalizer()
    except NotImplementedError:  # a plain-function variant is its own kernel
        return "function"
    slopes = getattr(block, "slopes", None)
    bias = Alibi(slopes) if slopes is not None and block.cfg.pe in ("alibi", "nape") else None
    task = tasks.get(cell.task)
    width = task.sample(task.rng(0, "eval"), task.train_length, 1).tokens.shape[1]
    _, budget = cell.size_budget
    size = (budget.batch_size, block.cfg.n_heads, width, width)
    device = torch.device(cell.device)
    try:
        return resolve(cell.backend, norm, device, bias=bias, size=size).NAME
    except RuntimeError:  # a named backend without this bias: as the call resolves it then
        return resolve(cell.backend, norm, device).NAME


def _environment_tags(cell: Cell) -> dict[str, str]:
    """The cell's tags, with where it runs: device, git state, versions, MLflow's source, and
    on the CPU the settings that fix its numerics (``suite.cpu``); the kernel backend is tagged
    once the model is built, inside the run."""
    from results.schema import cell_tags as tags

    from . import cpu

    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for dist in ("numba", "mlflow", "numpy", "triton"):
        try:  # metadata, not an import: the offline mode must not load mlflow
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    git = settings.git_state()
    numerics = cpu.state() if cell.device == "cpu" else {}
    where = tags({"device": device_name(cell.device), **numerics, **git,
                  "settings": settings.tag(settings.current())}, versions)
    source = {"mlflow.source.name": "suite run", "mlflow.source.type": "LOCAL"}
    if git.get("git_commit", "unknown") != "unknown":
        source["mlflow.source.git.commit"] = git["git_commit"]
    return {**cell_tags(cell), **where, **source}


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


def run_cell(cell: Cell, tracker, progress: bool = True, ckpt_dir=None) -> dict:
    """Train, evaluate and log one cell; its run ends FINISHED, or FAILED with the error
    (KILLED on Ctrl-C): the run exists before anything that can fail. ``ckpt_dir``: the
    cell's checkpoint folder in its store's home (``suite.attempts``). The cell's own settings
    (``Cell.settings``) are in effect throughout, whatever this process's environment says."""
    with settings.for_run(cell.settings):
        return _run_cell(cell, tracker, progress, ckpt_dir)


def _run_cell(cell: Cell, tracker, progress: bool, ckpt_dir) -> dict:
    from results.schema import metric_key, tag
    from tasks.metrics import headline, score

    from .train import build_model

    task = tasks.get(cell.task)
    with tracker.run(experiment(cell), run_name(cell), cell.config(), _environment_tags(cell),
                     description=describe_task(task)) as log:
        _dataset(log, cell, task)
        model = build_model(cell)
        log.params({"n_params": sum(p.numel() for p in model.parameters())})
        log.tags({"suite.backend": kernel_backend(cell, model)})
        cpu0 = time.process_time()
        model, summary = train(cell, log=log, progress=progress, ckpt_dir=ckpt_dir)
        log.metrics({k: v for k, v in summary.items() if v is not None}, step=0)
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
        broken = nonfinite_lengths(results)
        if broken:  # the run says so, beside the per-length metric nonfinite_L<length>
            log.tags({tag(NONFINITE): ",".join(map(str, broken))})
        metric = headline(next(iter(results.values()), {}))
        by_multiple = {f"{metric}_{length / task.train_length:g}x": r[metric]
                       for length, r in results.items() if metric in r}
        main = score({n: r.get(metric) for n, r in results.items()}, task.train_length)
        log.metrics({**by_multiple, **({"score": main} if main is not None else {})}, step=0)
        log.table(_eval_table(results, task.train_length), "eval_table.json")
        log.dict({str(k): v for k, v in results.items()}, "eval.json")
    return results


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
    digest = hashlib.sha256(f"{cell.task}|v{task.version}".encode()).hexdigest()[:8]
    log.dataset(name=cell.task, digest=digest,
                source=f"{type(task).__module__}.{type(task).__qualname__} (generated, "
                       f"seed {cell.seed})",
                profile={"vocab_size": task.vocab_size, "train_lengths": task.train_lengths,
                         "eval_lengths": cell.eval_lengths(), "version": task.version})


def nonfinite_lengths(results: dict[int, dict]) -> list[int]:
    """The evaluation lengths at which some sequence's logits held a NaN or an infinity."""
    return [n for n, r in results.items() if r.get(NONFINITE)]


def ladder(results: dict[int, dict]) -> str:
    """One line of a cell's results: the headline value at each evaluation length, and the
    lengths whose outputs were not finite, named."""
    line = " ".join(f"{n}:non-finite({r[NONFINITE]:.0f}% of sequences)" if r.get(NONFINITE)
                    else f"{n}:{summary(r)}" for n, r in results.items())
    broken = nonfinite_lengths(results)
    if broken:
        line += (f"  NON-FINITE outputs (NaN or inf) at length {', '.join(map(str, broken))}: "
                 "scored as wrong there, marked in the leaderboard, tagged suite.nonfinite")
    return line
