"""The package's promises about imports and its public surface."""

from __future__ import annotations

import subprocess
import sys


def test_import_skelprep_is_light():
    code = (
        "import sys, skelprep, skelprep.store, skelprep.build, skelprep.cli, skelprep.layout;"
        "heavy = [m for m in ('torch', 'distributed', 'dask.distributed', 'monai', 'torchio') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api():
    import skelprep

    for name in skelprep.__all__:
        assert getattr(skelprep, name) is not None
    assert callable(skelprep.open_store)


def test_cli_start_imports_no_heavy_module():
    """``skelprep --help`` (and an up-to-date rerun's imports) load neither the core nor a framework."""
    code = (
        "import sys; from skelprep.cli import cli; import skelprep.build;"
        "heavy = [m for m in ('numba', 'scipy', 'skimage', 'torch', 'dask.distributed') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
