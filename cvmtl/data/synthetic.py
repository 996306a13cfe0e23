"""Procedural indoor scenes with consistent RGB, NYUv2-13 labels, z-depth, camera-frame normals,
object boundaries (edges) and a salient-object mask.

``render_sample`` draws one scene from (seed, split, index) and ray-casts it (see
synthetic_layout / synthetic_render); ``generate_dataset`` writes a ``cvmtl`` dataset with a
process pool; ``colour_only_miou`` is the per-pixel colour classifier baseline, the floor a real
model must clear.
"""

from __future__ import annotations

import zlib
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from cvmtl.data.io import write_cvmtl_sample, write_dataset_yaml, write_split
from cvmtl.data.nyuv2 import NYU13_PALETTE
from cvmtl.data.synthetic_layout import build_scene
from cvmtl.data.synthetic_render import MAX_DEPTH, NROOM, ROOM_CLASSES, cast, intrinsics, sensor
from cvmtl.data.synthetic_render import shade as shade_scene
from cvmtl.data.synthetic_scene import CLASSES
from cvmtl.data.synthetic_targets import scene_targets

IGNORE = 255


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Generator of one scene; splits use disjoint streams (the split name is in the spawn key)."""
    key = (zlib.crc32(split.encode()), int(index))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def _dropout(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kinect-like holes: smooth random blobs and a shadow band next to depth discontinuities."""
    h, w = depth.shape
    coarse = rng.random((max(2, h // 40), max(2, w // 40))).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    hole = field > np.quantile(field, 1 - rng.uniform(0.0, 0.025))
    jump = depth[:, 1:] - depth[:, :-1]  # the far side of a horizontal jump is occluded
    shadow = np.zeros_like(hole)
    shadow[:, 1:] |= jump > 0.25
    shadow[:, :-1] |= jump < -0.25
    width = int(rng.integers(0, 4))
    if width:
        shadow = cv2.dilate(shadow.astype(np.uint8), np.ones((1, width), np.uint8)) > 0
        hole |= shadow
    return np.where(hole, 0.0, depth)


def _ignore_band(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mark label discontinuities 255 (1 px on one side, or 2 px across), like NYU's unlabeled."""
    edge = np.zeros(seg.shape, bool)
    both = rng.random() < 0.5
    for a, b in ((seg[:, 1:], seg[:, :-1]), (seg[1:], seg[:-1])):
        diff = a != b
        if a.shape[1] != seg.shape[1]:
            edge[:, 1:] |= diff
            if both:
                edge[:, :-1] |= diff
        else:
            edge[1:] |= diff
            if both:
                edge[:-1] |= diff
    return np.where(edge, IGNORE, seg).astype(np.uint8)


def render_sample(
    seed: int, split: str, index: int, size: tuple[int, int] = (240, 320), extras: bool = False
) -> dict[str, np.ndarray]:
    """One scene: ``image`` uint8 HxWx3, ``seg`` uint8 (255 ignore), ``depth`` float32 metres
    (0 invalid), ``normal`` float32 HxWx3 (camera frame, toward the camera), ``edge`` and
    ``saliency`` bool HxW.

    ``edge``: 1 px boundaries of the clean label map and the object map (every room face, piece of
    furniture and prop is an object), drawn on the nearer (occluding) side, as PASCAL / NYUD edges
    come from label boundaries. ``saliency``: the visible object with the largest centre-weighted
    area (see synthetic_targets.salient_object). Both use no random draws: the images and the
    other targets are the same as without them.

    With ``extras``: ``depth_clean`` (before sensor holes), ``seg_clean`` (before the ignore band),
    ``planar`` (pixel on a flat face), ``face`` (a per-face id), ``object`` (the object id map),
    ``glass`` (see-through window panes), ``normal_world``, the camera pose and the room size.
    """
    h, w = size
    rng = scene_rng(seed, split, index)
    scene = build_scene(rng)
    hit = cast(scene, h, w)
    rgb, glass = shade_scene(scene, hit, rng)
    image = sensor(rgb, rng)
    pid = hit["pid"]
    cls = np.r_[ROOM_CLASSES, [p.cls for p in scene.prims]].astype(np.uint8)
    seg_clean = cls[pid]
    depth_clean = hit["t"].astype(np.float32)
    depth = np.where(glass | (depth_clean > MAX_DEPTH), 0.0, depth_clean)
    depth = _dropout(depth, rng).astype(np.float32)
    normal = (hit["normal_w"] @ scene.cam_rot).astype(np.float32)  # world -> camera frame
    targets = scene_targets(scene, pid, seg_clean, depth_clean, NROOM)
    out = {
        "image": image,
        "seg": _ignore_band(seg_clean, rng),
        "depth": depth,
        "normal": normal,
        "edge": targets["edge"],
        "saliency": targets["saliency"],
    }
    if extras:
        kinds = np.array(["room"] * NROOM + [p.kind for p in scene.prims])
        face = hit["face"]
        out.update(
            depth_clean=depth_clean,
            seg_clean=seg_clean,
            planar=(kinds[pid] == "room") | ((kinds[pid] == "box") & (face < 6)) | (face == 7),
            face=pid * 8 + face,
            object=targets["object"],
            glass=glass,
            normal_world=hit["normal_w"].astype(np.float32),
            cam_rot=scene.cam_rot,
            cam_pos=scene.cam_pos,
            room=scene.size,
        )
    return out


def _job(args: tuple) -> np.ndarray:
    out, seed, split, index, size = args
    cv2.setNumThreads(1)
    s = render_sample(seed, split, index, size)
    # The folder names are the ones the cvmtl reader looks up for the edge and saliency tasks.
    masks = {"edge": s["edge"], "saliency": s["saliency"]}
    sid = f"{split}_{index:05d}"
    write_cvmtl_sample(out, sid, s["image"], s["seg"], s["depth"], s["normal"], masks=masks)
    return np.bincount(s["seg"].ravel(), minlength=256)[: len(CLASSES)]


def generate_dataset(
    out: str | Path,
    counts: dict[str, int],
    size: tuple[int, int] = (240, 320),
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, float]:
    """Render ``counts[split]`` scenes per split into a ``cvmtl`` dataset at ``out``.

    Byte-identical for the same arguments (whatever ``workers``). Returns the class pixel
    frequencies (fraction of labelled pixels per class name).
    """
    out = Path(out)
    h, w = size
    jobs = [(out, seed, sp, i, (h, w)) for sp, n in counts.items() for i in range(n)]
    for sp, n in counts.items():
        write_split(out, sp, [f"{sp}_{i:05d}" for i in range(n)])
    fx, fy, cx, cy = intrinsics(h, w)
    write_dataset_yaml(
        out, "synthetic", CLASSES, NYU13_PALETTE, {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    )
    total = np.zeros(len(CLASSES), np.int64)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="make_synthetic", unit="scene")
    if workers <= 1:
        results = map(_job, jobs)
        pool = None
    else:
        pool = get_context("fork").Pool(workers)
        results = pool.imap_unordered(_job, jobs, chunksize=4)
    try:
        for c in results:
            total += c
            if bar is not None:
                bar.update()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    return dict(zip(CLASSES, (total / max(total.sum(), 1)).tolist()))


def colour_only_miou(root: str | Path, train: str = "train", test: str = "test", bins: int = 16):
    """mIoU (percent) of a per-pixel naive colour classifier: argmax_c P(c | quantized RGB).

    A class histogram over ``bins``^3 RGB cells is counted on the ``train`` split and applied to
    the ``test`` split (255 ignored). Returns (miou, per-class IoU list).
    """
    from cvmtl.data.io import read_image, read_seg_png, read_split

    root = Path(root)
    ncls = len(CLASSES)

    def cells(split: str):
        for sid in read_split(root / "splits" / f"{split}.txt"):
            img = read_image(root / "images" / f"{sid}.png").astype(np.int64) * bins // 256
            seg = read_seg_png(root / "segmentation" / f"{sid}.png").ravel()
            cell = ((img[..., 0] * bins + img[..., 1]) * bins + img[..., 2]).ravel()
            keep = seg != IGNORE
            yield cell[keep], seg[keep]

    hist = np.zeros(bins**3 * ncls, np.int64)
    for cell, seg in cells(train):
        hist += np.bincount(cell * ncls + seg, minlength=bins**3 * ncls)
    hist = hist.reshape(bins**3, ncls).astype(float)
    # Two decision rules: the MAP class (pixel accuracy) and the class-balanced likelihood
    # P(rgb | c) (better for mIoU); the baseline is the better of the two.
    rules = [hist.argmax(1), (hist / np.maximum(hist.sum(0), 1)).argmax(1)]
    confs = [np.zeros((ncls, ncls), np.int64) for _ in rules]
    for cell, seg in cells(test):
        for conf, rule in zip(confs, rules):
            conf += np.bincount(seg * ncls + rule[cell], minlength=ncls**2).reshape(ncls, ncls)
    best = (-1.0, [])
    for conf in confs:
        inter = np.diag(conf).astype(float)
        union = conf.sum(0) + conf.sum(1) - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan) * 100
        best = max(best, (float(np.nanmean(iou)), iou.tolist()), key=lambda x: x[0])
    return best


def contact_sheet(
    path: str | Path,
    seed: int = 0,
    n: int = 6,
    size: tuple[int, int] = (240, 320),
    scale: float = 0.75,
) -> np.ndarray:
    """Write a PNG grid of ``n`` test scenes: RGB | labels | depth | normals | targets per row
    (targets: the salient object grey, edges white)."""
    palette = np.array(list(NYU13_PALETTE) + [[0, 0, 0]] * (256 - len(NYU13_PALETTE)), np.uint8)
    rows = []
    for i in range(n):
        s = render_sample(seed, "test", i, size)
        seg = palette[s["seg"]]
        d8 = np.clip(s["depth"] / MAX_DEPTH * 255, 0, 255).astype(np.uint8)
        depth = cv2.cvtColor(cv2.applyColorMap(d8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
        depth[s["depth"] <= 0] = 0
        nrm = ((s["normal"] + 1) / 2 * 255).astype(np.uint8)
        marks = np.where(s["edge"], 255, np.where(s["saliency"], 110, 0)).astype(np.uint8)
        marks = np.repeat(marks[..., None], 3, axis=2)
        rows.append(np.concatenate([s["image"], seg, depth, nrm, marks], axis=1))
    sheet = np.concatenate(rows, axis=0)
    if scale != 1:  # a smaller PNG for docs/
        sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return sheet
