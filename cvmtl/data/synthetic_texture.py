"""Materials and procedural textures for the synthetic renderer.

Colours are drawn from colour *groups* shared by all classes (only the mixing weights differ per
class), so that colour alone does not give the class away: a wall, a ceiling and a cabinet can be
the same white, a table can look like the floor.
"""

from __future__ import annotations

import colorsys
from bisect import bisect
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

# Colour groups: (hue range, saturation range, value range).
GROUPS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "light": ((0.0, 1.0), (0.0, 0.14), (0.62, 0.95)),
    "dark": ((0.0, 1.0), (0.0, 0.2), (0.08, 0.45)),
    "wood": ((0.04, 0.11), (0.35, 0.75), (0.25, 0.8)),
    "warm": ((0.02, 0.16), (0.15, 0.5), (0.45, 0.9)),
    "color": ((0.0, 1.0), (0.3, 0.8), (0.3, 0.9)),
}
_G = list(GROUPS)

# Per-class weights over GROUPS (light, dark, wood, warm, color); every class can take every group.
CLASS_GROUPS: dict[str, tuple[float, ...]] = {
    "bed": (0.3, 0.1, 0.05, 0.2, 0.35),
    "books": (0.15, 0.15, 0.05, 0.1, 0.55),
    "ceiling": (0.7, 0.05, 0.05, 0.15, 0.05),
    "chair": (0.15, 0.25, 0.3, 0.1, 0.2),
    "floor": (0.15, 0.15, 0.4, 0.15, 0.15),
    "furniture": (0.3, 0.15, 0.3, 0.1, 0.15),
    "objects": (0.2, 0.2, 0.05, 0.1, 0.45),
    "picture": (0.2, 0.15, 0.1, 0.15, 0.4),
    "sofa": (0.2, 0.2, 0.05, 0.2, 0.35),
    "table": (0.2, 0.15, 0.4, 0.1, 0.15),
    "tv": (0.1, 0.8, 0.0, 0.0, 0.1),
    "wall": (0.5, 0.05, 0.05, 0.2, 0.2),
    "window": (0.5, 0.1, 0.1, 0.1, 0.2),
}

# Texture kinds and per-class weights (plain, noise, stripes, checker, wood, tiles, speckle).
KINDS = ("plain", "noise", "stripes", "checker", "wood", "tiles", "speckle")
CLASS_KINDS: dict[str, tuple[float, ...]] = {
    "floor": (0.15, 0.15, 0.05, 0.1, 0.3, 0.15, 0.1),
    "wall": (0.4, 0.2, 0.15, 0.05, 0.05, 0.05, 0.1),
    "ceiling": (0.5, 0.2, 0.05, 0.0, 0.05, 0.1, 0.1),
    "table": (0.25, 0.15, 0.05, 0.05, 0.35, 0.05, 0.1),
    "furniture": (0.3, 0.15, 0.1, 0.05, 0.25, 0.05, 0.1),
    "chair": (0.3, 0.2, 0.1, 0.05, 0.2, 0.0, 0.15),
}
DEFAULT_KINDS = (0.35, 0.2, 0.15, 0.1, 0.05, 0.05, 0.1)


@dataclass
class Material:
    """Procedural surface: a pattern mixing two colours; ``special`` adds a class-specific layer."""

    kind: str
    c1: np.ndarray
    c2: np.ndarray
    scale: float = 0.3  # pattern period in metres
    angle: float = 0.0
    amp: float = 0.1  # low-frequency brightness variation
    special: str = ""  # "", "picture", "tv", "window", "blinds", "drawers"
    extra: dict = field(default_factory=dict)


def _pick(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    # Plain Python: numpy calls on 5-element arrays cost more than they compute, and a scene
    # samples ~100 materials.
    cum = list(accumulate(weights))
    return min(bisect(cum, rng.random() * cum[-1]), len(cum) - 1)


def sample_colour(rng: np.random.Generator, cls: str) -> np.ndarray:
    """An RGB colour in [0, 1] from the class's mix of shared colour groups."""
    g = GROUPS[_G[_pick(rng, CLASS_GROUPS.get(cls, (0.2,) * 5))]]
    h, s, v = (lo + (hi - lo) * x for (lo, hi), x in zip(g, rng.random(3).tolist()))
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def sample_material(rng: np.random.Generator, cls: str, special: str = "") -> Material:
    """A random material for a surface of class ``cls``."""
    kind = KINDS[_pick(rng, CLASS_KINDS.get(cls, DEFAULT_KINDS))]
    c1 = sample_colour(rng, cls)
    # Second colour: usually a shade of the first, sometimes a contrasting one.
    c2 = c1 * rng.uniform(0.6, 0.9) if rng.random() < 0.7 else sample_colour(rng, cls)
    scale, angle, amp = np.array([0.05, 0.0, 0.03]) + np.array([0.55, np.pi, 0.22]) * rng.random(3)
    m = Material(kind, c1, c2, float(scale), float(angle), float(amp), special)
    if special == "picture":
        m.extra["colours"] = np.stack([sample_colour(rng, "picture") for _ in range(3)])
        m.extra["frame"] = float(rng.uniform(0.03, 0.12))
        m.extra["freq"] = float(rng.uniform(2.0, 8.0))
    elif special == "tv":
        m.c1 = rng.uniform(0.02, 0.12) * np.ones(3) + rng.uniform(0, 0.04, 3)
        m.c2 = sample_colour(rng, "tv")
        m.extra["on"] = bool(rng.random() < 0.3)
        m.extra["colours"] = np.stack([sample_colour(rng, "picture") for _ in range(3)])
    elif special == "window":
        m.c1 = sample_colour(rng, "window")  # frame
        sky = np.array(colorsys.hsv_to_rgb(rng.uniform(0.5, 0.65), rng.uniform(0, 0.4), 1.0))
        m.c2 = sky * rng.uniform(0.8, 1.6)  # bright outside view: emissive, may saturate
        m.extra["ground"] = sample_colour(rng, "objects") * rng.uniform(0.6, 1.2)
        m.extra["horizon"] = float(rng.uniform(-0.6, 0.3))
        m.extra["mullions"] = int(rng.integers(0, 3))
    return m


def value_noise(u: np.ndarray, v: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1] from a random lattice (a power-of-two square table,
    tiled)."""
    n = table.shape[0]
    flat = table.ravel()
    fu, fv = np.floor(u), np.floor(v)
    iu, iv = fu.astype(np.int32) & (n - 1), fv.astype(np.int32) & (n - 1)  # wrap: n = 2^k
    su, sv = u - fu, v - fv
    su, sv = su * su * (3 - 2 * su), sv * sv * (3 - 2 * sv)
    i00 = iu * n + iv
    i10 = ((iu + 1) & (n - 1)) * n + iv
    dv = ((iv + 1) & (n - 1)) - iv
    a = flat.take(i00) * (1 - su) + flat.take(i10) * su
    b = flat.take(i00 + dv) * (1 - su) + flat.take(i10 + dv) * su
    return a * (1 - sv) + b * sv


def fractal(u: np.ndarray, v: np.ndarray, table: np.ndarray, octaves: int = 2) -> np.ndarray:
    out = np.zeros_like(u)
    amp, tot = 1.0, 0.0
    for k in range(octaves):
        out += amp * value_noise(u * 2**k + 17 * k, v * 2**k + 31 * k, table)
        tot += amp
        amp *= 0.5
    return out / tot


def _mix(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[:, None]
    return np.atleast_2d(c1) * (1 - t) + np.atleast_2d(c2) * t


def _pattern(kind: str, r: np.ndarray, q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] of the second colour for texture ``kind`` at pattern coordinates (r, q)."""
    if kind == "plain":
        return np.zeros_like(r)
    if kind == "noise":
        return fractal(r * 2, q * 2, table)
    if kind == "stripes":
        return (np.sin(2 * np.pi * r) > 0.3).astype(float)
    if kind == "checker":
        return ((np.floor(r) + np.floor(q)) % 2).astype(float)
    if kind == "wood":
        plank = np.floor(q * 1.5)
        grain = np.sin(6 * r + 5 * value_noise(r * 0.7, q * 6 + plank * 13, table))
        return 0.35 * (grain > 0.5) + 0.65 * value_noise(plank * 7.3, plank * 3.1, table)
    if kind == "tiles":
        fr, fq = r - np.floor(r), q - np.floor(q)
        grout = (np.minimum(np.minimum(fr, 1 - fr), np.minimum(fq, 1 - fq)) < 0.04).astype(float)
        return np.maximum(grout, 0.3 * value_noise(np.floor(r) * 5.1, np.floor(q) * 2.7, table))
    return (value_noise(r * 9, q * 9, table) > 0.62).astype(float)  # speckle


def _paint_picture(
    m: Material, s: np.ndarray, t: np.ndarray, table: np.ndarray, albedo: np.ndarray
) -> None:
    """A blotchy three-colour image inside the picture's frame (in place)."""
    inner = np.maximum(np.abs(s), np.abs(t)) < 1 - m.extra["frame"]
    f = m.extra["freq"]
    n1 = fractal(s * f + 3, t * f + 5, table)
    n2 = fractal(s * f + 11, t * f + 2, table)
    cols = m.extra["colours"]
    img = _mix(_mix(cols[0], cols[1], (n1 > 0.5).astype(float)), cols[2], (n2 > 0.55) * 1.0)
    albedo[inner] = img[inner]


def _paint_tv(
    m: Material,
    s: np.ndarray,
    t: np.ndarray,
    table: np.ndarray,
    albedo: np.ndarray,
    emis: np.ndarray,
) -> None:
    """A dark screen with a diagonal sheen; a TV that is on also emits a picture (in place)."""
    inner = (np.abs(s) < 0.93) & (np.abs(t) < 0.9)
    screen = _mix(m.c1, m.c1 * 1.8, np.clip(0.5 - 0.4 * (s + t), 0, 1))
    albedo[inner] = screen[inner]
    if m.extra["on"]:
        cols = m.extra["colours"]
        n1 = fractal(s * 4 + 1, t * 4 + 9, table)
        glow = _mix(cols[0], cols[1], (n1 > 0.5).astype(float)) * 0.8
        emis[inner] = glow[inner]


def _paint_window(
    m: Material,
    s: np.ndarray,
    t: np.ndarray,
    table: np.ndarray,
    albedo: np.ndarray,
    emis: np.ndarray,
) -> np.ndarray:
    """Frame and mullions; the panes show an emissive sky over ground. Returns the pane mask."""
    frame = np.maximum(np.abs(s), np.abs(t)) > 0.9
    nm = m.extra["mullions"]
    if nm >= 1:
        frame |= np.abs(s) < 0.04
    if nm >= 2:
        frame |= np.abs(t) < 0.04
    pane = ~frame
    hz = m.extra["horizon"] + 0.15 * (fractal(s * 3 + 2, s + 4, table) - 0.5)
    outside = _mix(m.c2, m.extra["ground"], (t < hz).astype(float))
    outside *= (0.85 + 0.3 * fractal(s * 6, t * 6, table))[:, None]
    albedo[pane] = 0.0
    emis[pane] = outside[pane]
    return pane


def shade_texture(
    m: Material, u: np.ndarray, v: np.ndarray, s: np.ndarray, t: np.ndarray, table: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo [N,3], emission [N,3] and a glass mask [N] for surface points.

    ``u, v`` are metric surface coordinates, ``s, t`` face coordinates in [-1, 1] (t up where the
    face is vertical), used by pictures, TVs and windows.
    """
    if len(u) < 48 and not m.special:  # a few pixels: the pattern would not show anyway
        z = np.zeros((len(u), 3), np.float32)
        return z + m.c1, z, np.zeros(len(u), bool)
    ca, sa = np.cos(m.angle), np.sin(m.angle)
    r = (u * ca + v * sa) / m.scale
    q = (-u * sa + v * ca) / m.scale
    albedo = _mix(m.c1, m.c2, _pattern(m.kind, r, q, table))
    low = value_noise(u * 1.3 + 7, v * 1.3 + 3, table)
    albedo = albedo * (1 + m.amp * (low[:, None] - 0.5) * 2)
    emis = np.zeros_like(albedo)
    glass = np.zeros(u.shape, bool)
    if m.special == "picture":
        _paint_picture(m, s, t, table, albedo)
    elif m.special == "tv":
        _paint_tv(m, s, t, table, albedo, emis)
    elif m.special == "window":
        glass = _paint_window(m, s, t, table, albedo, emis)
    return albedo, emis, glass
