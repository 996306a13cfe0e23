"""Published numbers of other projects, shown beside ours in reports (always marked as theirs).

Each table names its columns as (task, metric, label); a dataset's table is chosen by
:func:`published_tables`.
"""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any) -> str:
    """A metric value for a table: 4 significant decimals for small values, else 2."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    v = float(value)
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"


# Published 13-class NYUv2 numbers (LibMTL, DeepLabV3+ dilated ResNet-50, 288x384, one run each).
NYU13_COLUMNS = [
    ("seg", "miou", "mIoU"), ("seg", "pixel_acc", "pixAcc"), ("depth", "abs_err", "abs err"),
    ("depth", "rel_err", "rel err"), ("normal", "mean", "normal mean"),
    ("normal", "median", "median"), ("normal", "a11", "<11.25"), ("normal", "a22", "<22.5"),
    ("normal", "a30", "<30"),
]  # fmt: skip
NYU13_PUBLISHED = [
    ("LibMTL EW", [54.10, 75.78, 0.3771, 0.1596, 23.53, 17.20, 34.55, 60.75, 72.06]),
    ("LibMTL UW", [54.02, 75.66, 0.3838, 0.1573, 23.45, 16.86, 35.43, 61.32, 72.33]),
    ("LibMTL GLS", [54.46, 76.01, 0.3793, 0.1566, 22.73, 16.16, 36.76, 62.94, 73.68]),
    ("LibMTL CAGrad", [53.77, 75.80, 0.3836, 0.1584, 22.53, 15.86, 37.40, 63.58, 74.20]),
    ("LibMTL Nash-MTL", [53.38, 75.01, 0.3814, 0.1570, 22.61, 15.87, 37.30, 63.68, 74.28]),
    ("LibMTL MTAN + EW", [54.38, 75.84, 0.3764, 0.1561, 22.98, 16.36, 36.35, 62.44, 73.27]),
]
NYU13_NOTE = (
    "Published figures of other projects, not produced by cvmtl: LibMTL, 13-class NYUv2, "
    "288x384, DeepLabV3+ dilated ResNet-50, hard sharing, one run each. Auto-Lambda (ResNet-50 "
    "from scratch): single-task 43.37 mIoU / 0.5224 abs err / 22.40 normal mean; best "
    "multi-task (Auto-Lambda + CAGrad) 48.26 / 0.3982 / 22.81, delta_m +11.07%."
)
NYU40_COLUMNS = [("seg", "miou", "mIoU"), ("depth", "rmse", "rmse"), ("normal", "mean", "mean")]
NYU40_PUBLISHED = [
    ("InvPT (ViT-L)", [53.56, 0.5183, 19.04]),
    ("TaskPrompter (ViT-L)", [55.30, 0.5062, 18.58]),
    ("MLoRE (ViT-L)", [55.96, 0.5076, 18.33]),
]
NYU40_NOTE = (
    "Published figures of other projects, not produced by cvmtl: 40-class NYUD-v2, ViT-L "
    "backbones (TaskPrompter reports 55.30-55.90 mIoU)."
)

# PASCAL-Context, 5 tasks (InvPT README, "Pre-trained InvPT models" table: paper numbers).
PASCAL_COLUMNS = [
    ("seg", "miou", "mIoU"), ("parts", "miou", "parts mIoU"), ("saliency", "maxf", "sal maxF"),
    ("normal", "mean", "normal mean"), ("edge", "odsf", "edge odsF"),
]  # fmt: skip
PASCAL_PUBLISHED = [
    ("InvPT (ViT-L)", [79.03, 67.61, 84.81, 14.15, 73.00]),
    ("ATRC", [67.67, 62.93, 82.29, 14.24, 72.42]),
]
PASCAL_NOTE = (
    "Published figures of other projects, not produced by cvmtl: PASCAL-Context (PASCAL_MT), "
    "as listed in InvPT's README (github.com/prismformore/Multi-Task-Transformer, "
    "InvPT/README.md: InvPT paper numbers and ATRC's); their edge odsF is SEISM's (MATLAB, "
    "maxDist 0.0075)."
)
# Cityscapes, 7 classes, 128x256 (mtan's copy): only the figures we could cite.
CITYSCAPES_COLUMNS = [("seg", "miou", "mIoU"), ("disparity", "abs_err", "disp abs err")]
CITYSCAPES_PUBLISHED = [("Nash-MTL", [75.41, 0.0129])]
CITYSCAPES_NOTE = (
    "Published figures of other projects, not produced by cvmtl: Nash-MTL (Navon et al., ICML "
    "2022) on mtan's 7-class 128x256 Cityscapes, as indexed by paperswithcode.com (mIoU) and "
    "wizwand.com (abs err); their pixel acc and rel err are not cited here."
)


def dataset_tables(metrics: dict, num_classes: int, data_format: str | None) -> list:
    """The PASCAL-Context / Cityscapes tables (``[]`` for other datasets)."""
    if data_format == "pascal_mt":
        columns, published, note = PASCAL_COLUMNS, PASCAL_PUBLISHED, PASCAL_NOTE
    elif data_format == "cityscapes_npy" and num_classes == 7:
        columns, published, note = CITYSCAPES_COLUMNS, CITYSCAPES_PUBLISHED, CITYSCAPES_NOTE
    else:
        return []
    return [(note, ["model", *[c[2] for c in columns]], table_rows(metrics, columns, published))]


def is_nyu(data_format: str, dataset_name: str) -> bool:
    """Whether a dataset is NYUv2 / NYUD-v2 (by format or dataset.yaml name)."""
    return data_format in ("nyuv2_npy", "nyud_mt") or "nyu" in str(dataset_name).lower()


def published_tables(
    metrics: dict, num_classes: int, data_format: str | None = None, dataset_name: str = ""
) -> list[tuple[str, list[str], list[list]]]:
    """(note, header, rows) tables of published numbers with our row first, for the dataset
    (``data_format`` + ``dataset_name`` + ``num_classes``; ``data_format`` None: NYUv2 tables
    by class count alone). ``[]`` for a dataset without published numbers."""
    if data_format is not None and not is_nyu(data_format, dataset_name):
        return dataset_tables(metrics, num_classes, data_format)
    if num_classes == 13:
        columns, published, note = NYU13_COLUMNS, NYU13_PUBLISHED, NYU13_NOTE
    elif num_classes == 40:
        columns, published, note = NYU40_COLUMNS, NYU40_PUBLISHED, NYU40_NOTE
    else:
        return []
    return [(note, ["model", *[c[2] for c in columns]], table_rows(metrics, columns, published))]


def table_rows(metrics: dict, columns: list, published: list) -> list[list]:
    """Our row ("cvmtl (this run)") and one per published entry, marked as published."""
    ours = [fmt(metrics.get(t, {}).get(m)) for t, m, _ in columns]
    rows = [["cvmtl (this run)", *ours]]
    rows += [[f"{name} (published)", *[fmt(v) for v in values]] for name, values in published]
    return rows
