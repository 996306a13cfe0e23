"""Atomic checkpoint save / load and RNG state capture.

A cvmtl checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` opens: tensors,
numbers, strings, lists, dicts and None only. Keys (format version 1):

``cvmtl_checkpoint`` (magic, = 1), ``format_version``, ``model`` (EMA weights when EMA is on),
``model_raw`` (raw weights, only with EMA), ``ema`` ({"decay", "updates"}, only with EMA),
``optimizer``, ``scheduler``, ``scaler``, ``balancer``, ``rng`` (see :func:`get_rng_state`),
``step`` (optimizer steps done), ``epoch``, ``position`` ({"epoch", "batch"}: where the train
sampler resumes; ``batch`` counts micro-batches already consumed in that epoch), ``best``
({"metric", "value", "step"}), ``bad_steps`` (consecutive skipped steps), ``skipped_steps``
(total), ``config`` (the resolved config as a dict), ``versions`` ({"cvmtl", "torch"}).
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvmtl.serialization import load_weights_only

MAGIC_KEY = "cvmtl_checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash (or an exception) part-way leaves whatever was at ``path`` before untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {MAGIC_KEY: 1, "format_version": FORMAT_VERSION, **state}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX when both sit on one file system
    except OSError as err:  # disk full, quota, read-only: say which file, and that nothing broke
        tmp.unlink(missing_ok=True)
        raise OSError(
            err.errno,
            f"cannot write checkpoint {path}: {err.strerror or err} "
            f"(the previous {path.name}, if any, is unchanged)",
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable
    _remove_stale_temps(path)
    return path


def link_checkpoint(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` the same file as the finished checkpoint ``source``, atomically: a hard link
    under a temp name, then a rename (a second copy where the file system has no hard links).

    last.pt and best.pt of a best epoch hold the same checkpoint: linking spares writing (and
    fsyncing) it twice. Replacing either later writes a new file, so the other keeps its content.
    """
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network / FUSE file systems): copy
        return save_checkpoint(load_checkpoint(source), path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of ``path`` left by writers that died mid-write (``kill -9``, OOM
    killer): nothing else would ever remove them. A temp file of a live process is kept."""
    for old in path.parent.glob(f".{path.name}.tmp*"):
        pid = old.name.rsplit(".tmp", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            old.unlink(missing_ok=True)
        except OSError:  # exists, owned by someone else
            pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Open a cvmtl checkpoint with ``weights_only=True``; anything else is a ValueError."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = load_weights_only(path, map_location)
    except Exception as err:  # truncated file, pickle with custom classes, not a torch file
        raise ValueError(
            f"{path} is not a cvmtl checkpoint: torch.load(weights_only=True) failed: "
            f"{_load_failure(err, path)}"
        ) from None
    if not isinstance(state, dict) or MAGIC_KEY not in state:
        raise ValueError(
            f"{path} is not a cvmtl checkpoint (no '{MAGIC_KEY}' key); "
            "expected a file written by tools/train.py"
        )
    version = state.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {version} is newer than this cvmtl ({FORMAT_VERSION})"
        )
    return state


def _load_failure(err: Exception, path: Path) -> str:
    """One line on why torch.load failed (its weights_only message is a long paragraph)."""
    if not zipfile.is_zipfile(path):  # what torch.save writes (and so cvmtl) is a zip archive
        return "not a torch zip archive (truncated, or another kind of file)"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for i, line in enumerate(lines):  # "... WeightsUnpickler error: " + what was refused
        if "Unpickler error" in line:
            what = line.split("Unpickler error:", 1)[-1].strip()
            return what or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else type(err).__name__


def get_rng_state() -> dict[str, Any]:
    """Torch, CUDA (current device), numpy and Python RNG states as weights_only-safe values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [torch.cuda.get_rng_state()]
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": py_version, "state": list(py_internal), "gauss_next": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0].cpu())
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


class preserved_rng:
    """Context manager: code inside may draw random numbers without moving the training streams.

    Evaluation and DataLoader iterator creation (which draws a base seed from the global torch
    RNG) run inside it, so a resumed run draws exactly what an uninterrupted one would.
    """

    def __enter__(self) -> preserved_rng:
        self._state = get_rng_state()
        return self

    def __exit__(self, *exc: object) -> None:
        set_rng_state(self._state)
