"""Console summary of a benchmark result."""

from __future__ import annotations

from typing import Any


def format_report(result: dict[str, Any]) -> str:
    """A few human-readable lines for the console."""
    tr = result["train"]
    mfu = "n/a" if result.get("mfu") is None else f"{100 * result['mfu']:.1f}%"
    if result.get("mfu") is not None:
        mfu += f" of the {result['mfu_peak_dtype']} peak"
    s = tr["step_s"]
    lines = [
        f"device {result['device']}, torch {result['torch']}, load {result['load_avg']}",
        f"precision: {result.get('precision', 'n/a')}",
        f"params {result['params'] / 1e6:.2f} M, forward {result['flops_per_img'] / 1e9:.2f} "
        f"GFLOP/img",
        f"train: {s['median']:.3f} s/step (min {s['min']:.3f}, max {s['max']:.3f}), "
        f"{tr['img_s']:.1f} img/s, batch {tr['batch_size']}, MFU {mfu}, "
        f"{tr['minor_faults']:.0f} page faults/step",
    ]
    if tr.get("phases"):
        parts = ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in tr["phases"].items()
        )
        lines.append(f"  phases (s, median): {parts}; sum/step {tr['phases_vs_step']:.2f}")
    if "speedup_vs_eager_fp32" in result:
        e = result["eager_fp32"]["step_s"]
        lines.append(
            f"eager fp32: {e['median']:.3f} s/step (min {e['min']:.3f}): speedup "
            f"{result['speedup_vs_eager_fp32']:.2f}x (of minima "
            f"{result['speedup_vs_eager_fp32_min']:.2f}x)"
        )
    if "compare" in result:
        c = result["compare"]
        lines.append(
            f"compare {' '.join(c['overrides'])} ({c['precision']}): "
            f"{c['step_s']['median']:.3f} s/step (min {c['step_s']['min']:.3f}): this config "
            f"{result['speedup_vs_compare']:.2f}x as fast (of minima "
            f"{result['speedup_vs_compare_min']:.2f}x)"
        )
    if "eval" in result:
        ev = result["eval"]
        lines.append(
            f"eval: {ev['step_s']['median']:.3f} s/batch, {ev['img_s']:.1f} img/s, metrics "
            f"{100 * ev['metrics_frac']:.1f}% of it; page faults/batch: forward "
            f"{ev['minor_faults']['forward']:.0f}, metrics {ev['minor_faults']['metrics']:.0f}"
        )
    lines.append(
        f"memory: step {result['train_step_mem_mb']:.0f} MiB ({result['train_step_mem_kind']}), "
        f"process peak {result['peak_mem_mb']:.0f} MiB"
    )
    return "\n".join(lines)
