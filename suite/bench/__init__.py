"""Speed and memory benchmarks: ``cpu`` (the ``suite bench`` table: numba against SDPA),
``cuda`` (the fused Triton kernels against SDPA, ``python -m suite.bench.cuda``), ``train``
(training throughput of whole cells, ``suite bench --train``) and ``longforward`` (one long
forward pass, ``python -m suite.bench.longforward``); ``common`` holds what they share."""
