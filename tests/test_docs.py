"""The documentation: its python examples run as pasted, and the site builds in strict mode.

Every fenced ``python`` block of README.md and of every page under docs/ runs (each in a fresh namespace, the
working directory a copy of the repository's ``examples/`` with every dataset built, as after ``make demo``), except
the blocks listed in :data:`NOT_RUN` with the reason; a new block, or a new page, runs unless it is added there.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from .helpers import ROOT

# A block that does not run here, named by a line of it, and why.
NOT_RUN = {
    "loss = criterion(outputs,": "a fragment: 'outputs' and 'logits' are the reader's model's",
    "from skelprep.monai import": "tests/test_docs_adapters.py runs it",
    "from skelprep.torchio import": "tests/test_docs_adapters.py runs it",
    "from dask_jobqueue import SLURMCluster": "needs a SLURM cluster",
    'SkeletonDataset("s3://': "needs an S3 bucket",
    "from skelprep.nnunet.trainer import make_trainer": "needs nnU-Net's preprocessed folders "
    "(tests/test_nnunet.py runs the route)",
}
IMPORTS = {"torch": "torch", "tensorstore": "tensorstore", "zarr": "zarr"}


def blocks(path: str) -> list[tuple[str, str]]:
    """(id, code) of the python blocks of a document that are meant to run."""
    text = (ROOT / path).read_text()
    found = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [
        (f"{path}[{i}]", code)
        for i, code in enumerate(found)
        if not any(marker in code for marker in NOT_RUN)
    ]


DOCUMENTS = ("README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")))
BLOCKS = [block for doc in DOCUMENTS for block in blocks(doc)]


def test_every_skipped_block_still_exists():
    text = "".join((ROOT / doc).read_text() for doc in DOCUMENTS)
    assert [m for m in NOT_RUN if m not in text] == []


@pytest.mark.parametrize("name,code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_example_runs_as_pasted(name, code, built_examples, monkeypatch):
    for module in IMPORTS:
        if (
            re.search(rf"^(import|from) {module}\b", code, flags=re.M)
            and importlib.util.find_spec(module) is None
        ):
            pytest.skip(f"{name} needs {module}")
    monkeypatch.chdir(built_examples)  # relative paths as a reader at the repository root types them
    exec(compile(code, name, "exec"), {})


def test_the_site_builds_strictly(tmp_path):
    """``make docs``: a warning (a broken link, a page left out of the nav, a docstring mkdocstrings cannot
    render) fails the build."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs and mkdocstrings are in the docs extra (make install has them)")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "reference" / "store" / "index.html").is_file()
