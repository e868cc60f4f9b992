"""The MONAI and TorchIO examples of the user guide run as written, on a built copy of examples/octa3d."""

from __future__ import annotations

import re

import pytest

from .adapter_data import built
from .helpers import EXAMPLES, ROOT, copy_dataset

PAGE = "docs/guide/monai-torchio.md"


def page_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / PAGE).read_text(), flags=re.S)


@pytest.fixture(scope="module")
def octa_workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    built(copy_dataset(EXAMPLES / "octa3d", work / "examples" / "octa3d"))
    return work


@pytest.mark.parametrize("framework", ["monai", "torchio"])
def test_readme_example_runs(framework, octa_workdir, monkeypatch):
    pytest.importorskip(framework)
    snippets = [s for s in page_snippets() if f"skelprep.{framework} import" in s]
    assert len(snippets) == 1
    monkeypatch.chdir(octa_workdir)
    namespace: dict = {}
    exec(compile(snippets[0], f"{PAGE} ({framework} example)", "exec"), namespace)
    batch = namespace["batch"]
    tube = batch["tube"] if framework == "monai" else batch["tube"]["data"]
    assert tuple(tube.shape) == (4, 1, 32, 32, 32)
    assert (
        (tube > 0) & (tube != (batch["label"] if framework == "monai" else batch["label"]["data"]))
    ).sum() == 0
