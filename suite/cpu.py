"""Reproducible CPU numerics: the settings that make a CPU cell's numbers the same on every x86
machine with AVX2, not only bit for bit on one machine.

Floating-point sums give different bits when their order changes, and a few hundred training
steps turn a difference in the last bit into a different model (and a different checkpoint
picked on the out-of-distribution validation). On CPU the order depends on the machine through:

- torch's own kernels (reductions, exp, norms), compiled per instruction set and picked at start
  by the CPU (AVX2, or AVX-512 where the CPU has it): ``ATEN_CPU_CAPABILITY=avx2`` pins them;
- MKL (torch's BLAS: every matmul), whose code path and blocking follow the CPU and its cache
  sizes: ``MKL_CBWR=AVX2`` puts it in conditional-reproducibility mode (fixed cache sizes,
  deterministic reductions), on the AVX2 branch on Intel CPUs; on other CPUs MKL takes its AUTO
  branch (still chosen by the CPU: ``MKL_CBWR=COMPATIBLE``, SSE2 only, is the same everywhere,
  at about 3x the matmul time);
- numba, which compiles the CPU kernels for the host (``fastmath`` lets it reorder sums by the
  vector width: AVX-512 sums in other orders than AVX2): ``NUMBA_CPU_NAME=x86-64-v3`` with no
  extra features compiles them for AVX2 + FMA everywhere;
- the number of threads (torch splits reductions by thread): a CPU cell runs with
  ``cpu.threads`` torch threads (``SUITE_CPU_THREADS``, default 1; ``suite.settings``),
  whatever the machine's core count; another count is another config.

``pins()`` are set (where the user has not set them) by the ``suite`` command before torch or
numba is imported, and given to the worker processes of a parallel sweep. They apply only
where the CPU has AVX2 and FMA (otherwise the CPU's own paths run, as before). A user's own
value of any of these variables wins. ``state()`` says what is in effect (the run tags).
"""

from __future__ import annotations

import os

#: the environment of reproducible CPU numerics (set only where the user has not)
PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "NUMBA_CPU_NAME": "x86-64-v3",
    "NUMBA_CPU_FEATURES": "",
}
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def has_avx2() -> bool:
    """Whether the CPU runs AVX2 and FMA code (what the pins compile and dispatch for)."""
    return {"avx2", "fma"} <= set(_cpuinfo().get("flags", "").split())


def model() -> str:
    """The CPU in words, e.g. "AMD EPYC (family 25, model 1, AVX2, 2 cores)"."""
    import platform

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = info.get("model name") or platform.processor() or "cpu"
    if "cpu family" in info:
        return f"{name} (family {info['cpu family']}, model {info.get('model', '?')}, {isa}, " \
               f"{cores} cores)"
    return f"{name} ({cores} cores)"


def pins() -> dict[str, str]:
    """The pinned settings this machine takes (none without AVX2 and FMA)."""
    return dict(PINS) if has_avx2() else {}


def apply(env: dict | None = None) -> dict[str, str]:
    """Set the pins in ``env`` (default: this process's environment) where unset; returns what
    was set. In this process they only act when torch and numba are not yet imported."""
    env = os.environ if env is None else env
    added = {k: v for k, v in pins().items() if k not in env}
    env.update(added)
    return added


def threads() -> int:
    """The torch threads of a CPU cell: the setting ``cpu.threads`` (default 1)."""
    from . import settings

    return settings.current().step.cpu_threads


def state() -> dict[str, str]:
    """What is in effect in this process: torch's kernel set, threads, MKL and numba targets."""
    import torch

    out = {"cpu_isa": torch.backends.cpu.get_cpu_capability(),
           "cpu_threads": str(torch.get_num_threads()),
           "mkl_cbwr": os.environ.get("MKL_CBWR", "unset")}
    # numba reads NUMBA_CPU_NAME when it is imported (only the numba backend imports it)
    out["numba_cpu"] = os.environ.get("NUMBA_CPU_NAME") or "host"
    return out
