"""Exact edge matching (BSDS / SEISM style): thinning and one-to-one pixel correspondences.

BSDS500's ``correspondPixels`` (used by SEISM, which Multi-Task-Learning-PyTorch runs for its
PASCAL-Context odsF, and ported by the ``pyedgeeval`` package) pairs predicted and ground-truth
edge pixels one to one, each pair at most ``max_dist * image diagonal`` apart, by a min-cost
assignment whose outlier cost (100 x the distance) makes it keep as many pairs as it can. Only
the pair counts enter precision / recall, so here they come from an exact maximum bipartite
matching (Hopcroft-Karp, scipy) on the pairs within the tolerance. The predictions are thinned to
one pixel first at every threshold (MATLAB ``bwmorph(.., 'thin', Inf)``), as BSDS and pyedgeeval
do by default.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

# neighbour k of a pixel (x1..x8 of Lam, Lee & Suen 1992): E, NE, N, NW, W, SW, S, SE
_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


@lru_cache(maxsize=1)
def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """Which 8-neighbourhoods (bit k = neighbour x_{k+1}) delete the centre pixel in the first
    and the second sub-iteration of MATLAB's ``bwmorph thin`` (conditions G1, G2, G3 / G3')."""
    first, second = np.zeros(256, bool), np.zeros(256, bool)
    for code in range(256):
        x = [bool(code >> k & 1) for k in range(8)] + [bool(code & 1)]  # x[8] = x1 again
        crossings = sum(not x[2 * i] and (x[2 * i + 1] or x[2 * i + 2]) for i in range(4))
        n1 = sum(x[2 * k] or x[2 * k + 1] for k in range(4))
        n2 = sum(x[2 * k + 1] or x[2 * k + 2] for k in range(4))
        if crossings == 1 and 2 <= min(n1, n2) <= 3:
            first[code] = not ((x[1] or x[2] or not x[7]) and x[0])
            second[code] = not ((x[5] or x[6] or not x[3]) and x[4])
    return first, second


def _neighbour_codes(padded: np.ndarray) -> np.ndarray:
    """The 8-neighbourhood code of every inner pixel of a zero-bordered uint8 0 / 1 map."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    code = np.zeros((h, w), np.uint8)
    for k, (dy, dx) in enumerate(_OFFSETS):
        code |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] << k
    return code


def thin(mask: np.ndarray) -> np.ndarray:
    """Morphological thinning of a binary HxW map down to one-pixel-wide curves (MATLAB
    ``bwmorph(mask, 'thin', Inf)``, the same rules as ``skimage.morphology.thin``)."""
    mask = np.asarray(mask, bool)
    out = np.zeros_like(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return out
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    padded = np.pad(mask[box].view(np.uint8), 1)  # work on the bounding box, zero-bordered
    inner = padded[1:-1, 1:-1]
    first, second = _thin_luts()
    changed = True
    while changed:
        changed = False
        for lut in (first, second):
            delete = lut[_neighbour_codes(padded)] & (inner > 0)
            if delete.any():
                inner[delete] = 0
                changed = True
    out[box] = inner > 0
    return out


class Matcher:
    """One-to-one matching of predicted edge maps against one ground-truth map ``gt`` (HxW
    bool): the candidate pairs (pixels of ``where`` within ``radius`` pixels of a ground-truth
    pixel) are found once, so each threshold only selects its rows and matches."""

    def __init__(self, gt: np.ndarray, where: np.ndarray, radius: float) -> None:
        g, c = np.argwhere(gt), np.argwhere(where)
        self.row_of = np.full(gt.shape, -1, np.int64)
        self.row_of[tuple(c.T)] = np.arange(len(c))
        self.pairs = None
        if len(g) and len(c):
            coo = cKDTree(c).sparse_distance_matrix(cKDTree(g), radius, output_type="coo_matrix")
            ones = np.ones(coo.nnz, np.int8)
            self.pairs = csr_matrix((ones, (coo.row, coo.col)), (len(c), len(g)))

    def count(self, pred: np.ndarray) -> int:
        """Pairs in a maximum matching of the predicted pixels (HxW bool, inside ``where``)."""
        if self.pairs is None:
            return 0
        rows = self.row_of[pred]
        graph = self.pairs[rows[rows >= 0]]
        if graph.nnz == 0:
            return 0
        return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def match_count(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """The number of one-to-one pairs (predicted pixel, ground-truth pixel) at most ``radius``
    pixels apart in a maximum matching; both maps are HxW bool."""
    return Matcher(gt, pred, radius).count(pred)


def exact_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    thresholds: np.ndarray,
    radius: float,
    apply_thin: bool = True,
) -> np.ndarray:
    """``[4, T]`` float64 (matched GT, GT, matched predictions, predictions) of one image at each
    threshold; ``prob`` HxW probabilities (NaN: a non-finite prediction, an unmatched positive at
    every threshold), ``gt`` / ``valid`` HxW bool (``gt`` inside ``valid``)."""
    bad = valid & np.isnan(prob)
    scored = valid & ~bad
    matcher = Matcher(gt, scored & (prob >= thresholds.min()), radius)
    out = np.zeros((4, len(thresholds)), np.float64)
    out[1] = gt.sum()
    for j, t in enumerate(thresholds):
        edges = scored & (prob >= t)
        if apply_thin:
            edges = thin(edges)
        out[0, j] = out[2, j] = matcher.count(edges)
        out[3, j] = edges.sum() + bad.sum()
    return out
