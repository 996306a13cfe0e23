"""Shared test set-up: offline, deterministic, small."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_nyuv2() -> Path:
    """../shared/nyuv2 (real split and mapping files); skips the test when it is absent."""
    path = SHARED / "nyuv2"
    if not (path / "splits.mat").is_file():
        pytest.skip("../shared/nyuv2 is not available")
    return path
