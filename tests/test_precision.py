"""cvmtl.precision: train.amp / train.channels_last ``auto`` per device class (the capability
probes are mocked: AMX CPU, AVX2 CPU, capped AMX CPU, CUDA sm_75 / sm_90), idempotence, errors,
config parsing, and the regression heads' float32 prediction layer under bf16 autocast."""

from __future__ import annotations

import contextlib

import pytest
import torch

from cvmtl import precision as P
from cvmtl.config import ConfigError, load_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cpu_kind(monkeypatch):
    """``cpu_kind(flags, capability)``: this process's CPU as the probes will report it."""

    def set_kind(flags: set[str], capability: str) -> None:
        monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(P, "cpu_capability", lambda: capability)

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    return set_kind


@pytest.fixture
def gpu(monkeypatch):
    """``gpu(major, minor)``: a (mocked) CUDA device of that compute capability."""

    def set_gpu(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(P, "cuda_capability", lambda device: (major, minor))
        monkeypatch.setattr(P, "cuda_name", lambda device: f"mock sm_{major}{minor}")

    return set_gpu


AMX = ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "AVX512")
AVX512_BF16 = ({"avx2", "avx512f", "avx512_bf16"}, "AVX512")  # e.g. AMD Zen 4
AVX2 = ({"avx2", "fma"}, "AVX2")
AVX512_NO_BF16 = ({"avx2", "avx512f"}, "AVX512")  # e.g. Skylake


@pytest.mark.parametrize(
    ("kind", "amp", "channels_last"),
    [(AMX, "bf16", True), (AVX512_BF16, "bf16", True), (AVX2, "none", False)]
    + [(AVX512_NO_BF16, "none", True)],  # fp32 on AVX-512: channels_last measured faster
)
def test_auto_on_cpus(cpu_kind, kind, amp, channels_last) -> None:
    cpu_kind(*kind)
    assert P.cpu_has_bf16() == (amp == "bf16")
    assert P.resolve_amp("auto", CPU) == amp
    assert P.resolve_channels_last("auto", CPU, "auto") is channels_last
    cfg = P.resolve_precision(load_config(None, ["train.device=cpu"]), CPU)
    assert (cfg.train.amp, cfg.train.channels_last) == (amp, channels_last)


def test_dispatch_caps_count_as_no_bf16(cpu_kind, monkeypatch) -> None:
    """ATEN_CPU_CAPABILITY=avx2 (seen through get_cpu_capability) or ONEDNN_MAX_CPU_ISA=AVX2 on
    an AMX machine resolve to fp32, as on an AVX2 CPU."""
    cpu_kind(AMX[0], "AVX2")
    assert P.resolve_amp("auto", CPU) == "none"
    assert P.resolve_channels_last("auto", CPU, "none") is False
    cpu_kind(*AMX)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert P.resolve_amp("auto", CPU) == "none"
    assert P.resolve_channels_last("auto", CPU, "none") is False
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in P.describe_precision(load_config(), CPU)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # AVX-512 without bf16
    assert P.resolve_amp("auto", CPU) == "none"
    assert P.resolve_channels_last("auto", CPU, "none") is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert P.resolve_amp("auto", CPU) == "bf16"


@pytest.mark.parametrize(
    ("cap", "amp", "scaled"), [((7, 5), "fp16", True), ((9, 0), "bf16", False)]
)
def test_auto_on_cuda(gpu, cap, amp, scaled) -> None:
    gpu(*cap)
    assert P.resolve_amp("auto", CUDA) == amp
    assert P.resolve_channels_last("auto", CUDA, amp) is True
    cfg = P.resolve_precision(load_config(None, ["train.device=cuda"]), "cuda")
    assert (cfg.train.amp, cfg.train.channels_last) == (amp, True)
    text = P.describe_precision(load_config(), CUDA)
    assert text.startswith(f"amp={amp} (auto: CUDA mock sm_{cap[0]}{cap[1]}")
    assert ("no bf16" in text) == scaled


def test_bf16_on_a_gpu_without_bf16_is_an_error(gpu) -> None:
    gpu(7, 5)
    with pytest.raises(ValueError, match=r"train.amp=bf16.*sm_75.*fp16"):
        P.resolve_amp("bf16", CUDA)
    with pytest.raises(ValueError, match="train.amp=bf16"):
        P.resolve_precision(load_config(None, ["train.amp=bf16"]), CUDA)
    assert P.resolve_amp("fp16", CUDA) == "fp16"
    gpu(8, 0)
    assert P.resolve_amp("bf16", CUDA) == "bf16"


def test_concrete_values_pass_and_bad_ones_fail(cpu_kind) -> None:
    cpu_kind(*AVX2)
    for amp in ("none", "bf16", "fp16"):  # bf16 without hardware runs (emulated): no error
        assert P.resolve_amp(amp, CPU) == amp
    assert "emulated, slow" in P.describe_precision(load_config(None, ["train.amp=bf16"]), CPU)
    assert P.resolve_channels_last(True, CPU, "none") is True
    assert P.resolve_channels_last("false", CPU, "bf16") is False
    with pytest.raises(ValueError, match="train.amp"):
        P.resolve_amp("fp8", CPU)
    with pytest.raises(ValueError, match="train.channels_last"):
        P.resolve_channels_last("sometimes", CPU, "none")


def test_resolve_device(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.resolve_device("auto") == CPU and P.resolve_device(None) == CPU
    with pytest.raises(ValueError, match="train.device=cuda"):
        P.resolve_device("cuda", "train.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert P.resolve_device("auto") == CUDA


@pytest.mark.parametrize("kind", [AMX, AVX2])
def test_resolve_precision_is_idempotent_and_copies(cpu_kind, kind) -> None:
    cpu_kind(*kind)
    cfg = load_config()
    once = P.resolve_precision(cfg, CPU)
    assert P.resolve_precision(once, CPU) == once
    assert (cfg.train.amp, cfg.train.channels_last) == ("auto", "auto")  # input untouched
    assert once.train.amp in ("bf16", "none") and isinstance(once.train.channels_last, bool)


def test_describe_precision_names_the_reason(cpu_kind) -> None:
    cpu_kind(*AVX2)
    assert P.describe_precision(load_config(), CPU) == (
        "amp=none (auto: CPU AVX2, no bf16 hardware), channels_last=false (auto)"
    )
    cpu_kind(*AMX)
    text = P.describe_precision(load_config(None, ["train.channels_last=false"]), CPU)
    assert text.startswith("amp=bf16 (auto: CPU AVX512, bf16 hardware (")
    assert text.endswith("channels_last=false (set)")
    info = P.precision_info(load_config(), CPU)
    assert info["cpu_capability"] == "AVX512" and info["cpu_bf16"] is True
    assert info["amp_resolved"] == "bf16" and info["channels_last_resolved"] is True


def test_autocast_and_scaler(cpu_kind) -> None:
    cpu_kind(*AVX2)
    assert isinstance(P.autocast_context("auto", CPU), contextlib.nullcontext)
    cpu_kind(*AMX)
    with P.autocast_context("auto", CPU):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert P.make_scaler("fp16", CPU).is_enabled()
    assert not P.make_scaler("bf16", CPU).is_enabled()
    assert not P.make_scaler("none", CPU).is_enabled()
    with pytest.raises(ValueError, match="train.amp"):
        P.autocast_context("fp8", CPU)


def test_config_accepts_auto_true_false() -> None:
    cfg = load_config()
    assert (cfg.train.amp, cfg.train.channels_last) == ("auto", "auto")  # the new defaults
    for text, want in [("true", True), ("false", False), ("auto", "auto"), ("'False'", False)]:
        assert load_config(None, [f"train.channels_last={text}"]).train.channels_last == want
    for amp in ("auto", "none", "bf16", "fp16"):
        assert load_config(None, [f"train.amp={amp}"]).train.amp == amp
    for bad in ("train.channels_last=sometimes", "train.channels_last=1", "train.amp=fp8"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_shipped_configs_leave_precision_to_the_device() -> None:
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")):
        cfg = load_config(path)
        assert (cfg.train.amp, cfg.train.channels_last) == ("auto", "auto"), path.name


@pytest.mark.parametrize("task", ["depth", "normal"])
def test_regression_heads_predict_in_float32_under_bf16_autocast(task: str) -> None:
    """The prediction layer (1x1 conv + upsampling) of the depth / normal heads runs in float32
    on the head's features: its output equals a float32 computation of that layer."""
    import torch.nn.functional as F

    from cvmtl.models.heads import build_head, crop

    torch.manual_seed(0)
    head = build_head(task, 16, 13, hidden=8).eval()
    feats = torch.randn(2, 16, 6, 8)
    size = (22, 30)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(feats, size)
        hidden = head.block(feats)  # what the prediction layer receives (bf16)
    assert hidden.dtype == torch.bfloat16 and got.dtype == torch.float32
    with torch.no_grad():
        x = F.conv2d(hidden.float(), head.pred.weight, head.pred.bias)
        x = F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)
        want = head.activate(crop(x, size))
        # the old path: the prediction layer in bf16 -> visibly coarser than float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = F.interpolate(head.pred(hidden), scale_factor=4.0, mode="bilinear")
            coarse = head.activate(crop(x, size))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (coarse.float() - want).abs().max() > 1e-4  # the test can tell the two apart
