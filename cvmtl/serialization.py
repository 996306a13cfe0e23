"""The one place that reads torch files: ``torch.load`` with ``weights_only=True`` (tensors,
numbers, strings and containers of them; never arbitrary pickled code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """What ``path`` holds, read safely; a file that is not such a torch file raises (the
    caller turns it into its own one-line error)."""
    return torch.load(path, map_location=map_location, weights_only=True)
