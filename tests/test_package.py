"""The package's promises about imports and its public surface."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("imports", "heavy"),
    [
        # import skelprep stays light: no framework at import time
        (
            "skelprep, skelprep.store, skelprep.build, skelprep.cli, skelprep.layout",
            ("torch", "distributed", "dask.distributed", "monai", "torchio"),
        ),
        # skelprep --help: not even the core's scipy and numba, nor zarr and numpy (0.2-0.3 s and 60-80 ms)
        (
            "skelprep.cli, skelprep.build",
            ("numba", "scipy", "skimage", "torch", "dask.distributed", "zarr", "numpy"),
        ),
        # the topology targets load their distance and component libraries on first use
        ("skelprep.targets", ("edt", "cc3d", "scipy", "numba", "skimage", "torch", "zarr")),
    ],
)
def test_imports_stay_light(imports: str, heavy: tuple[str, ...]) -> None:
    code = f"import sys, {imports};heavy = [m for m in {heavy!r} if m in sys.modules];assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_fresh_build_reads_back_with_zarr(cracks_dataset, tmp_path):
    from skelprep.build import build
    from skelprep.store import open_store, verify_case_data

    out = str(tmp_path / "fresh.zarr")
    assert len(build(cracks_dataset, out, workers=1).built) == 3
    store = open_store(out)  # complete, and every array passes its checksum
    assert len(store) == 3 and not any(verify_case_data(store[c]) for c in store)


def test_public_api():
    import skelprep

    for name in skelprep.__all__:
        assert getattr(skelprep, name) is not None
    assert callable(skelprep.open_store)


def _source_tree(tmp_path: Path) -> Path:
    """What an sdist holds for a build: the project files and the package, without bytecode."""
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "skelprep", src / "skelprep", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def test_metadata_builds_without_licence_deprecation_warnings(tmp_path) -> None:
    """The licence is an SPDX expression with its file (PEP 639): setuptools warns about neither."""
    root = Path(__file__).resolve().parents[1]
    src = _source_tree(tmp_path)
    code = (
        "import sys; from setuptools import build_meta\n"
        f"print(build_meta.prepare_metadata_for_build_wheel({str(tmp_path)!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], cwd=src, capture_output=True, text=True, check=True
    )
    assert "license" not in done.stderr.lower(), done.stderr
    metadata = (tmp_path / done.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert "Copyright (c) skelprep developers" in (root / "LICENSE").read_text()


def test_the_wheel_carries_the_type_marker(tmp_path) -> None:
    """Type checkers read skelprep's annotations only where the installed package has py.typed (PEP 561)."""
    import zipfile

    src = _source_tree(tmp_path)
    code = f"from setuptools import build_meta\nprint(build_meta.build_wheel({str(tmp_path)!r}))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, check=True)
    wheel = tmp_path / done.stdout.strip().splitlines()[-1]
    assert "skelprep/py.typed" in zipfile.ZipFile(wheel).namelist()
