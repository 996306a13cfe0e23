"""MFU against a peak measured on this machine, memory and device descriptions for the benchmark."""

from __future__ import annotations

import resource
from typing import Any

import torch

from cvmtl.precision import amp_dtype
from cvmtl.workflows.bench.timing import (
    CONV_BATCH,
    CONV_CHANNELS,
    CONV_MIN_SIDE,
    MemoryPeak,
    peak_conv_flops,
    peak_matmul_flops,
    peak_sizes,
)

MFU_DTYPES = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}


def flops_and_mfu(cfg, dev, flops, img_s, peak_size) -> dict[str, Any]:
    """``mfu`` = ``train_flop_s`` / ``mfu_peak_flop_s``, against an upper bound measured here:
    per dtype the best of ``torch.matmul`` (square sides 512..``peak_size``) and of a 3x3
    convolution (the model's kernel kind; sides 16..``peak_size`` / 32, both layouts), see
    :mod:`cvmtl.workflows.bench.timing`; then the autocast dtype's peak, or fp32's where that
    is higher (a dtype emulated in software, e.g. bf16 on a CPU without bf16 hardware, is slower
    than the fp32 arithmetic its kernels may fall back to). ``cfg`` is resolved (``train.amp``
    concrete)."""
    # forward + backward ~ 3x the forward FLOPs (the usual MFU convention)
    achieved = 3.0 * flops * img_s
    out: dict[str, Any] = {"train_flop_s": achieved, "peak_flop_s": None, "mfu": None}
    if not peak_size:
        return out
    dtype = MFU_DTYPES[cfg.train.amp]
    conv_side = max(CONV_MIN_SIDE, peak_size // 32)
    kernels: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(("bf16", "fp32", dtype)):
        kernels[name] = {
            "matmul": peak_matmul_flops(dev, amp_dtype(name), peak_size),
            "conv3x3": peak_conv_flops(dev, amp_dtype(name), conv_side),
        }
    peaks = {name: max(k["flop_s"] for k in ks.values()) for name, ks in kernels.items()}
    bound = max((dtype, "fp32"), key=peaks.__getitem__)
    out.update(
        peak_flop_s=peaks,
        peak_by_kernel={
            name: {kind: k["by_size"] for kind, k in ks.items()} for name, ks in kernels.items()
        },
        peak_matmul_size=peak_size,
        peak_method=(
            f"per dtype the best of torch.matmul (square sides {peak_sizes(peak_size)}) and a "
            f"forward 3x3 conv ({CONV_CHANNELS}->{CONV_CHANNELS} channels, batch {CONV_BATCH}, "
            f"sides {peak_sizes(conv_side, CONV_MIN_SIDE)}, NCHW and channels_last); each "
            "1 warm-up then best of 3 (a size whose warm-up took > 0.5 s timed once, ending the "
            "climb); nominal FLOPs; mfu against the autocast dtype's peak or fp32's, whichever "
            "is higher"
        ),
        mfu_dtype=dtype,
        mfu_peak_dtype=bound,
        mfu_peak_flop_s=peaks[bound],
        mfu=achieved / peaks[bound],
    )
    return out


def memory(dev: torch.device, mem: MemoryPeak) -> dict[str, Any]:
    if dev.type == "cuda":
        peak_mb, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_memory_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        kind = "process_max_rss"
    return {
        "peak_mem_mb": peak_mb,
        "peak_mem_kind": kind,
        "train_step_mem_mb": mem.peak_mb,
        "train_step_mem_kind": mem.kind,
    }


def device_desc(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} threads)"
