"""The store owns only what it created: whatever the case ids, a build changes nothing outside its store.

Case ids come from hostile path parts (``..``, ``.``, empty and absolute parts
through a glob; unicode, newlines, backslashes, case twins, reserved names as
file names) in every layout (nnU-Net raw, generic ``labels/``, globs). Each
example builds twice (the second with ``--force --prune``: the deleting paths)
and compares a sibling folder and the dataset's inputs, byte for byte.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skelprep._util import plain_path_problem
from skelprep.build import BuildError, build
from skelprep.layout import LayoutError
from skelprep.store import open_store

from .helpers import write_png

MASK = np.eye(6, dtype=np.uint8)
# Parts of mask file names: each makes a real file, and each has broken an id rule somewhere.
NAME_PARTS = ["c1", "C1", "é", "e\u0301", "Ω", "a\nb", "a\\b", "zarr.json", "__x", " sp ", "victim", "x.zarr"]
names = st.lists(
    st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=2).map("/".join),
    min_size=1,
    max_size=4,
    unique=True,
)


@st.composite
def globs(draw) -> tuple[bool, str]:
    """(absolute?, a masks glob below ``seg/``): down, then ".." parts, maybe into the sibling folder.

    Only a glob gives an id such parts (a file cannot be named ".."); the walk layouts never see them.
    Two ".." more than the folders down reach the sandbox, beside the dataset: drawn most often.
    """
    down = draw(st.lists(st.sampled_from(["*", "**", "c1", ".", ""]), min_size=1, max_size=2))
    depth = sum(part not in (".", "") for part in down)
    up = [".."] * (depth + draw(st.sampled_from([0, 1, 2, 2, 2])))
    into = draw(st.sampled_from([[], ["victim"]]))
    last = draw(st.sampled_from(["*.png", "c1.png"]))
    return draw(st.booleans()), "/".join(["seg", *down, *up, *into, last])


def _snapshot(folder: Path, skip: tuple[str, ...]) -> dict[str, bytes | None]:
    """Every entry below ``folder`` but ``skip`` (bytes; None for a folder; the target for a link)."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if rel in skip or rel.startswith(tuple(s + "/" for s in skip)):
                continue
            if os.path.islink(path):
                found[rel] = os.readlink(path).encode()
            else:
                found[rel] = None if os.path.isdir(path) else Path(path).read_bytes()
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return found


def _dataset(sandbox: Path, layout: str, ids: list[str]) -> Path:
    ds = sandbox / "ds"
    folder = {"nnunet": "labelsTr", "generic": "labels", "glob": "seg"}[layout]
    if layout == "nnunet":
        (ds / folder).mkdir(parents=True)
        (ds / "dataset.json").write_text(
            json.dumps({"labels": {"background": 0, "a": 1}, "file_ending": ".png"})
        )
    for case_id in [*ids, "c1/m"]:  # a folder for a glob to climb out of
        write_png(ds / folder / f"{case_id}.png", MASK)
    # outside the dataset: what a climbing id would reach, and masks a climbing glob finds
    (sandbox / "victim" / "c1").mkdir(parents=True)
    (sandbox / "victim" / "c1" / "keep.txt").write_text("keep")
    (sandbox / "victim" / "zarr.json").write_text("{}")
    write_png(sandbox / "victim" / "c1.png", MASK)
    write_png(sandbox / "c1.png", MASK)
    return ds


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=st.sampled_from(["nnunet", "generic", "glob"]), ids=names, pattern=globs())
def test_a_build_changes_nothing_outside_its_store(layout, ids, pattern):
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        ds = _dataset(sandbox, layout, ids)
        absolute, glob = pattern
        masks = None if layout != "glob" else f"{ds}/{glob}" if absolute else glob
        skip = ("ds/skeletons.zarr", "ds/skeletons.zarr.lock")
        before = _snapshot(sandbox, skip)
        for again in (False, True):
            try:
                build(ds, masks=masks, workers=1, force=again, prune=again)
            except (LayoutError, BuildError):  # nothing matched, or the store path is refused
                pass
            assert _snapshot(sandbox, skip) == before, (layout, ids, masks)
        if (ds / "skeletons.zarr" / "zarr.json").exists():
            assert not [c for c in open_store(ds / "skeletons.zarr").case_ids if plain_path_problem(c)]


def test_the_lowest_write_level_refuses_keys_that_leave_the_store(tmp_path):
    from skelprep.store.write import StoreWriter

    store = tmp_path / "s.zarr"
    writer = StoreWriter.open(str(store), {})
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("keep")
    before = _snapshot(tmp_path, ())
    tube = np.zeros((4, 4), np.uint8)
    for key in ("../victim/x", "/tmp/x", "a/../../victim/x", "a\\b", "", ".", "a/../.."):
        with pytest.raises(ValueError, match="not a relative path of plain names"):
            writer.write_case(key, {"tube": (tube, None)}, {"source": "x.png"})  # refused before any write
        with pytest.raises(ValueError, match="not a relative path of plain names"):
            writer.delete_case(key)
    assert _snapshot(tmp_path, ()) == before
