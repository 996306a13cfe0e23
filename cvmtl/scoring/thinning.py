"""Thinning of binary maps to one-pixel-wide lines (Guo & Hall 1989, "Parallel thinning with
two-subiteration algorithms", Comm. ACM 32(3)): the algorithm of ``skimage.morphology.thin``,
which Multi-Task-Learning-PyTorch applies to PASCAL-Context edges. Written here from the paper's
conditions so that the readers need no scikit-image; ``tests/test_formats_pascal.py`` compares
the two where scikit-image is installed.
"""

from __future__ import annotations

import cv2
import numpy as np

# Neighbour x1..x8 of the paper (counter-clockwise from east) is bit 0..7 of the 3x3 correlation.
_KERNEL = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], dtype=np.float32)


def _luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two subiterations, indexed by the 8-neighbour code."""
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    for code in range(256):
        x = [bool(code >> i & 1) for i in range(8)]
        # G1: exactly one 4-connected "crossing" (the pixel is a simple boundary point).
        crossings = sum(not x[i] and (x[i + 1] or x[(i + 2) % 8]) for i in (0, 2, 4, 6))
        # G2: 2 <= min(n1, n2) <= 3 (not an end point, not an interior point).
        n1 = sum(x[i] or x[i + 1] for i in (0, 2, 4, 6))
        n2 = sum(x[i + 1] or x[(i + 2) % 8] for i in (0, 2, 4, 6))
        g12 = crossings == 1 and 2 <= min(n1, n2) <= 3
        # G3 / G3': remove south-east boundary points first, then north-west ones.
        g3 = not ((x[1] or x[2] or not x[7]) and x[0])
        g3p = not ((x[5] or x[6] or not x[3]) and x[4])
        first[code] = g12 and g3
        second[code] = g12 and g3p
    return first, second


_FIRST, _SECOND = _luts()


def thin(mask: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """A bool HxW map of ``mask`` (nonzero = foreground) thinned to one-pixel-wide lines;
    pixels outside the image count as background."""
    skel = (np.asarray(mask) != 0).astype(np.uint8)
    if skel.ndim != 2:
        raise ValueError(f"thin: expected a 2-D map, got shape {skel.shape}")
    count, done = int(skel.sum()), 0
    while max_iter is None or done < max_iter:
        for table in (_FIRST, _SECOND):
            # cv2's filter2D is a correlation, ~4x faster than scipy.ndimage.correlate here
            code = cv2.filter2D(skel, cv2.CV_16S, _KERNEL, borderType=cv2.BORDER_CONSTANT)
            skel[table[code] & (skel == 1)] = 0
        done += 1
        new = int(skel.sum())
        if new == count:
            break
        count = new
    return skel.astype(bool)
