"""Host memory: keep the memory of freed tensors in the process instead of giving it back to the
OS after every operation.

glibc's malloc serves a large block (above a threshold that adapts between 128 KiB and 32 MiB)
with its own ``mmap`` and unmaps it on ``free``, and it trims the heap's free top back to the OS
beyond twice that threshold. A CPU training step or evaluation allocates and frees hundreds of
such blocks (activations, gradients); every one comes back as fresh pages the kernel must map
and zero: ~10,000 page faults (~40 MiB) per step of the demo config, ~100,000 at 288x384, ~25 ms
of the demo's step on two cores (docs/benchmarks.md, "Host memory").

:func:`keep_freed_memory` tells malloc (``mallopt``) to serve every block from its heap and never
to trim it, so that freed blocks stay for the next step: what jemalloc or tcmalloc (PyTorch's
recommendation for CPU performance, loaded with ``LD_PRELOAD``) do by design. ``mallopt``
through ctypes rather than one of them: neither is a pip package, and the commands must be fast
from ``make demo`` on. The process keeps its peak heap (the memory of one step) until it exits.

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
M_MMAP_MAX = -4
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
def _glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc (musl's mallopt does nothing; macOS has none)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


@functools.cache
def keep_freed_memory() -> str:
    """Tune glibc's malloc to keep freed memory (once per process); returns what is in effect:
    ``"kept"``, ``"env:<VARIABLE>"`` (the user's choice, left alone) or ``"system"`` (not glibc,
    or ``mallopt`` refused)."""
    chosen = _user_choice()
    if chosen is not None:
        return f"env:{chosen}"
    libc = _glibc()
    if libc is None:
        return "system"
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no block gets a mapping of its own (raising the mmap threshold instead stops at 32 MiB,
    # below a 288x384 step's largest activations): every block comes from the heap
    ok = mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return "kept" if ok else "system"


def release_freed_memory() -> None:
    """Give the heap's free memory back to the OS now (``malloc_trim``; glibc only), kept or not:
    for a resident-set baseline that a previous step's memory does not inflate."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
