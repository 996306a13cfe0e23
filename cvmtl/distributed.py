"""Small torch.distributed helpers: init from torchrun's environment, rank queries, reductions.

At the base of the package: metrics, losses, balancers and the engine all use it."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_coalesced",
    "all_reduce_sum",
    "average_buffers",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_dist",
    "is_main_process",
    "sum_allreduce_hook",
    "unwrap",
]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str = "auto") -> tuple[bool, torch.device]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); NCCL on CUDA, else gloo.

    Returns ``(distributed, device)``; without torchrun it is ``(False, device)``.
    """
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, torch.device("cuda" if want_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not is_dist():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return True, dev


def cleanup_distributed() -> None:
    # No barrier first: it runs in `finally` blocks too, where a rank that failed would wait
    # forever for ranks that are waiting for it in a collective.
    if is_dist():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (a no-op without DDP); returns it."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    if not is_dist():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_reduce_coalesced(tensors: list[torch.Tensor]) -> None:
    """SUM-all-reduce ``tensors`` in place with one call per dtype (a no-op without DDP)."""
    if not is_dist() or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = all_reduce_sum(torch.cat([t.reshape(-1) for t in group]))
        for t, part in zip(group, flat.split([t.numel() for t in group])):
            t.copy_(part.view_as(t))


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Replace each floating-point buffer (BatchNorm running statistics) by its mean over ranks,
    in one all-reduce per dtype (a no-op without DDP). Integer buffers (batch counters) already
    agree: every rank takes the same number of steps."""
    if not is_dist():
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    all_reduce_coalesced(buffers)
    world = get_world_size()
    for b in buffers:
        b.div_(world)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def sum_allreduce_hook(state, bucket):
    """A DistributedDataParallel communication hook that SUMs the gradients (the default hook
    averages them; cvmtl's losses are global means, whose local gradients add up)."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


# DDP compares the hook's annotations with the real classes; this module's postponed (string)
# annotations would fail that check, so they are set as objects here.
sum_allreduce_hook.__annotations__ = {
    "state": object,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}
