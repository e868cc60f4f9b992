"""The package's promises about imports and its public surface."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("imports", "heavy"),
    [
        # import skelprep stays light: no framework at import time
        (
            "skelprep, skelprep.store, skelprep.build, skelprep.cli, skelprep.layout",
            ("torch", "distributed", "dask.distributed", "monai", "torchio"),
        ),
        # skelprep --help and an up-to-date rerun's imports: not even the core's scipy and numba
        ("skelprep.cli, skelprep.build", ("numba", "scipy", "skimage", "torch", "dask.distributed")),
    ],
)
def test_imports_stay_light(imports: str, heavy: tuple[str, ...]) -> None:
    code = f"import sys, {imports};heavy = [m for m in {heavy!r} if m in sys.modules];assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api():
    import skelprep

    for name in skelprep.__all__:
        assert getattr(skelprep, name) is not None
    assert callable(skelprep.open_store)
