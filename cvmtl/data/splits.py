"""Split bookkeeping that needs no format reader: the seeded ``val_fraction`` carve.

Kept apart from ``dataset.py`` so that ``nyuv2.py`` (the .mat conversion, which also carves) and
the readers in ``formats.py`` (which import ``nyuv2.py``'s class tables) never import each other:
the imports of ``cvmtl.data`` only go one way (``tests/test_data_imports.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvmtl.data.io import DataError


def carve_ids(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``ids`` into (kept, carved) with ``round(fraction * n)`` (at least 1) carved ids,
    chosen by a seeded permutation; both keep the input order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    if len(ids) < 2:
        raise DataError(f"cannot carve a validation split out of {len(ids)} id(s)")
    n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    chosen = set(np.random.default_rng(seed).permutation(len(ids))[:n_val].tolist())
    kept = [s for i, s in enumerate(ids) if i not in chosen]
    carved = [s for i, s in enumerate(ids) if i in chosen]
    return kept, carved
