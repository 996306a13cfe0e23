"""The logic of ``tools/eval.py``: evaluate a checkpoint on a split, write metrics.json (with
delta_m when baselines are known), report.md and a self-contained report.html.

A checkpoint carries its config, so the checkpoint alone is enough; ``key=value`` overrides
(e.g. ``data.root=...`` on another machine) are applied on top of that config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cvmtl.engine.restore import build_from_weights, config_from_checkpoint
from cvmtl.precision import describe_precision, resolve_device, resolve_precision

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")


def default_out(checkpoint: Path) -> Path:
    """``runs/<name>/report`` for best.pt / last.pt, else ``<folder>/report_<stem>``."""
    if checkpoint.stem in ("best", "last"):
        return checkpoint.parent / "report"
    return checkpoint.parent / f"report_{checkpoint.stem}"


def default_baselines(checkpoint: Path) -> Path | None:
    """baselines.json beside the checkpoint (or in the run folder above ``finetune/``)."""
    folders = [checkpoint.parent]
    if checkpoint.parent.name == "finetune":
        folders.append(checkpoint.parent.parent)
    return next((f / "baselines.json" for f in folders if (f / "baselines.json").is_file()), None)


def run_eval(
    checkpoint: str | Path,
    *,
    split: str = "test",
    out: str | Path | None = None,
    baselines: str | Path | None = None,
    tta: bool = False,
    overrides: list[str] | tuple = (),
    num_samples: int = 4,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` (a role train/val/test or a split name); write
    ``metrics.json``, ``report.md`` and ``report.html`` into ``out``; return metrics.json's
    content ``{"split", "checkpoint", "metrics", "delta_m"?}``."""
    from cvmtl.data.formats import load_dataset_info
    from cvmtl.data.loader import build_loaders
    from cvmtl.engine.checkpoint import load_checkpoint
    from cvmtl.metrics import delta_m
    from cvmtl.vis.report import write_report
    from cvmtl.workflows.eval_stats import evaluate_with_stats, nan_to_none

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(ckpt, overrides)
    if tta:
        cfg.eval.tta = True
    role = split if split in ROLES else "test"
    if split not in ROLES:
        cfg.data.test_split = split  # any split name of the dataset, evaluated as "test"
    split_name = getattr(cfg.data, f"{role}_split")

    device = resolve_device(cfg.train.device, "train.device")
    cfg = resolve_precision(cfg, device)  # auto -> this machine's (a checkpoint may travel)
    log.info("eval precision: %s", describe_precision(cfg, device))
    model = build_from_weights(cfg, ckpt["model"], device, source=str(checkpoint))
    loader = build_loaders(cfg, False, splits=[role])[role]
    results, stats, samples = evaluate_with_stats(
        model, loader, cfg.tasks, cfg, device, num_samples=num_samples
    )

    base_path = Path(baselines) if baselines else default_baselines(checkpoint)
    base = _split_baselines(base_path, split_name, cfg.tasks)
    metrics: dict[str, Any] = {
        "split": split_name,
        "checkpoint": str(checkpoint),
        "metrics": nan_to_none(results),
    }
    if base is not None:
        try:
            metrics["delta_m"] = delta_m(results, base, cfg.tasks)
        except ValueError as err:  # e.g. a baseline metric of 0: relative change undefined
            log.warning("no delta_m in %s: %s", base_path, err)
    out_dir = Path(out) if out else default_out(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    info = load_dataset_info(cfg.data.root, cfg.data.format, cfg.data.num_classes)
    write_report(out_dir, metrics, cfg=cfg, stats=stats, samples=samples, baselines=base, info=info)
    return metrics


def _split_baselines(path: Path | None, split: str, tasks: list[str]) -> dict | None:
    """``{task: {metric: v}}`` of ``split`` when ``path`` has every task of it, else None."""
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"--baselines: no such file {path}")
    data = json.loads(path.read_text())
    per_split = data.get(split)
    if not isinstance(per_split, dict) or any(t not in per_split for t in tasks):
        return None
    return per_split
