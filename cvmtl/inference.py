"""Folder / glob / recursive inference with a :class:`~cvmtl.predictor.Predictor` and the writers
of its results (the ``cvmtl`` disk encoding plus colour previews).

Per image ``{stem}`` and task: the files of the task's ``TaskSpec.encode``,
``{stem}_{task}{suffix}.png``; for the built-in tasks ``_seg.png`` (8-bit class indices; 16-bit
above 255 classes), ``_seg_color.png``, ``_depth.png`` (16-bit millimetres, 0 = invalid),
``_depth_color.png``, ``_normal.png`` (16-bit RGB, (n + 1) / 2 * 65535), ``_normal_color.png``;
optionally ``{stem}.npz`` (the arrays). Images of equal size run in one batch; an unreadable file is
reported, skipped and counted.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvmtl.predictor import Predictor, load_image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class InferResult:
    """Counts of one run; ``failed`` holds ``(path, reason)`` pairs."""

    ok: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{self.ok} ok, {len(self.failed)} failed"


def collect_inputs(spec: str | Path, recursive: bool = False) -> list[tuple[Path, Path]]:
    """``(file, relative path)`` pairs for a file, a folder (images by extension; with
    ``recursive`` every sub-folder too) or a glob (``**`` needs ``recursive``). The relative
    path (to the folder, or to the glob's fixed leading part) places the outputs."""
    path = Path(spec)
    if path.is_file():
        return [(path, Path(path.name))]
    if path.is_dir():
        files = path.rglob("*") if recursive else path.glob("*")
        found = sorted(f for f in files if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        return [(f, f.relative_to(path)) for f in found]
    if not glob.has_magic(str(spec)):
        raise FileNotFoundError(f"no such file or folder: {spec}")
    base = _glob_base(str(spec))
    found = sorted(Path(f) for f in glob.glob(str(spec), recursive=recursive) if Path(f).is_file())
    return [(f, f.relative_to(base) if f.is_relative_to(base) else Path(f.name)) for f in found]


def _glob_base(pattern: str) -> Path:
    """The leading folders of ``pattern`` without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def output_stems(items: list[tuple[Path, Path]]) -> list[Path]:
    """Output prefix (relative) per input: ``sub/name``; ``sub/name_jpg`` where two inputs of
    one folder share a stem (``a.png`` and ``a.jpg``), so that none overwrites another."""
    stems = [rel.with_suffix("") for _, rel in items]
    counts: dict[Path, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [
        s if counts[s] == 1 else s.with_name(f"{s.name}_{rel.suffix.lstrip('.').lower()}")
        for s, (_, rel) in zip(stems, items)
    ]


def write_prediction(
    pred: dict[str, np.ndarray],
    prefix: Path,
    palette: list[list[int]],
    npz: bool = False,
    classes: list[str] | None = None,
) -> list[Path]:
    """Write ``pred`` (a :meth:`Predictor.predict` result) as ``{prefix}_{task}{suffix}.png``,
    one file per entry of the task's ``spec.encode(prediction, info)``. ``info`` holds the
    dataset's ``palette`` and ``classes`` (a task with its own classes uses its own)."""
    import cv2

    from cvmtl.tasks import get_task
    from cvmtl.vis.task_view import task_info

    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = list(classes) if classes is not None else [f"class {i}" for i in range(len(palette))]
    files: dict[str, np.ndarray] = {}
    for task, value in pred.items():
        spec = get_task(task)
        for suffix, array in spec.encode(value, task_info(spec, names, palette)).items():
            files[f"{task}{suffix}"] = array
    written = []
    for name, array in files.items():
        path = prefix.with_name(f"{prefix.name}_{name}.png")
        if array.ndim == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)  # cv2 writes BGR
        if not cv2.imwrite(str(path), array):
            raise OSError(f"could not write {path}")
        written.append(path)
    if npz:
        path = prefix.with_name(f"{prefix.name}.npz")
        np.savez_compressed(path, **pred)
        written.append(path)
    return written


def _batches(
    items: list[tuple[Path, Path]], batch_size: int, result: InferResult, report: Callable
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Load images in order; yield lists of (item index, RGB) of one size, at most
    ``batch_size`` long. Few images wait at a time: once more than ``2 * batch_size`` are
    pending, every size group is run."""
    pending: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for i, (path, _) in enumerate(items):
        try:
            rgb = load_image(path)
        except ValueError as err:
            result.failed.append((path, str(err)))
            report(f"skipped {err}")
            yield []  # keeps the progress bar moving
            continue
        group = pending.setdefault(rgb.shape[:2], [])
        group.append((i, rgb))
        if len(group) >= batch_size:
            yield pending.pop(rgb.shape[:2])
        elif sum(len(g) for g in pending.values()) > 2 * batch_size:
            yield from pending.values()
            pending.clear()
    yield from pending.values()


def run_inference(
    predictor: Predictor,
    items: list[tuple[Path, Path]],
    out_dir: str | Path,
    batch_size: int = 1,
    npz: bool = False,
    progress: bool = True,
) -> InferResult:
    """Predict every ``(file, relative path)`` of ``items`` into ``out_dir``; failures (unreadable
    file, a failed forward such as out-of-memory, an unwritable output) are reported on stderr
    one line each and counted, never fatal."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    prefixes = output_stems(items)
    result = InferResult()
    bar = tqdm(total=len(items), desc="infer", unit="img", disable=not progress, file=sys.stderr)

    def report(msg: str) -> None:
        tqdm.write(f"error: {msg}", file=sys.stderr)

    try:
        for batch in _batches(items, max(1, batch_size), result, report):
            if not batch:
                bar.update(1)
                continue
            try:
                preds = predictor.predict_arrays(np.stack([rgb for _, rgb in batch]))
            except (RuntimeError, ValueError) as err:  # e.g. out of memory on a huge image
                for i, _ in batch:
                    result.failed.append((items[i][0], str(err)))
                    report(f"failed {items[i][0]}: {str(err).splitlines()[0]}")
                bar.update(len(batch))
                continue
            for (i, _), pred in zip(batch, preds):
                try:
                    write_prediction(
                        pred, out_dir / prefixes[i], predictor.palette, npz, predictor.classes
                    )
                    result.ok += 1
                except OSError as err:
                    result.failed.append((items[i][0], str(err)))
                    report(f"failed {items[i][0]}: {err}")
                bar.update(1)
    finally:
        bar.close()
    return result
