"""Input checks of the ``suite`` commands: every bad input is refused before any work starts,
with one line that names the problem and the fix (``SpecError``, exit 2).

What is checked here, before training or measuring:

- numbers a command needs positive (``--lengths``, ``--repeats``, ``--port`` in 1..65535);
- the directories a command writes (``results/``, the checkpoint directory; the store checks
  its own): one file is created and removed in each, so a directory without write permission
  is named at once;
- a sweep's cells: an evaluation ladder left empty by ``--max-eval-length``, a ``--backend``
  that cannot run a variant on the device, and one call of every variant on a tiny input
  (shape (1, 2, 3, 4), under the sweep's position encoding), whose output must be
  (B, H, T, D): a plugin that fails or returns another layout is refused before training.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import attentions
from attentions import SpecError


def positive(flag: str, values) -> None:
    """Every value of ``flag`` (an int or a list of them) must be >= 1."""
    if values is None:
        return
    for value in values if isinstance(values, (list, tuple)) else [values]:
        if value < 1:
            raise SpecError(f"{flag} {value}: must be a positive number")


def port(value: int) -> None:
    if not 1 <= value <= 65535:
        raise SpecError(f"--port {value}: a TCP port is a number from 1 to 65535 "
                        "(e.g. --port 5000)")


def writable(directory: Path, what: str, fix: str) -> Path:
    """Prove ``directory`` writable by creating and removing a file in it, or, where it does
    not exist yet, in the nearest directory above it that does (the real test, for root and
    everyone else alike). Nothing is left behind, not even the directory."""
    directory = Path(directory)
    probe_dir = directory.absolute()
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(20, "not a directory")
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".suite-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        why = "permission denied" if isinstance(err, PermissionError) else \
            str(err.strerror or err).lower()
        raise SpecError(f"{what} {directory.absolute()} is not writable ({why}); {fix}"
                        ) from None
    return directory


def results_dir(out_dir: Path = Path("results")) -> Path:
    """The directory that ``suite leaderboard`` and ``suite run`` write their files to."""
    return writable(out_dir, "the results directory",
                    "run the command from a directory you can write to")


def checkpoints(directory: Path | None = None, beside_store: bool = False) -> Path:
    """The checkpoint root (default: ``train.checkpoint_dir()``; a sweep's is its store's,
    ``suite.attempts.checkpoint_root``, beside an embedded store unless
    SUITE_CHECKPOINT_DIR is set)."""
    from . import settings
    from .train import checkpoint_dir

    if settings.current().store.checkpoint_dir:
        fix = "point SUITE_CHECKPOINT_DIR at a directory you can write to"
    elif beside_store:
        fix = ("checkpoints go beside the store: pass a --tracking-uri in a directory you can "
               "write to, or set SUITE_CHECKPOINT_DIR")
    else:
        fix = "run from a directory you can write to, or set SUITE_CHECKPOINT_DIR"
    return writable(directory or checkpoint_dir(), "the checkpoint directory", fix)


def profile(name: str | None) -> None:
    """A profile name (for ``suite leaderboard --profile``), with the known ones suggested."""
    if name is not None:
        from . import profiles

        profiles.get(name)


# ----------------------------------------------------------------------------- a sweep's cells

def git_commit() -> None:
    """A stated commit (``$SUITE_GIT_COMMIT``) is one (``StatedCommitError`` otherwise), or the
    sweep stops before any cell."""
    from . import settings

    settings.git_state()


def cells(cells: Iterable, executor: str = "local") -> None:
    """Refuse a sweep whose cells cannot run: see the module docstring."""
    cells = list(cells)
    seen_tasks, seen_atts = set(), set()
    for cell in cells:
        if cell.task not in seen_tasks:
            seen_tasks.add(cell.task)
            _ladder(cell)
        key = (cell.attention, cell.profile.pe, cell.device, cell.backend)
        if key not in seen_atts:
            seen_atts.add(key)
            backend_usable(cell.attention, cell.backend, cell.device, cell.profile.pe)
            _probe(cell.attention, cell.profile.pe)


def _ladder(cell) -> None:
    import tasks

    task = tasks.get(cell.task)
    if not cell.eval_lengths():
        _, budget = cell.size_budget
        raise SpecError(
            f"--max-eval-length {budget.max_eval_length}: below every evaluation length of "
            f"{task.name} (its ladder starts at {min(task.eval_lengths)}; training length "
            f"{task.train_length}); give at least {min(task.eval_lengths)}")


def _bias(pe: str, n_heads: int):
    if pe in ("alibi", "nape"):
        return attentions.Alibi(attentions.nape_slopes(n_heads))
    return None


def backend_usable(spec: str, backend: str, device: str, pe: str) -> None:
    """A forced backend must run this variant on this device with this position bias."""
    if backend == "auto" or device not in ("cpu", "cuda"):
        return  # auto always finds one; a Ray sweep's `auto` device is the cluster's to pick
    import importlib

    import torch

    backends = importlib.import_module("attentions.backends")  # the package, not the function
    attn = attentions.build(spec, n_heads=2, head_dim=4)
    try:
        norm = attn.normalizer()
    except NotImplementedError:  # a plain function is its own kernel: any backend runs it
        return
    mod = backends.load(backend)
    usable = backends.available()
    if mod is None or not mod.usable():
        raise SpecError(f"--backend {backend}: not usable on this machine (usable here: "
                        f"{', '.join(usable)}); use --backend auto or one of those")
    if not mod.supports(norm, torch.device(device), _bias(pe, 2)):
        fits = [b for b in usable
                if backends.load(b).supports(norm, torch.device(device), _bias(pe, 2))]
        raise SpecError(f"--backend {backend} cannot run {spec} on {device} (it computes "
                        f"{norm.kind}); use --backend auto, or one of: {', '.join(fits)}")


def _probe(spec: str, pe: str) -> None:
    """One call on a tiny input (B, H, T, D) = (1, 2, 3, 4): an exception or an output of
    another shape or layout is refused now, not after training."""
    import torch

    B, H, T, D = 1, 2, 3, 4
    attn = attentions.build(spec, n_heads=H, head_dim=D, d_model=8, backend="torch",
                            scaled_heads=[1] if pe == "nape" else None)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    x = torch.randn(B, T, 8, generator=gen)
    try:
        with torch.no_grad():
            y = attn(q, k, v, x=x, bias=_bias(pe, H), causal=True)
    except SpecError:
        raise
    except Exception as err:
        text = str(err).strip().splitlines()
        raise SpecError(f"attention {spec!r} failed on a test input q, k, v of shape "
                        f"{(B, H, T, D)} ({pe} position bias): {type(err).__name__}: "
                        f"{text[0] if text else ''}; fix it before training") from err
    attentions.check_output(spec, y, q, v)
