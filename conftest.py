"""pytest set-up for the package's doctests (``--doctest-modules`` over ``skelprep/``, see pyproject.toml).

The examples in the docstrings are written as a user would type them at the repository root, e.g.
``open_store("examples/road_cracks/skeletons.zarr")``. Each doctest runs in a copy of ``examples/`` whose
datasets are built once per session (about 1 s), so the examples find their stores and the checkout is never
written to. The fixtures of ``tests/`` are in ``tests/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

# Modules that import an optional framework at import time: not collected without it.
collect_ignore = [
    p
    for p, package in {
        "skelprep/torch": "torch",
        "skelprep/monai.py": "monai",
        "skelprep/torchio.py": "torchio",
        "skelprep/nnunet/loss.py": "torch",
        "skelprep/nnunet/transforms.py": "batchgeneratorsv2",
        "skelprep/nnunet/trainer.py": "nnunetv2",
        "skelprep/nnunet/trainers": "nnunetv2",
    }.items()
    if importlib.util.find_spec(package) is None
]


# End-to-end test modules: whole builds (threads, Dask clusters), CLI processes, object stores, kills,
# benchmarks, the pipelines, the framework adapters and the documentation. They are marked ``integration``; ``make test-fast`` runs the rest.
INTEGRATION = {
    "test_bad_inputs.py",
    "test_bench.py",
    "test_bench_engines.py",
    "test_bench_streaming.py",
    "test_build.py",
    "test_cli.py",
    "test_cluster.py",
    "test_concurrency.py",
    "test_crash_safety.py",
    "test_docs.py",
    "test_docs_adapters.py",
    "test_monai.py",
    "test_nnunet.py",
    "test_predict.py",
    "test_readonly_inputs.py",
    "test_remote.py",
    "test_reproduce.py",
    "test_resource_limits.py",
    "test_shard.py",
    "test_slurm.py",
    "test_streaming.py",
    "test_torchio.py",
    "test_train.py",
}
# Doctests of the adapter modules import their frameworks: integration too (make test-fast does not collect them).
ADAPTERS = ("skelprep/torch/", "skelprep/nnunet/", "skelprep/monai.py", "skelprep/torchio.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.relative_to(ROOT).as_posix() if item.path.is_relative_to(ROOT) else ""
        if item.path.name in INTEGRATION or path.startswith(ADAPTERS):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def built_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a copy of ``examples/`` with every example dataset built (default store paths)."""
    from skelprep.build import build

    folder = tmp_path_factory.mktemp("doctest")
    examples = shutil.copytree(
        ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("skeletons*.zarr*", "previews")
    )
    for dataset in sorted(p for p in examples.iterdir() if p.is_dir()):
        # with images where the dataset has them, as train.py builds them (store format 2)
        report = build(dataset, workers=1, with_images=(dataset / "imagesTr").is_dir())
        assert report.ok, report.failed
    return folder


@pytest.fixture(autouse=True)
def _doctests_run_beside_built_examples(request: pytest.FixtureRequest) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("built_examples"))
