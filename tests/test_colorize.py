"""Colorizers on known inputs."""

import numpy as np
import pytest
import torch

from cvmtl.tasks.colorize import (
    colorize_angle_error,
    colorize_depth,
    colorize_depth_error,
    colorize_normal,
    colorize_seg,
    default_palette,
)


def test_seg_palette_exact_and_ignore_black():
    palette = [[10, 20, 30], [200, 100, 0], [1, 2, 3]]
    labels = np.array([[0, 1], [2, 255]])
    out = colorize_seg(labels, palette)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [200, 100, 0]
    assert out[1, 0].tolist() == [1, 2, 3] and out[1, 1].tolist() == [0, 0, 0]
    assert np.array_equal(colorize_seg(torch.from_numpy(labels)[None], palette), out)
    with pytest.raises(ValueError, match="label 3"):
        colorize_seg(np.array([[3]]), palette)


def test_default_palette_distinct_not_black():
    pal = default_palette(40)
    assert len({tuple(c) for c in pal}) == 40
    assert all(any(c) for c in pal)
    assert colorize_seg(np.array([[0, 12]]))[0, 1].tolist() == pal[12]


def test_normal_colours():
    n = np.zeros((1, 3, 3), np.float32)
    n[0, 0] = [0, 0, -1]
    n[0, 1] = [1, 0, 0]
    out = colorize_normal(n)  # HxWx3 numpy
    assert out[0, 0, 0] in (127, 128) and out[0, 0, 1] in (127, 128) and out[0, 0, 2] == 0
    assert out[0, 1].tolist()[0] == 255 and out[0, 2].tolist() == [0, 0, 0]  # all-zero: black
    chw = torch.from_numpy(n).permute(2, 0, 1)
    assert np.array_equal(colorize_normal(chw), out)


def test_depth_invalid_black_and_shared_range():
    d1 = np.array([[0.0, 1.0, 3.0]], np.float32)
    d2 = np.array([[3.0, 5.0, 9.0]], np.float32)
    a = colorize_depth(d1, vmin=1.0, vmax=5.0)
    b = colorize_depth(torch.from_numpy(d2)[None], vmin=1.0, vmax=5.0, cmap="magma")
    c = colorize_depth(d2, vmin=1.0, vmax=5.0, cmap="magma")
    assert a[0, 0].tolist() == [0, 0, 0]
    assert np.array_equal(b, c)
    assert c[0, 1].tolist() == c[0, 2].tolist()  # 9 clipped to vmax
    assert not np.array_equal(colorize_depth(d2)[0, 1], c[0, 1])  # own range differs
    with pytest.raises(ValueError, match="colormap"):
        colorize_depth(d1, cmap="nope")


def test_error_maps():
    g = np.array([[1.0, 2.0, 0.0]], np.float32)
    p = np.array([[1.0, 4.0, 3.0]], np.float32)
    e = colorize_depth_error(p, g, vmax=2.0)
    assert e[0, 2].tolist() == [0, 0, 0]
    assert e[0, 0].tolist() == colorize_depth_error(g, g, vmax=2.0)[0, 0].tolist()
    n = torch.zeros(3, 1, 3)
    n[2] = 1
    n[:, :, 2] = 0
    m = n.clone()
    m[:, 0, 1] = torch.tensor([1.0, 0.0, 0.0])  # 90 degrees, clipped to vmax
    ang = colorize_angle_error(m, n, vmax_deg=45)
    assert ang[0, 2].tolist() == [0, 0, 0]
    assert ang[0, 1].tolist() != ang[0, 0].tolist()
    assert ang.dtype == np.uint8 and ang.shape == (1, 3, 3)
