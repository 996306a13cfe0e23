"""Helpers shared by the streaming metrics: input checks and the DDP reduction."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from cvmtl.distributed import all_reduce_sum, is_dist


def reduced(state: torch.Tensor) -> torch.Tensor:
    """A copy of ``state`` summed over all ranks (the accumulator itself is left untouched, so
    ``compute()`` can be called more than once). NCCL only reduces CUDA tensors."""
    out = state.clone()
    if is_dist():
        if dist.get_backend() == "nccl" and not out.is_cuda:
            out = out.cuda()
        all_reduce_sum(out)
    return out


def check_shapes(name: str, pred: torch.Tensor, target: torch.Tensor, channels: int) -> None:
    """ValueError unless pred is [B,channels,H,W] and target [B,channels,H,W] (same sizes)."""
    want = f"[B,{channels},H,W]"
    if pred.dim() != 4 or pred.shape[1] != channels:
        raise ValueError(f"{name}.update: pred must be {want}, got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(
            f"{name}.update: target must match pred {tuple(pred.shape)}, got {tuple(target.shape)}"
            " (resize predictions to the target's size first)"
        )


def nan_if_empty(num: float, den: float, scale: float = 1.0) -> float:
    """``scale * num / den``, or NaN when nothing was counted (no valid pixel in the split)."""
    return float("nan") if den <= 0 else float(scale * num / den)


def count_bins(index: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``torch.bincount(index, minlength=num_bins)`` for integer indices in ``[0, num_bins)``.
    Off the CPU a scatter-add instead: bincount reads ``index.max()``, a host sync on CUDA."""
    index = index.flatten()
    if index.device.type == "cpu":
        return torch.bincount(index, minlength=num_bins)  # ~1.6x the scatter-add here
    ones = torch.ones(1, dtype=torch.int64, device=index.device).expand(index.numel())
    counts = torch.zeros(num_bins, dtype=torch.int64, device=index.device)
    return counts.scatter_add_(0, index.long(), ones)


def indicator(compare: Callable[..., torch.Tensor], x: torch.Tensor, value: float) -> torch.Tensor:
    """``compare(x, value)`` as a float32 mask of 0 / 1 (NaN compares False). Masks are used
    arithmetically (multiplied, added, summed) rather than by ``torch.where`` / ``masked_fill``:
    on the CPU a comparison written into a float tensor and float arithmetic are vectorized, ~5x
    faster than the same work on bool tensors, and neither syncs the host on CUDA."""
    return compare(x, value, out=torch.empty_like(x, dtype=torch.float32))


def count_ones(mask: torch.Tensor) -> torch.Tensor:
    """The number of ones in a 0 / 1 float mask [B, ...], exactly, as a float64 scalar: float32
    sums per image (exact below 2**24 pixels an image), then their float64 sum. A float64 sum
    of the whole mask would first copy it to float64 (~5x the time on the CPU)."""
    return mask.reshape(mask.shape[0], -1).sum(dim=1).sum(dtype=torch.float64)


def accumulate(state: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``state + update`` kept on the update's device. A fresh (all-zero, CPU) state is replaced
    rather than copied over, so the first CUDA update needs no host-to-device copy (a sync)."""
    if state.device == update.device:
        return state.add_(update)
    if state.device.type == "cpu" and not state.any():
        return update.clone()
    return state.to(update.device).add_(update)
