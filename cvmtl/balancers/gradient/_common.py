"""Helpers shared by the gradient balancers: hyper-parameter parsing, seeded randomness and
simplex-valued state indexed by the tasks present in a step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def parse_hparams(method: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """``defaults`` updated with ``given``; an unknown name is a ValueError that names it."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"{method}: unknown hyper-parameter(s) {unknown}; known: {sorted(defaults)}"
        )
    return {**defaults, **given}


def check_range(method: str, name: str, value: Any, lo: float, hi: float = float("inf")) -> float:
    """``float(value)`` if ``lo <= value <= hi`` else ValueError naming the hyper-parameter."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{method}: {name} must be a number, got {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{method}: {name} must be in [{lo}, {hi}], got {v}")
    return v


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to ``device`` without a host sync.

    A copy from pageable memory waits for the device stream; from pinned memory it is enqueued.
    """
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def active_index(active: list[int], device: torch.device) -> torch.Tensor:
    """``active`` (indices into the balancer's tasks) as an index tensor on ``device`` (no sync)."""
    return to_device(torch.tensor(active, dtype=torch.int64), device)


def simplex_part(full: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The present tasks' entries of a simplex-valued state ``full [T]``, rescaled onto their own
    simplex (uniform when they are all zero), and their total ``mass``."""
    part = full[idx]
    mass = part.sum()
    uniform = torch.full_like(part, 1.0 / part.shape[0])
    return torch.where(mass > 1e-12, part / mass.clamp_min(1e-12), uniform), mass


def simplex_merge(
    full: torch.Tensor, idx: torch.Tensor, new: torch.Tensor, mass: torch.Tensor
) -> torch.Tensor:
    """``full`` with the present tasks' entries replaced by ``new`` (on their simplex) times their
    old ``mass``: absent tasks keep their entries and, relative to them, the present tasks keep
    their share. With every task present this is plain replacement (``mass`` is 1). When the
    present tasks had no mass (all at the boundary, frequent with SDMGrad's large inner steps),
    ``new`` is stored as it is rather than scaled to zero; ``full`` then no longer sums to 1, which
    :func:`simplex_part` undoes on every read."""
    return full.index_copy(0, idx, new * torch.where(mass > 1e-12, mass, torch.ones_like(mass)))


def step_seed(seed: int, step: int) -> int:
    """One 63-bit seed per (seed, step): every DDP rank and a resumed run draw the same numbers."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


def random_orders(n: int, seed: int, step: int, device: torch.device) -> torch.Tensor:
    """``[n, n-1]``: row i is a random order of the other tasks (PCGrad / GradVac).

    Drawn on a CPU generator so CPU and CUDA runs (and all ranks) agree; the tiny index tensor
    is then copied to ``device`` through pinned memory (no sync).
    """
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    keys = torch.rand(n, n, generator=gen)
    keys.fill_diagonal_(2.0)  # task i itself sorts last and is dropped
    return to_device(keys.argsort(dim=1)[:, : n - 1], device)
