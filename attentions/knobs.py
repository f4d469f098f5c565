"""Kernel knobs: the settings of the backends that choose how a normalized attention is computed
(which backend ``auto`` takes, tile sizes, threshold passes, which work is skipped). Every knob
leaves the function the same up to rounding, and every one changes the last bits, so a run
that sets one is another config: the suite puts the knobs that differ from these defaults into
the cell's config hash and tags (``suite.settings``, where the ``SUITE_*`` environment
variables are read; this package reads none).

    from attentions import knobs
    knobs.current().triton_skip                  # None: the backend's own choice
    with knobs.using(triton_skip=True):          # for the calls inside the block
        ...

``None`` leaves a choice to the backend (by row length, dtype and device: see
``backends.triton_backend``); a value forces it for every call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class Kernels:
    #: whether ``auto`` takes the Triton kernels on CUDA for the entmax family
    triton_auto: bool = True
    #: whether calls that need gradients run the fused backward kernels (else: torch backend)
    triton_fused_backward: bool = True
    #: (threshold passes every query block takes, at most this many more until converged)
    triton_tau_passes: tuple[int, int] | None = None
    #: test each key tile for support before its V / dO products (forward and backward)
    triton_skip: bool | None = None
    #: (BLOCK_M, BLOCK_N, num_warps, num_stages) of the tiled forward, dK/dV and dQ kernels
    triton_blocks_fwd: tuple[int, int, int, int] | None = None
    triton_blocks_dkdv: tuple[int, int, int, int] | None = None
    triton_blocks_dq: tuple[int, int, int, int] | None = None
    #: the longest rows (keys) that take the one-tile forward; 0: never
    triton_one_tile: int | None = None
    #: visit only the key tiles an ALiBi slope leaves weight on (causal rows)
    triton_window: bool | None = None
    #: the backward's delta: 0 from O2 kept by the forward, 1 or 2 found in the dQ kernel
    triton_delta_in_dq: int | None = None
    #: elements of one score chunk of the torch backend (by device type when None)
    torch_chunk_elems: int | None = None
    #: elements of one score block of the numba backend
    numba_chunk_elems: int | None = None


DEFAULT = Kernels()

_lock = threading.Lock()
_current = DEFAULT


def current() -> Kernels:
    """The knobs in effect in this process."""
    return _current


def configure(kernels: Kernels) -> Kernels:
    """Put ``kernels`` in effect for this process; returns the knobs it replaces."""
    global _current
    if not isinstance(kernels, Kernels):
        raise TypeError(f"configure takes a knobs.Kernels, not {type(kernels).__name__}")
    with _lock:
        before, _current = _current, kernels
    return before


@contextlib.contextmanager
def using(kernels: Kernels | None = None, **changes) -> Iterator[Kernels]:
    """``kernels`` (default: the current knobs) with ``changes``, in effect inside the block."""
    chosen = dataclasses.replace(kernels or current(), **changes)
    before = configure(chosen)
    try:
        yield chosen
    finally:
        configure(before)
