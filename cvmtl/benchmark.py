"""Speed / memory / FLOPs benchmark of a config's model on random data (no dataset needed).

The training step is pluggable: :func:`run_benchmark` takes any ``step(model, batch, optimizer)``
callable; :func:`simple_train_step` (sum of plain task losses, backward, optimizer step) is the
default until the engine's ``train_step`` is swapped in (see :func:`engine_train_step`).
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.config import Config, to_dict
from cvmtl.models import build_model

TrainStep = Callable[[nn.Module, dict[str, Any], torch.optim.Optimizer], Any]

# Dense bf16 peak FLOP/s of known accelerators, for MFU (None elsewhere).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast per ``train.amp`` (fp16 only on CUDA), else a no-op."""
    if cfg.train.amp == "none" or (cfg.train.amp == "fp16" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def random_batch(cfg: Config, batch_size: int, device: torch.device) -> dict[str, Any]:
    """A batch in the DESIGN batch contract with random values at ``data.crop``."""
    h, w = cfg.data.crop
    g = torch.Generator().manual_seed(0)
    normal = F.normalize(torch.randn(batch_size, 3, h, w, generator=g), dim=1)
    batch = {
        "image": torch.randn(batch_size, 3, h, w, generator=g),
        "seg": torch.randint(0, cfg.data.num_classes, (batch_size, h, w), generator=g),
        "depth": torch.rand(batch_size, 1, h, w, generator=g) * cfg.model.max_depth,
        "normal": normal,
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    if cfg.train.channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    batch["has"] = {t: torch.ones(batch_size, dtype=torch.bool, device=device) for t in cfg.tasks}
    return batch


def simple_losses(preds: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Plain per-task losses: cross-entropy, masked L1 depth, 1 - cosine normals."""
    losses = {}
    for task, pred in preds.items():
        if task == "seg":
            losses[task] = F.cross_entropy(pred.float(), batch["seg"], ignore_index=255)
        elif task == "depth":
            valid = batch["depth"] > 0
            losses[task] = (pred.float() - batch["depth"]).abs()[valid].mean()
        elif task == "normal":
            losses[task] = (1 - (pred.float() * batch["normal"]).sum(1)).mean()
    return losses


def simple_train_step(cfg: Config, device: torch.device) -> TrainStep:
    """Sum of :func:`simple_losses` (+ the soft-sharing penalty), backward, optimizer step."""

    def step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer) -> Any:
        optimizer.zero_grad(set_to_none=True)
        with autocast(cfg, device):
            preds = model(batch["image"])
        loss = sum(simple_losses(preds, batch).values()) + _module(model).regularization()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def engine_train_step(cfg: Config, device: torch.device) -> TrainStep:
    """The engine's ``train_step(model, batch, balancer, optimizer, scaler, cfg)`` as a step."""
    from cvmtl.balancers import build_balancer
    from cvmtl.engine.step import train_step

    balancer = build_balancer(cfg.loss.balancer, cfg.tasks, **cfg.loss.balancer_args)
    if isinstance(balancer, nn.Module):
        balancer = balancer.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    def step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer) -> Any:
        return train_step(model, batch, balancer, optimizer, scaler, cfg)

    return step


def _module(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], iters: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _stats(times: list[float]) -> dict[str, float]:
    # every time is kept: on shared machines the spread tells contention from speed
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "all": [round(t, 6) for t in times],
    }


def count_flops(model: nn.Module, cfg: Config, device: torch.device) -> int:
    """Forward FLOPs of one image at ``data.crop`` (FlopCounterMode: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.randn(1, 3, *cfg.data.crop, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _module(model)(image)
    model.train(was_training)
    return int(counter.get_total_flops())


def run_benchmark(
    cfg: Config,
    iters: int = 10,
    warmup: int = 2,
    device: str | None = None,
    train_step: TrainStep | None = None,
) -> dict[str, Any]:
    """Time forward (eval) and train steps of ``cfg``'s model; DESIGN's benchmark JSON as a dict."""
    dev = resolve_device(device or cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its kernels
    model = build_model(cfg).to(dev)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, cfg, dev)
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    step = train_step or simple_train_step(cfg, dev)
    bs = cfg.train.batch_size
    batch = random_batch(cfg, bs, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    model.train()
    train_times = _time(lambda: step(model, batch, optimizer), iters, warmup, dev)

    eval_bs = cfg.data.eval_batch_size or bs
    eval_batch = random_batch(cfg, eval_bs, dev)
    model.eval()

    def forward() -> None:
        with torch.inference_mode(), autocast(cfg, dev):
            model(eval_batch["image"])

    eval_times = _time(forward, iters, warmup, dev)

    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
        mem_kind = "cuda_max_memory_allocated"
        name = torch.cuda.get_device_name(dev)
        device_desc = f"cuda:{name}"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        mem_kind = "process_max_rss"
        name = ""
        device_desc = f"cpu ({torch.get_num_threads()} threads)"
    train_med = statistics.median(train_times)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    # forward + backward ~ 3x forward FLOPs
    mfu = 3 * flops * bs / train_med / peak if peak and cfg.train.amp != "none" else None
    return {
        "train": {
            "img_s": bs / train_med,
            "step_s": _stats(train_times),
            "batch_size": bs,
            "phases": {},
        },
        "eval": {
            "img_s": eval_bs / statistics.median(eval_times),
            "step_s": _stats(eval_times),
            "batch_size": eval_bs,
        },
        "peak_mem_mb": peak_mb,
        "peak_mem_kind": mem_kind,
        "params": params,
        "flops_per_img": flops,
        "mfu": mfu,
        "iters": iters,
        "warmup": warmup,
        "config": to_dict(cfg),
        "device": device_desc,
        "torch": torch.__version__,
    }


def format_report(result: dict[str, Any]) -> str:
    """A few human-readable lines for the console."""
    tr, ev = result["train"], result["eval"]
    mfu = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    return "\n".join(
        [
            f"device {result['device']}, torch {result['torch']}",
            f"params {result['params'] / 1e6:.2f} M, forward {result['flops_per_img'] / 1e9:.2f} "
            f"GFLOP/img",
            f"train: {tr['step_s']['median']:.3f} s/step (min {tr['step_s']['min']:.3f}, max "
            f"{tr['step_s']['max']:.3f}), {tr['img_s']:.1f} img/s, batch {tr['batch_size']}",
            f"eval:  {ev['step_s']['median']:.3f} s/step (min {ev['step_s']['min']:.3f}, max "
            f"{ev['step_s']['max']:.3f}), {ev['img_s']:.1f} img/s, batch {ev['batch_size']}",
            f"peak memory {result['peak_mem_mb']:.0f} MiB ({result['peak_mem_kind']}), MFU {mfu}",
        ]
    )
