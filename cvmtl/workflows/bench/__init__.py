"""Benchmark pieces behind :mod:`cvmtl.workflows.benchmark` and ``tools/benchmark.py``.

``timing`` (clocks, interleaved timing, RSS sampling, peak matmul rate), ``phases`` (the
training step timed phase by phase), ``evalbench`` (evaluation throughput and the metric
share), ``data`` (the real loader and its synthetic fallback), ``sweep`` (grids -> tables).
"""
