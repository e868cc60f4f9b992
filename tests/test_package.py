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
