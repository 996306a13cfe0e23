"""Clocks for benchmarks: device sync, interleaved min/median timing, RSS peaks, matmul peak.

Timings on a shared machine are noisy: every time is kept, variants compared against each other
are interleaved (A, B, A, B, ...) so that a burst of load hits both, and the minimum is the
figure least affected by other processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu (:func:`cvmtl.precision.resolve_device`)."""
    from cvmtl.precision import resolve_device as resolve

    return resolve(name)


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA kernels run asynchronously; CPU ops are already done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(times: list[float]) -> dict[str, Any]:
    """median / min / max (seconds) and every sample (the spread tells contention from speed)."""
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "all": [round(t, 6) for t in times],
    }


def time_interleaved(
    fns: dict[str, Callable[[], Any]], iters: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn (A, B, A, B, ...) ``iters`` times after
    ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc), so that RSS baselines are not inflated."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryPeak:
    """Peak memory of a block above the memory at its start, in MiB.

    CUDA: ``max_memory_allocated`` (exact). CPU: the process RSS sampled every ~2 ms by a thread
    (allocations shorter than that can be missed; activations of a training step are not).
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = device, interval
        self.peak_mb = 0.0
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "rss_sampled"
        self._stop = threading.Event()

    def __enter__(self) -> MemoryPeak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        trim_heap()
        self._base = self._max = _rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _rss_mb())
        self.peak_mb = peak - self._base


PEAK_MIN_SIZE = 512


def peak_sizes(max_size: int) -> list[int]:
    """Matmul sides for the peak: 512, 1024, ... doubling up to ``max_size`` (included)."""
    sizes, n = [], min(PEAK_MIN_SIZE, max_size)
    while n < max_size:
        sizes.append(n)
        n *= 2
    return [*sizes, max_size]


def peak_matmul_flops(
    device: torch.device,
    dtype: torch.dtype,
    max_size: int = 2048,
    repeats: int = 3,
    budget_s: float = 0.5,
) -> dict[str, Any]:
    """This machine's best ``torch.matmul`` rate in ``dtype``: for each side of
    :func:`peak_sizes` one untimed warm-up call, then the best of ``repeats`` timed calls; the
    best rate over the sizes is ``flop_s``. Measured in the same run as the model (same threads,
    same load). A size whose warm-up call took over ``budget_s`` is timed once and ends the climb
    (bf16 emulated on a CPU without bf16 hardware runs ~50x slower than fp32: larger sides would
    take minutes).

    Returns ``{"flop_s", "size" (the best side), "by_size" {side: FLOP/s}}``.
    """
    g = torch.Generator(device=device).manual_seed(0)
    by_size: dict[int, float] = {}
    for n in peak_sizes(max_size):
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        slow = time.perf_counter() - t0 > budget_s  # then one timed call, and no larger side
        mm = {"mm": functools.partial(torch.matmul, a, b)}
        times = time_interleaved(mm, 1 if slow else repeats, 0, device)["mm"]
        by_size[n] = 2.0 * n**3 / min(times)
        if slow:
            break
    best = max(by_size, key=by_size.__getitem__)
    return {"flop_s": by_size[best], "size": best, "by_size": by_size}
