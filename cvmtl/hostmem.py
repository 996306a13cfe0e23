"""Host memory: keep the memory of freed tensors in the process instead of giving it back to the
OS after every operation.

glibc's malloc serves a large block (above a threshold that adapts between 128 KiB and 32 MiB)
with its own ``mmap`` and unmaps it on ``free``, and it trims the heap's free top back to the OS
beyond twice that threshold. A CPU training step or evaluation allocates and frees hundreds of
such blocks (activations, gradients); every one comes back as fresh pages the kernel must map
and zero: ~10,000 page faults (~40 MiB) per step of the demo config, whose step runs 1.2x as fast
without them on two cores (docs/benchmarks.md, "Host memory").

:func:`keep_freed_memory` raises both thresholds with ``mallopt`` so that freed blocks stay in the
heap for the next step, what jemalloc or tcmalloc (PyTorch's recommendation for CPU performance,
loaded with ``LD_PRELOAD``) do by design. ``mallopt`` through ctypes rather than one of them:
neither is a pip package, and the commands must be fast from ``make demo`` on. The process keeps
its peak heap (the memory of one step) until it exits.

Left alone: a process not on glibc (macOS, Windows, musl), one whose user chose an allocator or
malloc settings (``LD_PRELOAD`` naming one, any ``MALLOC_*`` / ``GLIBC_TUNABLES`` in the
environment), or ``CVMTL_MALLOC=system``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, 4 * 1 MiB * sizeof(long)):
# blocks above it are still mapped on their own, as they are rare and reused in place by the OS.
MMAP_THRESHOLD = 32 * 2**20
# mallopt takes an int: INT_MAX, so the heap's free top (the next step's memory) is never trimmed
TRIM_THRESHOLD = 2**31 - 1


def _user_choice() -> str | None:
    """The environment variable by which the user already chose an allocator or its settings."""
    if os.environ.get("CVMTL_MALLOC", "").lower() == "system":
        return "CVMTL_MALLOC"
    if "malloc" in os.environ.get("LD_PRELOAD", "").lower():
        return "LD_PRELOAD"
    for name in os.environ:
        if name.startswith("MALLOC_") or name == "GLIBC_TUNABLES":
            return name
    return None


@functools.cache
def keep_freed_memory() -> str:
    """Tune glibc's malloc to keep freed memory (once per process); returns what is in effect:
    ``"kept"``, ``"env:<VARIABLE>"`` (the user's choice, left alone) or ``"system"`` (not glibc,
    or ``mallopt`` refused)."""
    chosen = _user_choice()
    if chosen is not None:
        return f"env:{chosen}"
    if platform.libc_ver()[0] != "glibc":  # musl's mallopt does nothing; macOS has none
        return "system"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "system"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return "kept" if ok else "system"
