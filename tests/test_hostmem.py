"""cvmtl.hostmem: freed tensor memory stays in the process (glibc), the user's choice wins."""

import os
import platform
import subprocess
import sys

import pytest

from cvmtl import hostmem

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")

# A step's pattern: large temporaries alive at once, then all freed. Printed: the state,
# the page faults per step over the repeats after the first (a fresh process's first step always
# maps its memory), and the MiB the process still holds after the steps (its RSS then, above
# the RSS before them), then after release_freed_memory().
STEPS = """
import os, resource, sys, torch
from cvmtl.hostmem import keep_freed_memory, release_freed_memory
state = keep_freed_memory() if sys.argv[1] == "keep" else "untouched"

def step():
    # 4 x 40 MiB, every page written: above the largest threshold (32 MiB) up to which glibc
    # may keep a freed block in its heap by itself
    temporaries = [torch.ones(10 << 20) for _ in range(4)]
    del temporaries

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

base = rss_mib()
step()
before = faults()
for _ in range(5):
    step()
held = rss_mib() - base
release_freed_memory()
print(state, (faults() - before) / 5, held, rss_mib() - base)
"""
STEP_MIB = 160
PAGES_PER_STEP = STEP_MIB * 2**20 // os.sysconf("SC_PAGE_SIZE")


def run_steps(mode: str, **env: str) -> tuple[str, float, float, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], float(out[1]), float(out[2]), float(out[3])


@glibc_only
def test_kept_memory_is_not_mapped_again_each_step():
    state, faults, held, released = run_steps("keep")
    assert state == "kept"
    assert held >= STEP_MIB  # the step's memory stays in the process, for the next step
    assert faults < 0.25 * PAGES_PER_STEP  # which then reuses it instead of mapping new pages
    assert released < STEP_MIB / 4  # until it is given back on purpose (benchmark baselines)
    # with glibc's defaults such blocks go back to the OS, and are mapped and zeroed again
    _, untuned_faults, untuned_held, _ = run_steps("default")
    assert untuned_held < STEP_MIB / 4
    assert untuned_faults > 0.9 * PAGES_PER_STEP


@glibc_only
def test_the_users_choice_is_left_alone():
    state, _, held, _ = run_steps("keep", MALLOC_ARENA_MAX="2")
    assert state == "env:MALLOC_ARENA_MAX"
    assert held < STEP_MIB / 4  # not tuned: glibc gave the step's memory back


def test_user_choice_names_the_variable(monkeypatch):
    for name in [k for k in os.environ if k.startswith(("MALLOC_", "GLIBC_"))]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("CVMTL_MALLOC", raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libgomp.so.1")
    assert hostmem._user_choice() is None  # a preload that is not an allocator
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert hostmem._user_choice() == "LD_PRELOAD"
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000")
    assert hostmem._user_choice() == "GLIBC_TUNABLES"
    monkeypatch.setenv("CVMTL_MALLOC", "System")  # the opt-out, in any case
    assert hostmem._user_choice() == "CVMTL_MALLOC"
