"""What the benchmarks share: the GPU memory probe and the markdown table of long rows (one
dict per implementation, length and pass, as ``cpu.run`` and ``cuda.run`` return them)."""

from __future__ import annotations

import torch


def peak_gib(fn, device: torch.device | str = "cuda") -> float | None:
    """GiB the call allocates on the GPU beyond what was allocated before it (None on CPU)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def format_table(rows) -> str:
    """A markdown table of long rows, with a caption of the shapes and the machine."""
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    ms = lambda x: fmt(x, ".3f" if x is not None and x < 10 else ".1f")  # noqa: E731
    lines = ["| impl | T | pass | median ms | / sdpa | CPU ms | peak extra MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['T']} | {r['pass']} | {ms(r['median_ms'])} | "
                     f"{fmt(r['ratio_to_sdpa'], '.2f')} | {fmt(r.get('cpu_ms'), '.0f')} | "
                     f"{fmt(r['peak_extra_mib'], '.0f')} |")
    if rows:
        lines.append("\n" + _caption(rows))
    return "\n".join(lines)


def _caption(rows) -> str:
    first = rows[0]
    parts = [str(first["device"])]
    if first.get("threads") is not None:
        parts[0] += f", torch threads = {first['threads']}"
    batches = sorted({r["B"] for r in rows if "B" in r}, reverse=True)
    shape = f"causal, {first.get('dtype', '?')}, B={'/'.join(map(str, batches))}"
    parts.append(shape + f", H={first.get('H', '?')}, D={first.get('D', '?')}")
    if first.get("load_avg") is not None:
        parts.append(f"1-min load average after the run {first['load_avg']:.1f}")
    return "; ".join(parts)
