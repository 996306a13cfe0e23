"""Draw prediction panels and a contact sheet for samples of a split (tools/visualize.py, demo)."""

from __future__ import annotations

import math
import re
from pathlib import Path

ROLES = ("train", "val", "test")


def write_panels(
    checkpoint: str | Path,
    split: str = "val",
    num: int = 8,
    out: str | Path | None = None,
    *,
    device: str = "auto",
    amp: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = False,
) -> tuple[Path, int]:
    """One panel per sample (image | ground truth, prediction, error per task) for ``num``
    samples of ``split`` plus ``{split}_contact_sheet.png``; returns (folder, panel count).

    ``out`` defaults to ``vis/`` beside the checkpoint (the run folder). ``split`` is a role
    (train / val / test) or any split name of the dataset. ``amp``: default the checkpoint's
    ``train.amp`` (``auto`` resolves for the device, :mod:`cvmtl.precision`).
    """
    from tqdm import tqdm

    from cvmtl.data.loader import build_loaders
    from cvmtl.engine.evaluator import evaluate
    from cvmtl.engine.restore import load_model
    from cvmtl.precision import resolve_device
    from cvmtl.predictor import class_info
    from cvmtl.vis.panels import contact_sheet, sample_panel, save_figure

    dev = resolve_device(device)
    model, cfg = load_model(checkpoint, overrides, dev)
    role = split if split in ROLES else "test"
    if role != split:  # any other split name of the dataset: read it as the test role
        cfg.data.test_split = split
    loader = build_loaders(cfg, splits=[role])[role]
    samples: list[dict] = []
    evaluate(
        model, loader, cfg.tasks, cfg, device=dev, amp=amp, progress=False,
        max_batches=math.ceil(num / loader.batch_size), collect=num, samples=samples,
    )  # fmt: skip
    ckpt = Path(checkpoint)
    folder = Path(out) if out else (ckpt if ckpt.is_dir() else ckpt.parent) / "vis"
    classes, palette = class_info(cfg)
    mean, std = cfg.data.mean, cfg.data.std
    for i, s in enumerate(tqdm(samples, desc="panels", unit="img", disable=not progress)):
        sid = str((s.get("meta") or {}).get("id", i))
        fig = sample_panel(s, classes, palette, mean, std, title=f"{split} / {sid}")
        safe = re.sub(r"[^\w.-]", "_", sid)
        save_figure(fig, folder / f"{split}_{i:03d}_{safe}.png")
    contact_sheet(samples, folder / f"{split}_contact_sheet.png", palette, mean, std)
    return folder, len(samples)
