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


@pytest.fixture(scope="session")
def nifti(tmp_path_factory):
    """(dataset, store): one 3D NIfTI case with a rotated, anisotropic affine, built (adapter tests)."""
    from .adapter_data import built, nifti_dataset

    dataset = nifti_dataset(tmp_path_factory.mktemp("adapters") / "nii")
    return dataset, built(dataset)


@pytest.fixture(scope="session")
def nifti_topology(tmp_path_factory):
    """(dataset, store): the ``nifti`` case built with every topology target (adapter tests)."""
    from .adapter_data import TOPOLOGY, built, nifti_dataset

    dataset = nifti_dataset(tmp_path_factory.mktemp("adapters") / "nii-topology")
    return dataset, built(dataset, targets=TOPOLOGY)


@pytest.fixture(scope="session")
def png(tmp_path_factory):
    """(dataset, store): one real 640x1024 road-crack PNG case, built (adapter tests)."""
    from .adapter_data import built, png_dataset

    dataset = png_dataset(tmp_path_factory.mktemp("adapters") / "png")
    return dataset, built(dataset)


from ._slurm import slurm  # noqa: E402,F401  (the test Slurm cluster, session-wide)
