"""Shared fixtures: small writable copies of the bundled datasets (helpers live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import EXAMPLES, copy_dataset


@pytest.fixture
def octa_dataset(tmp_path: Path) -> Path:
    """The 4-case 3D OCT-A nnU-Net dataset, writable."""
    return copy_dataset(EXAMPLES / "octa3d", tmp_path / "octa3d")


@pytest.fixture
def cracks_dataset(tmp_path: Path) -> Path:
    """The 3-case 2D road-cracks nnU-Net dataset (4 classes), writable."""
    return copy_dataset(EXAMPLES / "road_cracks", tmp_path / "road_cracks")
