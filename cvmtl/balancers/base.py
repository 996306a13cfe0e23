"""Base classes of the balancer contract (see docs/architecture.md).

A *loss-level* balancer is an ``nn.Module`` mapping the task losses to one differentiable scalar;
its parameters (if any) go into the optimizer. A *gradient-level* balancer combines per-task
gradients ``grads [T, D]`` into one shared update ``[D]`` plus the weights ``[T]`` it used.

Tasks without a label in a batch are left out of that step: the machinery passes only the rows
of the tasks present and ``active``, their indices into ``self.tasks``. ``combine`` and
``weights_from_gram`` hand ``active`` on to ``_combine`` / ``_weights_from_gram`` as an argument
(never as an attribute the caller sets): stateful methods index their state with it so that
absent tasks' state stays untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LossBalancer(nn.Module):
    """Loss-level balancer: ``total = balancer(losses)``."""

    kind = "loss"
    # ``total`` is linear in the loss values (weights that do not depend on them): then a step's
    # micro-batches can pass every task of the step, a task without pixels in one of them with a
    # zero loss, and their gradients add up to the big batch's exactly (see cvmtl.engine.step).
    linear_in_losses = False

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self._last_weights: torch.Tensor | None = None

    @property
    def weights(self) -> dict[str, float]:
        """The weights used in the last call, for logging (absent tasks: 0).

        Read lazily (a host sync): the hot loop only stores the tensor.
        """
        return dict(zip(self.tasks, self.last_weights.float().cpu().tolist()))

    @property
    def last_weights(self) -> torch.Tensor:
        """The weights of the last call as a detached tensor ``[T]`` (absent tasks: 0)."""
        if self._last_weights is None:
            return torch.ones(len(self.tasks))
        return self._last_weights

    def _record(self, weights: dict[str, torch.Tensor]) -> None:
        """Store ``{task: weight}`` of the present tasks (the effective dTotal/dL_t)."""
        ref = next(iter(weights.values()))
        out = torch.zeros(len(self.tasks), device=ref.device)
        for i, task in enumerate(self.tasks):
            if task in weights:
                out[i] = weights[task].detach().float()
        self._last_weights = out

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def after_step(self, losses: dict[str, torch.Tensor]) -> None:
        """Called after each optimizer step with the detached task losses."""

    def epoch_end(self) -> None:
        """Called at the end of each training epoch."""


class GradientBalancer:
    """Gradient-level balancer: ``shared_grad, weights = balancer.combine(grads, losses)``."""

    kind = "gradient"
    #: True when the method depends on the gradients only through their inner products; such a
    #: method implements ``_weights_from_gram`` and is exact under DDP in ``features`` mode.
    uses_gram = True
    #: True when the method needs the raw per-task vectors even in ``features`` mode.
    needs_raw = False

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self._last_weights: torch.Tensor | None = None
        # Output for logging only (which tasks the last weights belong to); never read by a
        # method: each call passes its own ``active``.
        self._last_active: list[int] = list(range(len(self.tasks)))

    # -- public API --------------------------------------------------------------------------
    @property
    def weights(self) -> dict[str, float]:
        """The weights used in the last step, for logging (absent tasks: 0).

        Read lazily: converting to Python floats syncs with the device, so the hot loop only
        stores the tensor and the logger pays for the sync at its own interval.
        """
        if self._last_weights is None:
            return {t: 1.0 for t in self.tasks}
        return dict(zip(self.tasks, self.last_weights.float().cpu().tolist()))

    @property
    def last_weights(self) -> torch.Tensor:
        """The weights of the last step as a detached tensor ``[T]`` (absent tasks: 0)."""
        if self._last_weights is None:
            return torch.ones(len(self.tasks))
        out = self._last_weights.new_zeros(len(self.tasks))
        out[self._last_active] = self._last_weights
        return out

    def combine(
        self,
        grads: torch.Tensor,
        losses: torch.Tensor,
        active: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Combine ``grads [T, D]`` (rows of the ``active`` tasks, default all) into
        ``(update [D], weights [T])``."""
        idx = self._active(active, grads.shape[0])
        shared, weights = self._combine(grads.float(), losses.detach().float(), idx)
        self._record(weights, idx)
        return shared, weights

    def weights_from_gram(
        self,
        gram: torch.Tensor,
        losses: torch.Tensor,
        active: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Weights ``[T]`` from the Gram matrix ``[T, T]``; the update is ``weights @ grads``."""
        if not self.uses_gram:
            raise NotImplementedError(f"{type(self).__name__} needs the raw gradients")
        idx = self._active(active, gram.shape[0])
        weights = self._weights_from_gram(gram.double(), losses.detach().double(), idx).float()
        self._record(weights, idx)
        return weights

    def after_step(self, losses: torch.Tensor) -> None:
        """Called after each optimizer step with the detached losses of the step's tasks, in
        ``self.tasks`` order (a task without a label in the step is left out)."""

    def epoch_end(self) -> None:
        """Called at the end of each training epoch."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def parameters(self):  # gradient methods have no optimizer parameters
        return iter(())

    # -- for subclasses -----------------------------------------------------------------------
    # ``active``: the indices into ``self.tasks`` of the rows of ``grads`` / ``gram`` / ``losses``.
    def _combine(
        self, grads: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Default: the Gram-based weights applied to the rows."""
        # The Gram product in float32 is ~15x faster on CPU than in float64 (relative error ~1e-6
        # at D ~ 5e6); the small T x T solve below runs in float64.
        gram = (grads @ grads.T).double()
        weights = self._weights_from_gram(gram, losses.double(), active)
        weights = weights.to(grads.dtype)
        return weights @ grads, weights

    def _weights_from_gram(
        self, gram: torch.Tensor, losses: torch.Tensor, active: list[int]
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _active(self, active: Sequence[int] | None, rows: int) -> list[int]:
        """``active`` as a list (default: every task); its length must match the rows."""
        idx = list(range(len(self.tasks))) if active is None else list(active)
        if len(idx) != rows:
            raise ValueError(f"{rows} gradient rows for {len(idx)} active tasks")
        return idx

    def _record(self, weights: torch.Tensor, active: list[int]) -> None:
        self._last_weights = weights.detach()
        self._last_active = active
