"""Numeric precision and memory layout: the one home of ``train.amp`` and ``train.channels_last``.

``train.amp``: ``auto`` (default) | ``none`` | ``bf16`` | ``fp16``; ``train.channels_last``:
``auto`` (default) | ``true`` | ``false``. ``auto`` resolves once per device:

- amp: bf16 where the hardware has it (a CPU with AVX512-BF16 or AMX that ATen and oneDNN are
  allowed to use; a CUDA GPU of compute capability >= 8.0), fp16 + GradScaler on other CUDA GPUs,
  fp32 (``none``) everywhere else. Without bf16 hardware a CPU emulates bf16 (correct, but many
  times slower than fp32), so ``auto`` never picks it there.
- channels_last: true on CUDA and on CPUs whose kernels dispatch at AVX-512 (every bf16 CPU,
  and fp32 on AVX-512), false below (AVX2): measured in ``docs/benchmarks.md`` (bf16 CPU:
  1.3-1.7x; fp32 AVX-512: ~1.2x at 288x384, even at 96x128; fp32 AVX2: no consistent winner
  within +-15 %, so the default layout).

A dispatch cap counts as missing hardware: ``ATEN_CPU_CAPABILITY=avx2`` (read back through
``torch.backends.cpu.get_cpu_capability()``) or ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AMX machine
resolve to fp32, as on a real AVX2 CPU.

Concrete values pass through after :func:`check_amp` (a bf16 request on a CUDA GPU without bf16
is an error; on a CPU without bf16 it runs, emulated). :func:`resolve_precision` returns a copy of
a config with both keys concrete; it is idempotent. Every consumer (training, evaluation,
inference, benchmark) resolves through here, and logs :func:`describe_precision`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from typing import Any

import torch

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the one name -> dtype table


def amp_dtype(name: str) -> torch.dtype:
    """The dtype of a precision name: ``bf16`` / ``fp16``, else (``none``, ``fp32``) float32."""
    return AMP_DTYPES.get(name, torch.float32)


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 runs emulated under them
_ONEDNN_NO_BF16 = {
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
}
_ONEDNN_NO_AVX512 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


# ---------------------------------------------------------------------------- device


def resolve_device(device: str | torch.device | None = "auto", key: str = "device") -> torch.device:
    """``auto`` (or None) -> ``cuda`` when available, else ``cpu``; a CUDA request without CUDA
    is a ValueError naming ``key`` (e.g. ``train.device``)."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{key}={name}: CUDA is not available on this machine")
    return torch.device(name)


# ---------------------------------------------------------------------------- capability probes
# Module-level functions so that tests can monkeypatch them (AMX CPU, AVX2 CPU, CUDA sm_75, ...).


@functools.lru_cache(maxsize=1)
def _read_cpu_flags() -> frozenset[str]:
    probe = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
    if probe is not None:
        with contextlib.suppress(Exception):
            return frozenset(k for k, v in probe().items() if v is True)
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    return frozenset(flags)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx512_bf16``, ``amx_bf16``, ...): torch's cpuinfo probe,
    else ``/proc/cpuinfo``; empty where neither answers."""
    return _read_cpu_flags()


def cpu_capability() -> str:
    """ATen's CPU dispatch level (``DEFAULT``, ``AVX2``, ``AVX512``, ...); it honours the
    ``ATEN_CPU_CAPABILITY`` cap."""
    with contextlib.suppress(Exception):
        return str(torch.backends.cpu.get_cpu_capability())
    return "unknown"


def onednn_isa_cap() -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` (or older ``DNNL_MAX_CPU_ISA``) cap, upper case, if set."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device."""
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def cuda_name(device: torch.device) -> str:
    with contextlib.suppress(Exception):
        return torch.cuda.get_device_name(device)
    return "CUDA GPU"


def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matmuls / convolutions in hardware (AVX512-BF16 or AMX) and
    neither ATen's nor oneDNN's dispatch is capped below it."""
    flags = cpu_flags()
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        return False
    if not cpu_capability().upper().startswith("AVX512"):
        return False  # ATEN_CPU_CAPABILITY=avx2 (or default) on a bf16 CPU
    return onednn_isa_cap() not in _ONEDNN_NO_BF16


def cpu_has_avx512() -> bool:
    """True when ATen and oneDNN dispatch AVX-512 kernels (``ATEN_CPU_CAPABILITY`` /
    ``ONEDNN_MAX_CPU_ISA`` caps honoured)."""
    return cpu_capability().upper().startswith("AVX512") and onednn_isa_cap() not in (
        _ONEDNN_NO_AVX512
    )


def cuda_has_bf16(device: torch.device) -> bool:
    """Compute capability >= 8.0 (Ampere and later). ``torch.cuda.is_bf16_supported()`` also
    says yes for emulated bf16 on older GPUs, which is not what ``auto`` wants."""
    return cuda_capability(device) >= (8, 0)


# ---------------------------------------------------------------------------- resolution


def check_amp(amp: str, device: torch.device | str) -> None:
    """A clear ValueError for a ``train.amp`` value the device cannot run (``auto`` included:
    it always can)."""
    device = torch.device(device)
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp: expected one of {'|'.join(AMP_CHOICES)}, got {amp!r}")
    if amp in ("none", "auto"):
        return
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise ValueError(f"train.amp={amp}: torch has no autocast for {device.type}")
    if amp == "bf16" and device.type == "cuda" and not cuda_has_bf16(device):
        major, minor = cuda_capability(device)
        raise ValueError(
            f"train.amp=bf16: this GPU ({cuda_name(device)}, sm_{major}{minor}) has no bfloat16 "
            "hardware; use train.amp=fp16 or auto"
        )


def resolve_amp(amp: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` | ``fp16`` | ``none`` for ``device`` (see the module docstring);
    a concrete value is returned after :func:`check_amp`."""
    device = torch.device(device)
    check_amp(amp, device)
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if cuda_has_bf16(device) else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "none"


def parse_channels_last(value: Any) -> bool | str:
    """``auto`` | bool (YAML ``true`` / ``false``, or those words as strings) -> auto | bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("auto", "true", "false"):
        word = value.strip().lower()
        return "auto" if word == "auto" else word == "true"
    raise ValueError(f"train.channels_last: expected auto|true|false, got {value!r}")


def resolve_channels_last(value: Any, device: torch.device | str, amp: str) -> bool:
    """``auto`` -> True on CUDA and on a CPU with AVX-512 dispatch (where it measured faster,
    in bf16 and in fp32), else False; a bool passes. ``amp`` is checked (the layout rule does not
    depend on it today: every bf16 CPU has AVX-512)."""
    value = parse_channels_last(value)
    if isinstance(value, bool):
        return value
    device = torch.device(device)
    check_amp(amp, device)
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return cpu_has_avx512()
    return False


def resolve_precision(cfg: Any, device: torch.device | str) -> Any:
    """A copy of ``cfg`` whose ``train.amp`` / ``train.channels_last`` are concrete for
    ``device``; idempotent (concrete values are only checked). ``cfg`` is left unchanged."""
    device = resolve_device(device, "train.device")
    amp = resolve_amp(cfg.train.amp, device)
    channels_last = resolve_channels_last(cfg.train.channels_last, device, amp)
    out = copy.deepcopy(cfg)
    out.train.amp, out.train.channels_last = amp, channels_last
    return out


# ---------------------------------------------------------------------------- use


def autocast_context(amp: str, device: torch.device | str):
    """``torch.autocast`` for ``amp`` (``none`` -> a null context; ``auto`` is resolved for
    ``device`` first). fp16 works on CPU too (torch >= 2.3), but is slower than bf16."""
    device = torch.device(device)
    if amp == "auto":
        amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"train.amp: expected one of {'|'.join(AMP_CHOICES)}, got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def make_scaler(amp: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler enabled only for fp16 (bf16 and fp32 need none); ``auto`` is resolved."""
    device = torch.device(device)
    if amp == "auto":
        amp = resolve_amp(amp, device)
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def precision_info(cfg: Any, device: torch.device | str) -> dict[str, Any]:
    """What was asked and what it resolved to, for logs and benchmark JSON."""
    device = resolve_device(device, "train.device")
    amp = resolve_amp(cfg.train.amp, device)
    info: dict[str, Any] = {
        "device_type": device.type,
        "amp_requested": cfg.train.amp,
        "amp_resolved": amp,
        "channels_last_requested": parse_channels_last(cfg.train.channels_last),
        "channels_last_resolved": resolve_channels_last(cfg.train.channels_last, device, amp),
    }
    if device.type == "cpu":
        info["cpu_capability"] = cpu_capability()
        info["cpu_bf16"] = cpu_has_bf16()
        info["cpu_bf16_flags"] = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())
        info["onednn_max_cpu_isa"] = onednn_isa_cap()
    elif device.type == "cuda":
        major, minor = cuda_capability(device)
        info["cuda_capability"] = f"{major}.{minor}"
        info["cuda_bf16"] = cuda_has_bf16(device)
        info["cuda_name"] = cuda_name(device)
    return info


def _hardware_phrase(info: dict[str, Any]) -> str:
    if info["device_type"] == "cpu":
        cap = info["cpu_capability"]
        if info["cpu_bf16"]:
            return f"CPU {cap}, bf16 hardware ({'/'.join(info['cpu_bf16_flags'])})"
        if info["cpu_bf16_flags"]:
            isa = info["onednn_max_cpu_isa"]
            by = f"ONEDNN_MAX_CPU_ISA={isa}" if isa in _ONEDNN_NO_BF16 else "ATEN_CPU_CAPABILITY"
            return f"CPU {cap}, bf16 hardware capped off by {by}"
        return f"CPU {cap}, no bf16 hardware"
    if info["device_type"] == "cuda":
        sm = "sm_" + info["cuda_capability"].replace(".", "")
        bf16 = "bf16 hardware" if info["cuda_bf16"] else "no bf16 hardware"
        return f"CUDA {info['cuda_name']} {sm}, {bf16}"
    return info["device_type"]


def describe_precision(cfg: Any, device: torch.device | str) -> str:
    """One line for logs, e.g. ``amp=none (auto: CPU AVX2, no bf16 hardware),
    channels_last=false (auto)``. ``cfg`` may be resolved or not."""
    info = precision_info(cfg, device)
    hw = _hardware_phrase(info)
    amp = info["amp_resolved"]
    if info["amp_requested"] == "auto":
        amp_text = f"amp={amp} (auto: {hw})"
    else:
        slow = amp == "bf16" and info["device_type"] == "cpu" and not info["cpu_bf16"]
        amp_text = f"amp={amp} (set; {hw}{'; bf16 emulated, slow' if slow else ''})"
    cl = "true" if info["channels_last_resolved"] else "false"
    how = "auto" if info["channels_last_requested"] == "auto" else "set"
    return f"{amp_text}, channels_last={cl} ({how})"
