"""Vectorized numpy ray casting and shading of a synthetic scene: RGB, labels, depth, normals."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from cvmtl.data.synthetic_intersect import intersect
from cvmtl.data.synthetic_scene import C, Scene
from cvmtl.data.synthetic_texture import shade_texture

NYU_SIZE = (480, 640)
NYU_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)  # fx, fy, cx, cy at 480x640
MAX_DEPTH = 10.0
ROOM_NORMALS = np.array(
    [[0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=float
)
ROOM_CLASSES = np.array([C["floor"], C["ceiling"]] + [C["wall"]] * 4)
NROOM = 6


def intrinsics(h: int, w: int) -> tuple[float, float, float, float]:
    """NYUv2 intrinsics (fx, fy, cx, cy) scaled from 480x640 to an h x w image."""
    fx, fy, cx, cy = NYU_INTRINSICS
    sx, sy = w / NYU_SIZE[1], h / NYU_SIZE[0]
    return fx * sx, fy * sy, cx * sx, cy * sy


def camera_rays(h: int, w: int) -> np.ndarray:
    """Camera-frame rays [h, w, 3] with z = 1, so that a ray parameter t is the z-depth."""
    fx, fy, cx, cy = intrinsics(h, w)
    u, v = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
    return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)


def _rotz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
_EDGES = [(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1]
NEAR = 0.02


def _rects(prims: list, rot: np.ndarray, o: np.ndarray, h: int, w: int, K: tuple) -> np.ndarray:
    """Pixel rectangles [P, 4] (y0, y1, x0, x1) covering each primitive's bounding box, clipped by
    the near plane (empty behind the camera); all primitives at once, for speed."""
    rects = np.zeros((len(prims), 4), np.int64)
    if not prims:
        return rects
    fx, fy, cx, cy = K
    cen = np.array([p.center for p in prims])
    half = np.array([p.half for p in prims])
    yaw = np.array([p.yaw for p in prims])
    loc = _CORNERS[None] * half[:, None]  # [P, 8, 3]
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    wx, wy = c * loc[..., 0] - s * loc[..., 1], s * loc[..., 0] + c * loc[..., 1]
    world = np.stack([wx, wy, loc[..., 2]], -1) + cen[:, None]
    cc = (world - o) @ rot  # camera frame [P, 8, 3]
    front = cc[..., 2] >= NEAR
    for i in np.nonzero(front.any(1))[0]:
        q = cc[i]
        if not front[i].all():  # keep the corners in front and the edges' near-plane crossings
            pts = [q[front[i]]]
            for a, b in _EDGES:
                if front[i, a] != front[i, b]:
                    t = (NEAR - q[a, 2]) / (q[b, 2] - q[a, 2])
                    pts.append((q[a] + t * (q[b] - q[a]))[None])
            q = np.concatenate(pts)
        u, v = fx * q[:, 0] / q[:, 2] + cx, fy * q[:, 1] / q[:, 2] + cy
        rects[i] = (
            np.floor(v.min()),
            np.ceil(v.max()) + 1,
            np.floor(u.min()),
            np.ceil(u.max()) + 1,
        )
    np.clip(rects[:, :2], 0, h, out=rects[:, :2])
    np.clip(rects[:, 2:], 0, w, out=rects[:, 2:])
    return rects


@lru_cache(maxsize=8)
def _pixel_rays(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    r = camera_rays(h, w)
    return r[..., 0].copy(), r[..., 1].copy()


def cast(scene: Scene, h: int, w: int) -> dict[str, np.ndarray]:
    """Ray-cast: per pixel z-depth t, primitive id (0..5 room faces, 6 + i prims), world normal
    and a face code."""
    K = intrinsics(h, w)
    rot, o = scene.cam_rot, scene.cam_pos
    xc, yc = _pixel_rays(h, w)
    # World ray directions (camera z component = 1, so t is the z-depth), one array per axis.
    dw = [xc * rot[k, 0] + yc * rot[k, 1] + rot[k, 2] for k in range(3)]
    size = scene.size
    with np.errstate(divide="ignore"):  # exit distance per axis: the camera is inside the room
        tt = [np.where(dk > 0, (size[k] - o[k]) / dk, -o[k] / dk) for k, dk in enumerate(dw)]
    t = np.minimum(np.minimum(tt[0], tt[1]), tt[2])
    # Room faces: 0 floor, 1 ceiling, 2/3 walls x=0/lx, 4/5 walls y=0/ly.
    face = np.where(t == tt[2], dw[2] > 0, np.where(t == tt[0], 2 + (dw[0] > 0), 4 + (dw[1] > 0)))
    pid = face.astype(np.int64)
    nrm = ROOM_NORMALS[pid]
    fcode = np.zeros((h, w), np.int64)
    dxw, dyw, dzw = dw
    for i, (p, rect) in enumerate(zip(scene.prims, _rects(scene.prims, rot, o, h, w, K))):
        y0, y1, x0, x1 = (int(v) for v in rect)
        if y1 <= y0 or x1 <= x0:
            continue
        R = _rotz(p.yaw)
        c, s = R[0, 0], R[1, 0]
        wx, wy, wz = dxw[y0:y1, x0:x1], dyw[y0:y1, x0:x1], dzw[y0:y1, x0:x1]
        dl = (c * wx + s * wy, c * wy - s * wx, wz)  # rays in the object frame
        ti, detail = intersect(p.kind, (o - p.center) @ R, dl, p.half)
        closer = ti < t[y0:y1, x0:x1]
        if not closer.any():
            continue
        nl, fc = detail(closer)
        nw = nl @ R.T
        if p.kind != "box":  # unnormalized gradients; at silhouettes round-off can flip them
            nw /= np.linalg.norm(nw, axis=1, keepdims=True)
            dot = nw[:, 0] * wx[closer] + nw[:, 1] * wy[closer] + nw[:, 2] * wz[closer]
            nw[dot > 0] *= -1
        t[y0:y1, x0:x1][closer] = ti[closer]
        pid[y0:y1, x0:x1][closer] = NROOM + i
        nrm[y0:y1, x0:x1][closer] = nw
        fcode[y0:y1, x0:x1][closer] = fc
    return {"t": t, "pid": pid, "normal_w": nrm, "face": fcode, "dirs": dw}


def _surface_coords(scene, pid_i, pts, face):
    """Metric (u, v) and normalized (s, t) surface coordinates of world points on one primitive."""
    if pid_i < NROOM:
        ax = [(0, 1), (0, 1), (1, 2), (1, 2), (0, 2), (0, 2)][pid_i]
        z = np.zeros(len(pts))
        return pts[:, ax[0]], pts[:, ax[1]], z, z
    p = scene.prims[pid_i - NROOM]
    loc = (pts - p.center) @ _rotz(p.yaw)
    if p.kind == "box":
        a = face // 2
        a1 = np.where(a == 0, 1, 0)
        a2 = np.where(a == 2, 1, 2)
        idx = np.arange(len(pts))
        u, v = loc[idx, a1], loc[idx, a2]
        return u, v, u / p.half[a1], v / p.half[a2]
    ang = np.arctan2(loc[:, 1] / p.half[1], loc[:, 0] / p.half[0]) * p.half[0]
    return ang, loc[:, 2], ang / (np.pi * p.half[0]), loc[:, 2] / p.half[2]


def shade(scene: Scene, hit: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB [h, w, 3] (Lambertian + ambient + emission, fake contact occlusion), glass mask."""
    t, pid, n, d = hit["t"], hit["pid"], hit["normal_w"], hit["dirs"]
    h, w = t.shape
    pc = [(scene.cam_pos[k] + d[k] * t).astype(np.float32) for k in range(3)]
    nc = [n[..., k].astype(np.float32) for k in range(3)]
    table = rng.random((64, 64)).astype(np.float32)
    albedo = np.zeros((h * w, 3), np.float32)
    emis = np.zeros((h * w, 3), np.float32)
    glass = np.zeros(h * w, bool)
    flat_pid, flat_face = pid.ravel(), hit["face"].ravel()
    order = np.argsort(flat_pid.astype(np.int16), kind="stable")  # radix sort: fast
    counts = np.bincount(flat_pid)
    ids = np.nonzero(counts)[0]
    bounds = np.r_[0, np.cumsum(counts[ids])]  # pixels of ids[k]: order[bounds[k]:bounds[k+1]]
    P = np.stack([x.ravel() for x in pc], 1)
    for k, i in enumerate(ids):
        sel = order[bounds[k] : bounds[k + 1]]
        u, v, s, tt = _surface_coords(scene, int(i), P[sel], flat_face[sel])
        mat = scene.room_mats[i] if i < NROOM else scene.prims[i - NROOM].mat
        a, e, g = shade_texture(mat, u, v, s, tt, table)
        albedo[sel], emis[sel] = a, e
        if i >= NROOM and scene.prims[i - NROOM].no_depth:
            glass[sel] = g  # glass pane of a window the sensor sees through
    light = np.full((h, w), scene.ambient, np.float32)
    for kind, val, inten in scene.lights:
        if kind == "point":
            lv = [float(val[k]) - pc[k] for k in range(3)]
            dist = np.sqrt(lv[0] ** 2 + lv[1] ** 2 + lv[2] ** 2)
            ndl = np.maximum((nc[0] * lv[0] + nc[1] * lv[1] + nc[2] * lv[2]) / dist, 0)
            light += inten * 1.6 * ndl / (1 + (dist / 3.0) ** 2)
        else:
            light += inten * np.maximum(-(nc[0] * val[0] + nc[1] * val[1] + nc[2] * val[2]), 0)
    # Cheap contact occlusion: darken points close to the floor, ceiling and walls.
    occ = np.zeros((h, w), np.float32)
    for ax in range(3):
        for dist in (pc[ax], np.float32(scene.size[ax]) - pc[ax]):
            near = np.maximum(1 - dist * np.float32(2.5), 0)  # within 40 cm, not on the plane
            occ += np.where(dist > 2e-3, near * near, 0)
    shading = light * (1 - 0.35 * np.minimum(occ, 1.5))
    rgb = albedo.reshape(h, w, 3) * shading[..., None] + emis.reshape(h, w, 3)
    return rgb, glass.reshape(h, w)


@lru_cache(maxsize=8)
def _radius2(h: int, w: int) -> np.ndarray:
    xc, yc = _pixel_rays(h, w)  # roughly centred, ~[-0.6, 0.6]
    return (xc * xc + yc * yc).astype(np.float32)


def sensor(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, vignetting, slight blur, noise and a gamma tweak -> uint8 RGB."""
    h, w, _ = rgb.shape
    gain = (rng.uniform(0.75, 1.35) * rng.normal(1.0, 0.06, 3)).astype(np.float32) * 255
    vig = 1 - np.float32(rng.uniform(0.1, 0.6)) * _radius2(h, w)
    img = np.clip(rgb * gain * vig[..., None], 0, 255)
    img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 0.9))
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.5, 5.0))
    img = np.clip(img + noise + 0.5, 0, 255).astype(np.uint8)
    lut = np.clip((np.arange(256) / 255) ** rng.uniform(0.85, 1.15) * 255 + 0.5, 0, 255)
    return cv2.LUT(img, lut.astype(np.uint8))
