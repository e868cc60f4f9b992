"""The Zarr store contract: layout, attributes, completion, reading with plain zarr."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from skelprep import open_store, skeleton_targets
from skelprep.build import target_arrays
from skelprep.store import StoreError, chunk_shape, open_root, read_regions, verify_case_data
from skelprep.store.write import StoreWriter

from .helpers import ROOT, shard_files, tubes_3d


def _new_store(path):
    root = zarr.open_group(str(path), mode="w")
    root.attrs["skelprep"] = {"format_version": 1, "params": {}, "cases": []}
    return StoreWriter.open(str(path), {})


def write_case(writer, case_id, *, tube, thin, attrs):
    """The targets of a case through the store's one write path, as a build writes them."""
    arrays, target_attrs = target_arrays(type("T", (), {"tube": tube, "thin": thin})())
    return writer.write_case(case_id, arrays, {**attrs, **target_attrs})


def test_write_and_read_back(tmp_path):
    labels = tubes_3d(shape=(70, 40, 130), seed=4)
    targets = skeleton_targets(labels)
    writer = _new_store(tmp_path / "s.zarr")
    write_case(
        writer, "sub/case_1", tube=targets.tube, thin=targets.thin, attrs={"source": "sub/case_1.nii.gz"}
    )
    store = open_store(tmp_path / "s.zarr")
    assert store.case_ids == ["sub/case_1"] and "sub/case_1" in store and len(store) == 1
    case = store["sub/case_1"]
    np.testing.assert_array_equal(case.tube[...], targets.tube)
    np.testing.assert_array_equal(case.thin[...], targets.thin)
    np.testing.assert_array_equal(case.tube[10:50, 5:30, 64:128], targets.tube[10:50, 5:30, 64:128])
    assert case.tube.dtype == np.uint8 and case.tube.chunks == (64, 40, 64)
    assert case.attrs["complete"] is True and case.shape == labels.shape
    assert case.attrs["label_counts"]["tube"] == {
        str(v): int((targets.tube == v).sum()) for v in np.unique(targets.tube) if v
    }
    assert verify_case_data(case) == []
    # plain zarr reads it, as the README promises
    plain = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    np.testing.assert_array_equal(plain["sub/case_1/labels/tube/0"][...], targets.tube)


def test_uint16_labels(tmp_path):
    tube = np.zeros((10, 10), np.uint16)
    tube[3, 3] = 4000
    writer = _new_store(tmp_path / "s.zarr")
    write_case(writer, "c", tube=tube, thin=tube, attrs={"source": "c.png"})
    assert open_store(tmp_path / "s.zarr")["c"].tube.dtype == np.uint16


def test_incomplete_case_is_not_listed(tmp_path):
    writer = _new_store(tmp_path / "s.zarr")
    writer.root.create_group("half", attributes={"skelprep": {"source": "x.png", "complete": False}})
    store = open_store(tmp_path / "s.zarr")
    assert store.case_ids == [] and store.incomplete_case_ids == ["half"] and "half" not in store
    with pytest.raises(StoreError, match="incomplete"):
        store["half"]


def test_altered_chunk_detected(tmp_path):
    tube = tubes_3d(shape=(20, 20, 20), seed=5)
    writer = _new_store(tmp_path / "s.zarr")
    write_case(writer, "c", tube=tube, thin=tube, attrs={"source": "c"})
    chunk = shard_files(tmp_path / "s.zarr" / "c" / "labels" / "tube" / "0")[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = verify_case_data(open_store(tmp_path / "s.zarr")["c"])
    assert problems and problems[0].startswith("tube")


def test_chunk_shape():
    assert chunk_shape((999, 960)) == ((256, 256), (1024, 1024))
    assert chunk_shape((64, 64, 64)) == ((64, 64, 64), (64, 64, 64))
    assert chunk_shape((30, 600, 600)) == ((30, 64, 64), (30, 256, 256))
    assert chunk_shape((300, 512, 512), patch=(64, 64, 64)) == ((32, 32, 32), (128, 128, 128))
    assert chunk_shape((40, 512, 512), patch=(1, 512, 512)) == ((1, 256, 256), (16, 512, 512))
    assert chunk_shape((40, 512, 512), patch=(512, 512)) == chunk_shape(
        (40, 512, 512)
    )  # a 2D hint: 3D default


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="no skelprep store"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a skelprep store"):
        open_store(tmp_path / "plain.zarr")
    root = zarr.open_group(str(tmp_path / "v9.zarr"), mode="w")
    root.attrs["skelprep"] = {"format_version": 9, "versions": {"skelprep": "9.1"}}
    with pytest.raises(
        StoreError, match="format version 9, this skelprep reads 1, 2 and 3; upgrade skelprep to 9.1"
    ):
        open_store(tmp_path / "v9.zarr")
    assert open_root(tmp_path / "plain.zarr") is not None


def test_read_regions_equals_one_read_per_array(tmp_path):
    labels = tubes_3d(shape=(40, 50, 60), seed=1)
    targets = skeleton_targets(labels)
    writer = _new_store(tmp_path / "s.zarr")
    write_case(writer, "c", tube=targets.tube, thin=targets.thin, attrs={"source": "c.nii.gz"})
    case = open_store(tmp_path / "s.zarr")["c"]
    box = (slice(5, 30), slice(0, 50), slice(33, 60))
    tube, thin = read_regions([case.tube, case.thin], box)
    np.testing.assert_array_equal(tube, targets.tube[box])
    np.testing.assert_array_equal(thin, targets.thin[box])


@pytest.mark.parametrize("meta", ["x", ["a"], 3, 1.5])
def test_skelprep_attributes_that_are_no_object_are_refused(tmp_path, meta):

    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.attrs["skelprep"] = meta
    for opened in (
        lambda: open_store(tmp_path / "s.zarr"),
        lambda: StoreWriter.open(tmp_path / "s.zarr", {}),
    ):
        with pytest.raises(
            StoreError, match=r"s.zarr: not a skelprep store \(attributes 'skelprep' is not an"
        ):
            opened()


@pytest.mark.parametrize(
    ("version", "shown"),
    [("2", "'2' (a str)"), (True, "True (a bool)"), (1.0, "1.0 (a float)"), (None, "None")],
)
def test_a_format_version_that_is_no_integer_is_refused_with_its_value_and_type(tmp_path, version, shown):

    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.attrs["skelprep"] = {"format_version": version, "params": {}, "cases": []}
    for opened in (
        lambda: open_store(tmp_path / "s.zarr"),
        lambda: StoreWriter.open(tmp_path / "s.zarr", {}),
    ):
        with pytest.raises(StoreError, match=r"invalid store format_version ") as caught:
            opened()
        assert shown in str(caught.value) and "this skelprep writes" not in str(caught.value)


def test_recorded_paths_resolve_from_the_store_and_its_dataset(tmp_path):
    from skelprep.store import SkeletonStore

    def store(path, dataset):
        return SkeletonStore(None, path, attributes={"skelprep": {"format_version": 2, "dataset": dataset}})

    here = store(tmp_path / "ds" / "skeletons.zarr", "..")
    assert here.dataset_path == str(tmp_path / "ds")
    assert here.resolve("labels/a.png") == str(tmp_path / "ds" / "labels" / "a.png")
    assert here.resolve("../other/a.png") == str(tmp_path / "other" / "a.png")
    assert here.resolve("/abs/a.png") == "/abs/a.png" and here.resolve("s3://b/a.png") == "s3://b/a.png"
    old = store(tmp_path / "s.zarr", "/data/ds")  # stores that recorded absolute paths read as they did
    assert old.dataset_path == "/data/ds" and old.resolve("labels/a.png") == "/data/ds/labels/a.png"
    unknown = store(tmp_path / "s.zarr", None)  # a local dataset of a remote store
    assert unknown.dataset_path is None and unknown.resolve("labels/a.png") is None
    remote = store(tmp_path / "s.zarr", "s3://b/raw/ds")
    assert remote.resolve("../x/a.png") == "s3://b/raw/x/a.png"


def test_non_json_numbers_are_never_written(tmp_path):
    """NaN and Infinity are not JSON: a strict reader would refuse the whole store."""
    import json

    def strict(path):
        return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))

    out = str(tmp_path / "s.zarr")
    writer = StoreWriter.open(out, {"params": {}})
    tube = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_case(
            writer, "c", tube=tube, thin=tube, attrs={"source": "c.png", "spacing": [1.0, float("nan")]}
        )
    assert not (tmp_path / "s.zarr" / "c").exists()  # refused before anything was written
    writer.finalize()
    strict(tmp_path / "s.zarr" / "zarr.json")


def test_the_store_layer_uses_public_apis_only():
    """No private module of zarr, numcodecs or numba, and no hand-written zarr format (shard encoders)."""
    private = re.compile(r"^\s*(from|import) (zarr\.core|numcodecs\._|numba\.(core|np))\b", re.M)
    found = [str(p) for p in (ROOT / "skelprep").rglob("*.py") if private.search(p.read_text())]
    assert found == []
    assert not (ROOT / "skelprep" / "_shards.py").exists() and not (ROOT / "skelprep" / "_files.py").exists()


def test_a_case_write_and_a_rewrite_leave_only_the_complete_case(tmp_path):
    """A rewrite replaces every array; the arrays of the old write are gone, the new one is complete."""
    writer = _new_store(tmp_path / "s.zarr")
    big = tubes_3d(shape=(20, 20, 20), seed=5)
    write_case(writer, "c", tube=big, thin=big, attrs={"source": "c"})
    small = np.zeros((20, 20, 20), np.uint8)
    write_case(writer, "c", tube=small, thin=small, attrs={"source": "c"})
    case = open_store(tmp_path / "s.zarr")["c"]
    assert case.attrs["complete"] is True and verify_case_data(case) == []
    assert (
        shard_files(tmp_path / "s.zarr" / "c" / "labels" / "tube" / "0") == []
    )  # all-zero chunks are not stored
    assert not list(Path(tmp_path).rglob("*.partial"))
