"""The suite's settings: every knob besides a cell's spec and profile, read from the ``SUITE_*``
environment variables in this module and nowhere else, once per process (``current``), and
overridable from the command line (``suite run --set NAME=VALUE``) or a profile.

Four concerns, a frozen dataclass each:

- ``kernels`` (``attentions.knobs.Kernels``): how the attention backends compute (tiles,
  threshold passes, which work is skipped, which backend ``auto`` takes);
- ``step``: the training step (``torch.compile``, CUDA graphs, data workers, CPU threads);
- ``store``: where checkpoints and claims live, the commit a copied tree states, the claim
  timeout;
- ``cluster``: the Ray executor's cluster size, resources per cell and attempts.

A setting that can change a result (``Setting.result``: the kernel knobs, compilation, the CPU
thread count) is part of a cell's config when it differs from its default: its config hash
changes, its row on the leaderboard is labelled with it (``setting.NAME=VALUE``), and it
travels with the cell to the process that trains it (``Cell.settings``), whatever that
process's environment says. Every setting that differs from its default is tagged on the run
(``suite.settings``). The table of settings, with their variables and defaults:
docs/settings.md (a test keeps it in step with ``SETTINGS``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from attentions import SpecError, knobs

PREFIX = "SUITE_"


@dataclasses.dataclass(frozen=True)
class Step:
    #: compile the model with torch.compile before the CUDA graph capture (CUDA)
    compile: bool = True
    #: capture the training step in a CUDA graph and replay it (CUDA; the same kernels)
    cuda_graphs: bool = True
    #: processes drawing training batches ahead (None: 3 on CUDA, 0 on the CPU)
    data_workers: int | None = None
    #: torch threads of a CPU cell (the CPU's sums are split by thread)
    cpu_threads: int = 1


@dataclasses.dataclass(frozen=True)
class Store:
    #: the checkpoint root (None: beside the store's database or log)
    checkpoint_dir: str | None = None
    #: the commit a copied tree was made from, ``SHA`` or ``SHA+dirty`` (None: ask git)
    git_commit: str | None = None
    #: seconds without a heartbeat after which another host's claim counts as dead
    claim_timeout: float = 600.0


@dataclasses.dataclass(frozen=True)
class Cluster:
    #: CPUs of a local Ray cluster (None: every core)
    ray_num_cpus: int | None = None
    #: CPUs and GPUs a cell asks of Ray (None: from the cell's device and profile)
    ray_cpus_per_cell: float | None = None
    ray_gpus_per_cell: float | None = None
    #: attempts of a cell on Ray, the first included
    ray_attempts: int = 3


@dataclasses.dataclass(frozen=True)
class Settings:
    kernels: knobs.Kernels = knobs.DEFAULT
    step: Step = Step()
    store: Store = Store()
    cluster: Cluster = Cluster()


# ----------------------------------------------------------------------------- the table

def _flag(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("give 1 or 0")


def _ints(n: int) -> Callable[[str], tuple[int, ...]]:
    def parse(raw: str) -> tuple[int, ...]:
        parts = [p.strip() for p in raw.split(",")]
        if len(parts) != n or not all(re.fullmatch(r"\d+", p) for p in parts):
            raise ValueError(f"give {n} whole numbers separated by commas")
        return tuple(int(p) for p in parts)
    return parse


def _count(low: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"\s*\d+\s*", raw) or int(raw) < low:
            raise ValueError(f"give a whole number >= {low}")
        return int(raw)
    return parse


def _positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError("give a positive number")
    return value


def _choice(*values: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if raw.strip() not in {str(v) for v in values}:
            raise ValueError(f"give one of {', '.join(map(str, values))}")
        return int(raw)
    return parse


def _commit(raw: str) -> str:
    sha, _, flag = raw.strip().partition("+")
    if not re.fullmatch(r"[0-9a-f]{7,40}", sha) or flag not in ("", "dirty"):
        raise ValueError("give a hex SHA, optionally followed by +dirty (e.g. "
                         "$(git rev-parse HEAD)+dirty)")
    return raw.strip()


def _path(raw: str) -> str:
    if not raw.strip():
        raise ValueError("give a directory")
    return raw


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the table: ``name`` (``--set NAME=VALUE``, ``setting.NAME`` in a config),
    its environment variable, the field it sets (``concern.field``), its parser, whether it can
    change a result, the devices where it acts, and what it does."""

    name: str
    env: str
    field: str
    parse: Callable[[str], Any]
    result: bool
    devices: tuple[str, ...]
    about: str

    @property
    def concern(self) -> str:
        return self.field.split(".")[0]

    def default(self) -> Any:
        return get(Settings(), self.field)


BOTH, CUDA, CPU = ("cpu", "cuda"), ("cuda",), ("cpu",)

SETTINGS: tuple[Setting, ...] = (
    Setting("triton.auto", "SUITE_TRITON_AUTO", "kernels.triton_auto", _flag, True, CUDA,
            "0: `auto` keeps the entmax family on the torch backend on CUDA"),
    Setting("triton.fused_backward", "SUITE_TRITON_FUSED_BACKWARD",
            "kernels.triton_fused_backward", _flag, True, CUDA,
            "0: calls that need gradients go to the torch backend"),
    Setting("triton.tau_passes", "SUITE_TRITON_TAU_PASSES", "kernels.triton_tau_passes",
            _ints(2), True, CUDA,
            "`n,extra`: threshold passes every query block takes, then at most `extra` more"),
    Setting("triton.skip", "SUITE_TRITON_SKIP", "kernels.triton_skip", _flag, True, CUDA,
            "1 / 0: test each key tile for support before its products, or never (default: "
            "the backward with ALiBi only)"),
    Setting("triton.blocks_fwd", "SUITE_TRITON_BLOCKS_FWD", "kernels.triton_blocks_fwd",
            _ints(4), True, CUDA,
            "`M,N,warps,stages` of the tiled forward (rows short enough for one tile still "
            "take the one-tile forward: see `triton.one_tile`)"),
    Setting("triton.blocks_dkdv", "SUITE_TRITON_BLOCKS_DKDV", "kernels.triton_blocks_dkdv",
            _ints(4), True, CUDA, "`M,N,warps,stages` of the dK/dV kernel"),
    Setting("triton.blocks_dq", "SUITE_TRITON_BLOCKS_DQ", "kernels.triton_blocks_dq",
            _ints(4), True, CUDA, "`M,N,warps,stages` of the dQ kernel"),
    Setting("triton.one_tile", "SUITE_TRITON_ONE_TILE", "kernels.triton_one_tile", _count(0),
            True, CUDA, "the longest rows (keys) that take the one-tile forward; 0: never "
            "(default 128)"),
    Setting("triton.window", "SUITE_TRITON_WINDOW", "kernels.triton_window", _flag, True,
            CUDA, "1 / 0: ALiBi windows at every length, or never (default: rows over 512 "
            "keys)"),
    Setting("triton.delta_in_dq", "SUITE_TRITON_DELTA_IN_DQ", "kernels.triton_delta_in_dq",
            _choice(0, 1, 2), True, CUDA,
            "0: the forward keeps O2 for the backward's delta; 1 / 2: delta found in the dQ "
            "kernel, its sums on the ALU / the tensor cores (default: 1 up to 512 keys, else 2)"),
    Setting("torch.chunk_elems", "SUITE_TORCH_CHUNK_ELEMS", "kernels.torch_chunk_elems",
            _count(1), True, BOTH,
            "score elements per chunk of the torch backend (default 2^27 on CUDA, 2^24 on "
            "the CPU)"),
    Setting("numba.chunk_elems", "SUITE_NUMBA_CHUNK_ELEMS", "kernels.numba_chunk_elems",
            _count(1), True, CPU, "score elements per block of the numba backend (default 2^22)"),
    Setting("step.compile", "SUITE_COMPILE", "step.compile", _flag, True, CUDA,
            "0: train the model eagerly instead of through torch.compile"),
    Setting("step.cuda_graphs", "SUITE_CUDA_GRAPHS", "step.cuda_graphs", _flag, False, CUDA,
            "0: launch the training step's kernels one by one instead of replaying a CUDA graph "
            "(the same kernels)"),
    Setting("step.data_workers", "SUITE_DATA_WORKERS", "step.data_workers", _count(0), False,
            BOTH, "processes drawing training batches ahead (default 3 on CUDA, 0 on the CPU; "
            "every batch is a function of the seed and step)"),
    Setting("cpu.threads", "SUITE_CPU_THREADS", "step.cpu_threads", _count(1), True, CPU,
            "torch threads of a CPU cell (default 1)"),
    Setting("store.checkpoint_dir", "SUITE_CHECKPOINT_DIR", "store.checkpoint_dir", _path,
            False, BOTH, "the checkpoint root (default: beside the store's database or log; "
            "a cluster's drivers and workers share one)"),
    Setting("store.git_commit", "SUITE_GIT_COMMIT", "store.git_commit", _commit, False, BOTH,
            "`SHA` or `SHA+dirty`: the commit a copied tree was made from, tagged instead of "
            "asking git"),
    Setting("store.claim_timeout", "SUITE_CLAIM_TIMEOUT", "store.claim_timeout", _positive,
            False, BOTH, "seconds without a heartbeat after which another host's claim is "
            "taken over (default 600)"),
    Setting("ray.num_cpus", "SUITE_RAY_NUM_CPUS", "cluster.ray_num_cpus", _count(1), False,
            BOTH, "CPUs of the local Ray cluster `--executor ray` starts (default: every core)"),
    Setting("ray.cpus_per_cell", "SUITE_RAY_CPUS_PER_CELL", "cluster.ray_cpus_per_cell",
            _positive, False, BOTH, "CPUs a cell asks of Ray (default: from its device)"),
    Setting("ray.gpus_per_cell", "SUITE_RAY_GPUS_PER_CELL", "cluster.ray_gpus_per_cell",
            _positive, False, BOTH, "GPUs a cell asks of Ray (default: 1 on CUDA, else 0)"),
    Setting("ray.attempts", "SUITE_RAY_ATTEMPTS", "cluster.ray_attempts", _count(1), False,
            BOTH, "attempts of a cell on Ray, the first included (default 3)"),
)
BY_NAME = {s.name: s for s in SETTINGS}
BY_ENV = {s.env: s for s in SETTINGS}


def get(settings: Settings, field: str) -> Any:
    concern, name = field.split(".")
    return getattr(getattr(settings, concern), name)


def _with(settings: Settings, values: Mapping[Setting, Any]) -> Settings:
    by_concern: dict[str, dict[str, Any]] = {}
    for setting, value in values.items():
        concern, name = setting.field.split(".")
        by_concern.setdefault(concern, {})[name] = value
    return dataclasses.replace(settings, **{
        c: dataclasses.replace(getattr(settings, c), **v) for c, v in by_concern.items()})


def text(value: Any) -> str:
    """A setting's value as it is written (the form ``parse`` reads back)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ----------------------------------------------------------------------------- reading

def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings the ``SUITE_*`` variables of ``environ`` (default: this process's) give;
    a bad value fails at once, naming the variable and what it takes. A variable that is
    close to a setting's name but none (a typo) is warned about."""
    environ = os.environ if environ is None else environ
    values = {}
    for key, raw in environ.items():
        if not key.startswith(PREFIX):
            continue
        setting = BY_ENV.get(key)
        if setting is None:
            near = difflib.get_close_matches(key, BY_ENV, n=1, cutoff=0.85)
            if near:
                warnings.warn(f"{key} is not a setting of the suite (did you mean {near[0]}?); "
                              "docs/settings.md lists them", stacklevel=2)
            continue
        if raw == "":
            continue
        values[setting] = _parse(setting, raw, f"{key}={raw!r}")
    return _with(Settings(), values)


def _parse(setting: Setting, raw: str, said: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as err:
        raise SpecError(f"{said}: {err} ({setting.name}: {setting.about})") from None


def changed(settings: Settings, assignments: Iterable[str]) -> Settings:
    """``settings`` with ``NAME=VALUE`` assignments (``--set``, a profile's settings) applied;
    an unknown name fails with the known ones, closest first."""
    values = {}
    for item in assignments:
        name, eq, raw = item.partition("=")
        name = name.strip()
        setting = BY_NAME.get(name)
        if setting is None or not eq:
            known = sorted(BY_NAME, key=lambda n: -difflib.SequenceMatcher(None, name, n).ratio())
            what = f"unknown setting {name!r}" if setting is None else "give NAME=VALUE"
            raise SpecError(f"--set {item!r}: {what}; the settings are {', '.join(known)} "
                            "(docs/settings.md)")
        values[setting] = _parse(setting, raw.strip(), f"--set {item}")
    return _with(settings, values)


_lock = threading.Lock()
_current: Settings | None = None


def current() -> Settings:
    """The settings of this process: the environment's, read on first use, or what ``use``
    put in effect since."""
    global _current
    with _lock:
        if _current is None:
            _current = from_env()
        return _current


def loaded() -> bool:
    """Whether this process has read its settings yet."""
    return _current is not None


def use(settings: Settings) -> Settings:
    """Put ``settings`` in effect in this process (their kernel knobs too); returns the
    previous ones."""
    global _current
    before = current()
    with _lock:
        _current = settings
    knobs.configure(settings.kernels)
    return before


def restore(before: Settings | None) -> None:
    """Put back what ``current`` gave before a command (None: nothing read yet; the next
    ``current`` reads the environment again)."""
    global _current
    if before is not None:
        use(before)
        return
    with _lock:
        _current = None
    knobs.configure(knobs.DEFAULT)


def apply_environment() -> Settings:
    """Read the environment again and put its settings in effect (a command's start)."""
    return use(from_env())


# ----------------------------------------------------------------------------- cells and runs

def differing(settings: Settings) -> list[tuple[Setting, str]]:
    """The settings that differ from their defaults, as (setting, written value)."""
    return [(s, text(get(settings, s.field))) for s in SETTINGS
            if get(settings, s.field) != s.default()]


def for_cell(settings: Settings, device: str) -> tuple[tuple[str, str], ...]:
    """The settings of a cell's config: those that can change a result on ``device`` (any,
    for ``auto``) and differ from their defaults, as (name, value) pairs."""
    return tuple((s.name, value) for s, value in differing(settings)
                 if s.result and (device in s.devices or device == "auto"))


def of_cell(pairs: Iterable[tuple[str, str]], base: Settings | None = None) -> Settings:
    """``base`` (default: this process's settings) with a cell's result-changing settings put
    back to their defaults, then set to the cell's: what trains the cell, whatever this
    process's environment says about those knobs."""
    base = current() if base is None else base
    reset = {s: s.default() for s in SETTINGS if s.result}
    given = {BY_NAME[name]: BY_NAME[name].parse(value) for name, value in pairs}
    return _with(base, {**reset, **given})


@contextlib.contextmanager
def for_run(pairs: Iterable[tuple[str, str]]) -> Iterator[Settings]:
    """A cell's settings (``of_cell``) in effect inside the block, this process's after it."""
    before = use(of_cell(pairs))
    try:
        yield current()
    finally:
        use(before)


def tag(settings: Settings) -> str:
    """``suite.settings``: every setting that differs from its default, ``name=value`` joined
    by spaces, or ``default``."""
    return " ".join(f"{s.name}={v}" for s, v in differing(settings)) or "default"


def environment(settings: Settings) -> dict[str, str]:
    """The variables that give a process ``settings`` whatever its environment held (worker
    processes of a sweep): every setting's, empty (its default) where it is at its default."""
    given = {s.env: value for s, value in differing(settings)}
    return {s.env: given.get(s.env, "") for s in SETTINGS}


def git_state() -> dict[str, str]:
    """The git state the runs are tagged with: the stated commit (``store.git_commit``), else
    git's."""
    from results.gitinfo import git_state as state

    return state(stated=current().store.git_commit)


def markdown_table() -> str:
    """The table of settings docs/settings.md holds (a test keeps the two the same)."""
    head = ["| setting (`--set`) | variable | in the config hash | acts on | default | what it "
            "does |", "|---|---|---|---|---|---|"]
    rows = []
    for s in SETTINGS:
        default = s.default()
        shown = "-" if default is None else f"`{text(default)}`"
        rows.append(f"| `{s.name}` | `{s.env}` | {'yes' if s.result else 'no'} | "
                    f"{', '.join(s.devices)} | {shown} | {s.about} |")
    return "\n".join(head + rows)
