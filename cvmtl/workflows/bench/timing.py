"""Clocks for benchmarks: device sync, interleaved min/median timing, RSS peaks, matmul peak.

Timings on a shared machine are noisy: every time is kept, variants compared against each other
are interleaved (A, B, A, B, ...) so that a burst of load hits both, and the minimum is the
figure least affected by other processes.
"""

from __future__ import annotations

import functools
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from cvmtl.hostmem import release_freed_memory


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


def minor_faults() -> int:
    """This process's minor page faults so far: each is a fresh page the kernel had to map (and
    zero), the cost of memory the allocator handed back to the OS and asked for again."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    iters: int,
    warmup: int,
    device: torch.device,
    faults: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn (A, B, A, B, ...) ``iters`` times after
    ``warmup`` untimed rounds. ``faults``, if given, receives each function's minor page faults
    per timed call (:func:`minor_faults`)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    counted = dict.fromkeys(fns, 0)
    for _ in range(iters):
        for name, fn in fns.items():
            f0, t0 = minor_faults(), time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            counted[name] += minor_faults() - f0
    if faults is not None:
        faults.update({name: n / max(iters, 1) for name, n in counted.items()})
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
        release_freed_memory()
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
CONV_CHANNELS, CONV_BATCH, CONV_MIN_SIDE = 256, 4, 16


def peak_sizes(max_size: int, min_size: int = PEAK_MIN_SIZE) -> list[int]:
    """Sides for the peak: ``min_size``, twice that, ... doubling up to ``max_size`` (included)."""
    sizes, n = [], min(min_size, max_size)
    while n < max_size:
        sizes.append(n)
        n *= 2
    return [*sizes, max_size]


def _climb(cases, device: torch.device, repeats: int, budget_s: float) -> dict[str, Any]:
    """``cases``: (key, flops, make) in growing size; ``make()`` -> a zero-argument call. Each
    call is warmed up once, then timed ``repeats`` times (best kept); a warm-up slower than
    ``budget_s`` is timed once and ends the climb."""
    rates: dict[Any, float] = {}
    for key, flops, make in cases:
        fn = make()
        t0 = time.perf_counter()
        fn()
        sync(device)
        slow = time.perf_counter() - t0 > budget_s
        times = time_interleaved({"fn": fn}, 1 if slow else repeats, 0, device)["fn"]
        rates[key] = flops / min(times)
        if slow:
            break
    return rates


def peak_matmul_flops(
    device: torch.device,
    dtype: torch.dtype,
    max_size: int = 2048,
    repeats: int = 3,
    budget_s: float = 0.5,
) -> dict[str, Any]:
    """This machine's best ``torch.matmul`` rate in ``dtype`` over the square sides of
    :func:`peak_sizes` (one untimed warm-up call each, then the best of ``repeats``), measured in
    the same run as the model (same threads, same load). A side whose warm-up took over
    ``budget_s`` is timed once and ends the climb (bf16 emulated on a CPU without bf16 hardware
    runs ~50x slower than fp32: larger sides would take minutes).

    Returns ``{"flop_s", "size" (the best side), "by_size" {side: FLOP/s}}``.
    """
    g = torch.Generator(device=device).manual_seed(0)

    def case(n: int):
        def make():
            a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
            b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
            return functools.partial(torch.matmul, a, b)

        return n, 2.0 * n**3, make

    by_size = _climb([case(n) for n in peak_sizes(max_size)], device, repeats, budget_s)
    best = max(by_size, key=by_size.__getitem__)
    return {"flop_s": by_size[best], "size": best, "by_size": by_size}


def peak_conv_flops(
    device: torch.device,
    dtype: torch.dtype,
    max_side: int = 64,
    repeats: int = 3,
    budget_s: float = 0.5,
) -> dict[str, Any]:
    """The best forward rate of a 3x3 convolution (256 -> 256 channels, batch 4, padding 1,
    square sides 16, 32, ... ``max_side``), NCHW and channels_last, in ``dtype``: the model's
    own kind of kernel. In nominal FLOPs (2 per multiply-add of the direct convolution), as the
    model's FLOPs are counted: a kernel that computes fewer (Winograd) shows a rate above the
    matmul's, and so would the model's convolutions. Climbs as :func:`peak_matmul_flops`.

    Returns ``{"flop_s", "size" ("layout:side" of the best), "by_size" {"layout:side": FLOP/s}}``.
    """
    import torch.nn.functional as F

    g = torch.Generator(device=device).manual_seed(0)
    c, b = CONV_CHANNELS, CONV_BATCH

    def case(layout: str, n: int):
        def make():
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(b, c, n, n, device=device, dtype=dtype, generator=g)
            w = torch.randn(c, c, 3, 3, device=device, dtype=dtype, generator=g)
            x, w = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)

            def run() -> None:
                with torch.inference_mode():
                    F.conv2d(x, w, padding=1)

            return run

        return f"{layout}:{n}", 2.0 * 9 * c * c * n * n * b, make

    by_size: dict[str, float] = {}
    for layout in ("nchw", "channels_last"):
        cases = [case(layout, n) for n in peak_sizes(max_side, CONV_MIN_SIDE)]
        by_size.update(_climb(cases, device, repeats, budget_s))
    best = max(by_size, key=by_size.__getitem__)
    return {"flop_s": by_size[best], "size": best, "by_size": by_size}
