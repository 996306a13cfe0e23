"""The shipped configs (YAML files beside this module), found by name as in model zoos.

``--config synthetic_demo`` (or ``synthetic_demo.yaml``) names a shipped config, so a pip install
has them without a checkout; a path to an existing file always wins.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def shipped() -> list[str]:
    """The names of the shipped configs."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def find_config(name_or_path: str | Path) -> Path | None:
    """The file ``name_or_path`` names: an existing path, else a shipped config of that name
    (with or without ``.yaml``, or a ``configs/NAME.yaml`` path of a checkout); None if neither."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = HERE / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if candidate.is_file() and (len(path.parts) == 1 or path.parent.name == "configs"):
        return candidate
    return None
