"""``edge``: thin object boundaries (PASCAL-Context / NYUD edges), 1-channel logits.

Loss: Multi-Task-Learning-PyTorch's weighted BCE, ``loss.edge_pos_weight`` (0.95) on edge pixels
and 1 - that on the rest (:func:`cvmtl.loss_terms.weighted_bce_terms`). Metric:
:class:`cvmtl.scoring.edge.EdgeMetric` (``odsf`` counts in delta_m), configured by these
attributes of the eval config (absent ones take the defaults):

- ``edge_max_dist`` (0.0075): matching tolerance, a fraction of the image diagonal;
- ``edge_exact`` (False): the one-to-one BSDS matching with thinning (for the test split and
  tools/eval.py when set; validation always uses the approximate matcher) instead
  of the fast approximate matcher (validation); the results carry ``exact`` 0 / 1;
- ``edge_thresholds`` (99): probability thresholds 1/(n+1), ..., n/(n+1);
- ``edge_thin`` (True): thin the predictions at each threshold (exact matcher only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cvmtl.loss_terms import weighted_bce_terms
from cvmtl.scoring.edge import THRESHOLDS, EdgeMetric
from cvmtl.tasks.binary import binary_task, positives_at_half
from cvmtl.tasks.registry import register
from cvmtl.tasks.spec import THIN_BINARY


def edge_metric(num_classes: int, ev: Any) -> EdgeMetric:
    """The edge metric configured by the eval config ``ev`` (see the module docstring)."""
    return EdgeMetric(
        max_dist=getattr(ev, "edge_max_dist", 0.0075),
        exact=bool(getattr(ev, "edge_exact", False)),
        num_thresholds=int(getattr(ev, "edge_thresholds", THRESHOLDS)),
        thin=bool(getattr(ev, "edge_thin", True)),
    )


def edge_pixels(pred: np.ndarray, target: np.ndarray) -> str | None:
    p, t = positives_at_half(pred, target)
    if t.size == 0:
        return None
    return f"edge px {int(p.sum())} (gt {int(t.sum())})"


EDGE = register(
    binary_task(
        name="edge",
        title="edges",
        label=THIN_BINARY,
        loss=lambda pred, target, labeled, cfg: weighted_bce_terms(
            pred, target, labeled, cfg.loss.edge_pos_weight
        ),
        metric=edge_metric,
        metrics={"odsf": True, "oisf": True, "ap": True},
        delta_metrics={"odsf": True},
        summary=edge_pixels,
    )
)
