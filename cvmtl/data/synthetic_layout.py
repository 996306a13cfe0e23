"""Room composition: a room type, furniture, wall items and props, lights and a camera."""

from __future__ import annotations

import numpy as np

from cvmtl.data import synthetic_scene as ss
from cvmtl.data.synthetic_placement import Layout
from cvmtl.data.synthetic_props import floor_object, wall_item
from cvmtl.data.synthetic_scene import Builder, Scene, _mat


def _tv_on(L: Layout, pose: tuple | None) -> None:
    if pose is None:
        return
    x, y, yaw, w, d, h = pose[:6]
    r = L.r
    tw = r.uniform(0.6, min(1.4, w))
    th = tw * 9 / 16
    b = Builder(L.scene, r)
    m = _mat(r, "tv", "tv")
    b.part("tv", (0, 0, 0.07 + th / 2), (tw, 0.06, th), m)
    b.part("tv", (0, 0, 0.01), (0.3, 0.2, 0.02), m)
    b.part("tv", (0, 0.01, 0.045), (0.06, 0.03, 0.05), m)
    b.place(x, y, yaw, h)


def _dining(L: Layout) -> None:
    r = L.r
    b = Builder(L.scene, r)
    w, d, th = ss.table(b, r, "dining")
    for _ in range(10):  # the table and room for its chairs must be free
        x, y = r.uniform(0.8, L.lx - 0.8), r.uniform(0.8, L.ly - 0.8)
        yaw = r.choice([0.0, np.pi / 2]) + r.normal(0, 0.05)
        fp = L.footprint(x, y, yaw, w + 0.9, d + 0.9)
        if L.free_floor(fp):
            break
    else:
        return
    L.scene.footprints.append(fp)
    b.place(x, y, yaw)
    pose = (x, y, yaw, w, d, th)
    L.props_on(pose, int(r.integers(0, 5)))
    cy, sy = np.cos(yaw), np.sin(yaw)
    xs = [-w / 4, w / 4] if w > 1.2 else [0.0]
    seats = [(ox, sgn * (d / 2 + 0.1)) for ox in xs for sgn in (-1, 1)]
    seats += [(sgn * (w / 2 + 0.1), 0.0) for sgn in (-1, 1)]
    model = int(r.integers(1 << 30))  # one chair model per set
    for ox, oy in seats:
        if r.random() < 0.35:
            continue
        u = np.array([cy * ox - sy * oy, sy * ox + cy * oy])
        un = u / np.linalg.norm(u)
        p = np.array([x, y]) + u + un * r.uniform(0, 0.25)  # some chairs pulled out
        cyaw = np.arctan2(-un[0], un[1]) + r.normal(0, 0.15)
        L.free(lambda b, _r: ss.chair(b, np.random.default_rng(model)), p[0], p[1], cyaw, False)


def _desk(L: Layout) -> None:
    r = L.r
    pose = L.against_wall(lambda b, r: ss.table(b, r, "desk"))
    if pose is None:
        return
    x, y, yaw, w, d, h, _ = pose
    L.props_on(pose, int(r.integers(1, 5)))
    if r.random() < 0.4:
        back = np.array([-np.sin(yaw), np.cos(yaw)]) * d / 4  # a monitor toward the wall
        _tv_on(L, (x + back[0], y + back[1], yaw, w * 0.6, d, h))
    u = np.array([np.sin(yaw), -np.cos(yaw)])  # desk front
    p = np.array([x, y]) + u * (d / 2 + r.uniform(0.0, 0.35))
    L.free(ss.chair, p[0], p[1], np.arctan2(-u[0], u[1]) + r.normal(0, 0.3), register=False)


def _living(L: Layout) -> None:
    r = L.r
    pose = L.against_wall(ss.sofa)
    if pose is not None:
        x, y, yaw, w, d, h, _ = pose
        u = np.array([np.sin(yaw), -np.cos(yaw)])
        if r.random() < 0.8:
            p = np.array([x, y]) + u * (d / 2 + r.uniform(0.6, 0.9))
            t = L.free(lambda b, r: ss.table(b, r, "coffee"), p[0], p[1], yaw + r.normal(0, 0.05))
            L.props_on(t, int(r.integers(0, 4)))
        if r.random() < 0.5:
            _rug(L, x + u[0] * 0.8, y + u[1] * 0.8, yaw)
    _tv_on(L, L.against_wall(lambda b, r: ss.cabinet(b, r, "tvstand")))
    if r.random() < 0.5:
        L.against_wall(lambda b, r: ss.sofa(b, r, r.uniform(0.8, 1.0)))


def _bedroom(L: Layout) -> None:
    r = L.r
    pose = L.against_wall(ss.bed)
    if pose is not None:
        x, y, yaw, w, d, h, k = pose
        for sx in (-1, 1):
            if r.random() < 0.7:  # nightstand beside the headboard, on the same wall
                b = Builder(L.scene, r)
                nw, nd, nh = ss.cabinet(b, r, "nightstand")
                a = (y if k < 2 else x) + sx * (w / 2 + nw / 2 + 0.05)
                nx, ny, nyaw = L.wall_pose(k, a, nd)
                fp = L.footprint(nx, ny, nyaw, nw, nd)
                if L.free_floor(fp, 0.0):
                    L.scene.footprints.append(fp)
                    b.place(nx, ny, nyaw)
                    L.props_on((nx, ny, nyaw, nw, nd, nh), int(r.integers(0, 3)))
                else:
                    b.parts = []
        if r.random() < 0.4:
            _rug(L, x, y, yaw)
    L.props_on(L.against_wall(lambda b, r: ss.cabinet(b, r, "dresser")), int(r.integers(0, 4)))
    if r.random() < 0.6:
        L.against_wall(lambda b, r: ss.cabinet(b, r, "wardrobe"))


def _kitchen(L: Layout) -> None:
    r = L.r
    pose = L.against_wall(lambda b, r: ss.cabinet(b, r, "counter"))
    if pose is not None:
        L.props_on(pose, int(r.integers(2, 7)))
        x, y, yaw, w, d, h, k = pose
        a = y if k < 2 else x
        if r.random() < 0.8 and L.free_wall(k, a - w / 2, a + w / 2, 1.45, 2.2):
            b = Builder(L.scene, r)  # upper cabinets over the counter
            b.part("furniture", (0, 0, 0.35), (w, 0.35, 0.7), _mat(r, "furniture"))
            ux, uy, uyaw = L.wall_pose(k, a, 0.35)
            b.place(ux, uy, uyaw, 1.5)
    if r.random() < 0.6:
        L.against_wall(lambda b, r: ss.cabinet(b, r, "fridge"))
    _dining(L)


def _curtains(L: Layout, pose: tuple) -> None:
    """Curtains (class window) on both sides of a window, hanging from above it."""
    x, y, yaw, w, d, top, k = pose
    r = L.r
    a = y if k < 2 else x
    fn = wall_item("curtain", r)
    for sgn in (-1, 1):
        b = Builder(L.scene, r)
        cw, cd, ch = fn(b, np.random.default_rng(int(r.integers(1 << 30))))
        ca, z0 = a + sgn * (w / 2 + cw / 2 - 0.05), min(top + 0.15, L.h - 0.05) - ch
        if ca - cw / 2 > 0 and ca + cw / 2 < L.wall_len(k):  # may overlap furniture: cloth
            cx, cy, cyaw = L.wall_pose(k, ca, cd + 0.02)
            b.place(cx, cy, cyaw, max(z0, 0.0))


def _rug(L: Layout, x: float, y: float, yaw: float) -> None:
    r = L.r
    b = Builder(L.scene, r)
    m = _mat(r, "objects")
    m.kind = str(r.choice(["stripes", "checker", "noise", "speckle", "plain"]))
    b.part("floor", (0, 0, 0.003), (r.uniform(1.2, 2.5), r.uniform(0.9, 2.0), 0.006), m)
    b.place(x, y, yaw)


def _extras(L: Layout) -> None:
    """Clutter that any room type may have: storage, chairs, plants, boxes, lamps, bags."""
    r = L.r
    for _ in range(int(r.integers(2, 6))):
        kind = str(r.choice(["bookshelf", "dresser", "chair", "plant", "box", "lamp", "shelf"]))
        if kind == "bookshelf":
            L.against_wall(ss.bookshelf)
        elif kind == "dresser":
            L.props_on(
                L.against_wall(
                    lambda b, r: ss.cabinet(b, r, "nightstand" if r.random() < 0.4 else "dresser")
                ),
                int(r.integers(1, 4)),
            )
        elif kind == "chair":
            L.against_wall(ss.chair)
        elif kind == "shelf":  # wall shelf with books and things
            pose = L.against_wall(wall_item("shelf", r), z=r.uniform(1.0, 1.7))
            L.props_on(pose, int(r.integers(2, 6)))
        else:
            L.against_wall(floor_object(kind))
    for _ in range(int(r.integers(0, 4))):  # loose things on the floor
        x, y = r.uniform(0.3, L.lx - 0.3), r.uniform(0.3, L.ly - 0.3)
        L.free(floor_object("box"), x, y, r.uniform(0, np.pi))


ROOMS = {"living": _living, "bedroom": _bedroom, "kitchen": _kitchen, "office": _desk}


def build_scene(rng: np.random.Generator) -> Scene:
    """A random furnished room with lights (the camera is set by ``place_camera``)."""
    r = rng
    size = np.array([r.uniform(2.8, 6.0), r.uniform(2.8, 6.0), r.uniform(2.4, 3.1)])
    wall = _mat(r, "wall")
    walls = [wall if r.random() < 0.85 else _mat(r, "wall") for _ in range(4)]
    scene = Scene(size, [_mat(r, "floor"), _mat(r, "ceiling"), *walls])
    L = Layout(scene, r)
    # Wall items first (windows, door), so that tall furniture avoids them.
    for kind, p, n in [("window", 0.75, 2), ("blinds", 0.25, 1), ("door", 0.6, 1)]:
        for _ in range(int(r.integers(1, n + 1)) if r.random() < p else 0):
            z = 0.0 if kind == "door" else r.uniform(0.7, 1.0)
            pose = L.against_wall(wall_item(kind, r), z=z)
            if pose is not None and kind != "door" and r.random() < 0.4:
                _curtains(L, pose)
    room = str(r.choice(list(ROOMS)))
    ROOMS[room](L)
    if room == "office" and r.random() < 0.5:
        _desk(L)
    if r.random() < 0.5:
        L.against_wall(ss.bookshelf)
    _extras(L)
    for _ in range(int(r.integers(0, 4))):
        L.against_wall(wall_item("picture", r), z=r.uniform(1.1, 1.7))
    if r.random() < 0.2:
        L.against_wall(wall_item("tv", r), z=r.uniform(1.0, 1.4))
    if r.random() < 0.3:
        L.against_wall(wall_item("upper", r), z=r.uniform(1.5, 1.8))
    if r.random() < 0.5:  # ceiling lamp
        b = Builder(scene, r)
        s = r.uniform(0.2, 0.5)
        b.part("objects", (0, 0, -s * 0.2), (s, s, s * 0.4), _mat(r, "objects"), "ell")
        b.place(r.uniform(1, size[0] - 1), r.uniform(1, size[1] - 1), 0.0, size[2])
    # Lights: one ceiling point light, maybe a directional "sun", ambient.
    p = np.array([r.uniform(0.5, size[0] - 0.5), r.uniform(0.5, size[1] - 0.5), size[2] - 0.2])
    scene.lights.append(("point", p, float(r.uniform(0.5, 1.0))))
    if r.random() < 0.6:
        d = np.array([r.normal(), r.normal(), -abs(r.normal()) - 0.3])
        scene.lights.append(("dir", d / np.linalg.norm(d), float(r.uniform(0.15, 0.45))))
    scene.ambient = float(r.uniform(0.2, 0.45))
    for p in scene.prims:  # most windows: Kinect sees through the glass (invalid depth)
        p.no_depth = p.mat.special == "window" and r.random() < 0.85
    ss.place_camera(scene, r)
    return scene
