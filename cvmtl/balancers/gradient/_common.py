"""Helpers shared by the gradient balancers: hyper-parameter parsing, seeded randomness,
simplex-valued state indexed by the tasks present in a step, and the count of failed solves."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..base import GradientBalancer


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


def simplex_step(
    state: torch.Tensor, idx: torch.Tensor, update: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a simplex-valued state (modo, sdmgrad, moco): ``update`` maps the present
    tasks' part (:func:`simplex_part`, on their simplex) to its new value, which is stored back
    (:func:`simplex_merge`); returns ``(state, new)`` in float64 on ``idx``'s device."""
    state = state.to(idx.device, torch.float64)
    part, mass = simplex_part(state, idx)
    new = update(part)
    return simplex_merge(state, idx, new, mass), new


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


class SolveFailures:
    """Counts an iterative solver's failed solves on the device (no host sync in the step) and
    warns once per new failure when the weights or the state are next read (nash_mtl, fairgrad).

    ``fallback`` says in the warning which iterate a failed step used.
    """

    def __init__(self, method: str, tol: float, fallback: str) -> None:
        self.method, self.tol, self.fallback = method, tol, fallback
        self.count = torch.zeros((), dtype=torch.int64)  # device counter, read lazily
        self.last_residual = torch.zeros((), dtype=torch.float64)
        self._reported = 0

    def record(self, bad: torch.Tensor, residual: torch.Tensor) -> None:
        """Add this solve's failure flag (a device bool) and keep its residual."""
        self.count = self.count.to(bad.device) + bad.to(torch.int64)
        self.last_residual = residual

    def check(self) -> int:
        """Warn (RuntimeWarning) if solves failed since the last check; returns the total."""
        total = int(self.count)
        if total > self._reported:
            warnings.warn(
                f"{self.method}: {total - self._reported} solve(s) did not converge (last "
                f"residual {float(self.last_residual):.2e} > tol {self.tol:g}); {total} in "
                f"total. Their {self.fallback} was used.",
                RuntimeWarning,
                stacklevel=3,
            )
            self._reported = total
        return total

    def state(self) -> torch.Tensor:
        self.check()
        return self.count.detach().cpu().clone()

    def load(self, count: torch.Tensor) -> None:
        self.count = count.clone()
        self._reported = int(self.count)


class ReportsFailures(GradientBalancer):
    """A gradient balancer with a :class:`SolveFailures` in ``self.failures``: reading its
    weights (the logger's interval) reports new failures."""

    failures: SolveFailures

    def check(self) -> int:
        """Warn (RuntimeWarning) if solves failed since the last check; returns the total."""
        return self.failures.check()

    @property
    def weights(self) -> dict[str, float]:
        self.check()
        return GradientBalancer.weights.fget(self)


def task_rows(
    state: torch.Tensor | None, grads: torch.Tensor, n_tasks: int, method: str, what: str
) -> tuple[torch.Tensor, bool]:
    """The ``[n_tasks, D]`` state of a raw-vector method (db_mtl, moco, excessmtl) for ``grads``
    ``[t, D]``, on their device and dtype; zeros and ``True`` (restarted) when there was none or
    D changed, which is warned: in features mode D values are different samples each step."""
    if state is not None and state.shape[1] == grads.shape[1]:
        return state.to(grads.device, grads.dtype), False
    if state is not None:
        warnings.warn(
            f"{method}: gradient size changed {state.shape[1]} -> {grads.shape[1]}; {what} "
            "restart(s) (use grad_source=params for meaningful state)",
            RuntimeWarning,
            stacklevel=4,
        )
    return grads.new_zeros(n_tasks, grads.shape[1]), True
