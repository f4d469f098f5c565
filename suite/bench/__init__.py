"""Speed and memory benchmarks: ``cpu`` (the ``suite bench`` table: numba against SDPA),
``cuda`` (the fused Triton kernels against SDPA flash, ``python -m suite.bench.cuda``) and
``longforward`` (one long forward pass, ``python -m suite.bench.longforward``)."""
