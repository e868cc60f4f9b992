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
        # skelprep --help and an up-to-date rerun's imports: not even the core's scipy and numba, nor
        # zarr and numpy (0.2-0.3 s and 60-80 ms of import; the rerun of 504 crops takes 0.2 s)
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


def _build_in_a_new_process(dataset, out, expect: str, unimported: tuple[str, ...]) -> None:
    """``build(dataset, out)`` in a fresh interpreter: its report satisfies ``expect``, ``unimported`` stay so."""
    code = (
        "import sys; from skelprep.build import build\n"
        f"report = build({str(dataset)!r}, {out!r}, workers=1)\n"
        f"assert report.ok and {expect}, report.as_dict()\n"
        f"assert not {set(unimported)!r} & set(sys.modules), 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_up_to_date_rerun_of_a_local_store_imports_neither_zarr_nor_numpy(cracks_dataset):
    from skelprep.build import build

    assert build(cracks_dataset, workers=1).ok
    _build_in_a_new_process(
        cracks_dataset, None, "len(report.up_to_date) == 3 and not report.built", ("zarr", "numpy")
    )


def test_a_fresh_build_of_2d_masks_into_a_local_store_imports_no_zarr(cracks_dataset, tmp_path):
    # zarr's import (0.2-0.25 s on 2 cores) was 15 % of a fresh build of 14 small 2D masks; asyncio's 30 ms
    out = str(tmp_path / "fresh.zarr")
    _build_in_a_new_process(cracks_dataset, out, "len(report.built) == 3", ("zarr", "asyncio"))
    from skelprep.store import open_store, verify_case_data

    store = open_store(out)  # read back with zarr: complete, and every array passes its checksum
    assert len(store) == 3 and not any(verify_case_data(store[c]) for c in store)


def test_public_api():
    import skelprep

    for name in skelprep.__all__:
        assert getattr(skelprep, name) is not None
    assert callable(skelprep.open_store)


def test_metadata_builds_without_licence_deprecation_warnings(tmp_path) -> None:
    """The licence is an SPDX expression with its file (PEP 639): setuptools warns about neither."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "skelprep", src / "skelprep", ignore=shutil.ignore_patterns("__pycache__"))
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
