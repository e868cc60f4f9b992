"""Sharded builds (``--shard I/N``): a stable split, shards side by side in one store, and the refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from skelprep import open_store
from skelprep.build import BuildError, BuildParams, build
from skelprep.shard import shard_index, shard_lock
from skelprep.store.lock import store_lock
from skelprep.verify import verify

from .helpers import CLI, assert_same_arrays, check_store, make_dataset, start_build, wait_for_a_write


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)


def test_a_case_keeps_its_shard_whatever_the_other_cases_are():
    ids = [f"case_{i:03d}" for i in range(40)]
    more = [*ids[::2], "new_a", "new_b", "x/nested"]  # half removed, some added
    for n in (1, 2, 4, 7):
        split = {c: shard_index(c, n) for c in ids}
        assert {c: shard_index(c, n) for c in more if c in split} == {c: split[c] for c in more if c in split}
        assert set(split.values()) == set(range(n))  # every shard gets cases: the hash spreads them


def _consolidated_cases(out: Path) -> list[str]:
    doc = json.loads((out / "zarr.json").read_text())
    entries = (doc.get("consolidated_metadata") or {}).get("metadata") or {}
    return sorted(k for k in entries if "/" not in k)


def test_shards_one_after_another_equal_a_whole_build(octa_dataset, tmp_path):
    reference = tmp_path / "whole.zarr"
    assert build(octa_dataset, reference, workers=1).ok
    out = tmp_path / "sharded.zarr"
    ids = open_store(reference).case_ids
    built = []
    for i in range(3):
        report = build(octa_dataset, out, workers=1, shard=(i, 3))
        assert report.ok
        assert {o.case_id for o in report.built} == {c for c in ids if shard_index(c, 3) == i}
        built += [o.case_id for o in report.built]
        meta = open_store(out).attrs
        assert meta["shards"] == {"count": 3, "done": list(range(i + 1))}
        assert meta["cases"] == sorted(built)  # the root lists what is complete so far
    assert sorted(built) == ids  # every case exactly once
    assert _consolidated_cases(out) == ids  # the last shard consolidated the metadata
    assert_same_arrays(out, reference)
    assert all(c.state == "ok" for c in verify(octa_dataset, out))
    info = _run("info", str(out))
    assert "shards    3 of 3 done" in info.stdout, info.stdout
    # A plain build afterwards rebuilds nothing and drops the shard record.
    again = build(octa_dataset, out, workers=1)
    assert not again.built and len(again.up_to_date) == len(ids)
    assert open_store(out).attrs.get("shards") is None and _consolidated_cases(out) == ids


def test_builders_that_would_overlap_refuse(octa_dataset, tmp_path):
    out = os.fspath(tmp_path / "s.zarr")
    assert build(octa_dataset, out, workers=1, shard=(1, 2)).ok
    with shard_lock(out, (0, 2)):  # a builder of shard 0/2 holds its locks
        with pytest.raises(BuildError, match="another build of shard 0/2 is running"):
            build(octa_dataset, out, workers=1, shard=(0, 2))
        with pytest.raises(BuildError, match="another skelprep build is using this store"):
            build(octa_dataset, out, workers=1)
        with pytest.raises(BuildError, match="builders of 2 shards are running.*shards of 2"):
            build(octa_dataset, out, workers=1, shard=(0, 3))
        with pytest.raises(BuildError, match="other shards are being built with other params"):
            build(octa_dataset, out, workers=1, shard=(1, 2), params=BuildParams(radius=1))
        assert build(octa_dataset, out, workers=1, shard=(1, 2), force=True).ok  # side by side
    with store_lock(out):  # a whole-store build runs
        with pytest.raises(BuildError, match="a build of the whole store is running"):
            build(octa_dataset, out, workers=1, shard=(0, 2))
    with pytest.raises(BuildError, match="pruning deletes stored cases of every shard"):
        build(octa_dataset, out, workers=1, shard=(0, 2), prune=True)
    with pytest.raises(BuildError, match="--shard needs a store on a"):
        build(octa_dataset, "s3://bucket/s.zarr", workers=1, shard=(0, 2))
    assert open_store(out).attrs["shards"] == {"count": 2, "done": [1]}  # nothing refused wrote


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--shard", "5/4"], "Invalid value for --shard: shard 5/4: the index must be 0 to 3"),
        (["--shard", "1of4"], "Invalid value for --shard: expected I/N like 0/4"),
        (["--shard", "0/4", "--prune"], "--prune deletes stored cases of every shard"),
    ],
)
def test_bad_shard_options_are_usage_errors(cracks_dataset, args, says):
    result = _run("build", str(cracks_dataset), "--no-progress", *args)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr.splitlines()[-1], result.stderr
    assert not (cracks_dataset / "skeletons.zarr").exists()


@pytest.fixture(scope="module")
def many_cases(tmp_path_factory):
    """40 small 3D cases: a shard build lasts long enough to be met while it runs."""
    return make_dataset(tmp_path_factory.mktemp("shards") / "ds")


def test_shard_builders_run_side_by_side_and_the_last_completes_the_store(many_cases, tmp_path):
    dataset, expected = many_cases
    out = tmp_path / "store.zarr"
    first = start_build(dataset, out, "--shard", "0/2")
    wait_for_a_write(first, out, 0)
    os.killpg(first.pid, signal.SIGSTOP)  # paused mid-way, it holds its locks as a running one does
    try:
        assert first.poll() is None
        whole = _run("build", str(dataset), "--out", str(out), "--no-progress")
        same = _run("build", str(dataset), "--out", str(out), "--shard", "0/2", "--no-progress")
        other = _run("build", str(dataset), "--out", str(out), "--shard", "1/2", "--workers", "1")
        checked = _run("verify", str(dataset), "--out", str(out), "--no-data")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert first.wait(120) == 0, first.stderr.read().decode()
    assert whole.returncode == 1
    assert (
        whole.stderr
        == f"skelprep: error: {out}: another skelprep build is using this store; wait for it to finish\n"
    )
    assert same.returncode == 1
    assert same.stderr == f"skelprep: error: {out}: another build of shard 0/2 is running on this store\n"
    assert other.returncode == 0, other.stderr
    assert "note: a build is running on this store" in checked.stderr
    assert "shards: 1 of 2 done (not done: 0); running: 0/2" in checked.stdout, checked.stdout
    complete, incomplete = check_store(out, expected)
    assert (complete, incomplete) == (len(expected), 0)
    assert _consolidated_cases(out) == sorted(expected)
    assert all(c.state == "ok" for c in verify(dataset, out))
