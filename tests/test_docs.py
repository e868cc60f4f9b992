"""The python examples of README.md and docs/store-format.md run as pasted, at the root of a built examples/ copy.

Every fenced ``python`` block runs (each in a fresh namespace, the working directory a copy of the repository's
``examples/`` with every dataset built, as after ``make demo``), except the blocks listed in :data:`NOT_RUN`
with the reason; a new block runs unless it is added there.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from .helpers import ROOT

# A block that does not run here, named by a line of it, and why.
NOT_RUN = {
    "loss = criterion(outputs,": "a fragment: 'outputs' and 'logits' are the reader's model's",
    "from skelprep.monai import": "tests/test_readme_adapters.py runs it",
    "from skelprep.torchio import": "tests/test_readme_adapters.py runs it",
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


DOCUMENTS = ("README.md", "docs/store-format.md")
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
