"""The Zarr store contract: layout, attributes, completion, reading with plain zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from skelprep import open_store, skeleton_targets
from skelprep.store import StoreError, array_checksum, chunk_shape, open_root, read_regions, verify_case_data
from skelprep.writer import write_case

from .helpers import shard_files, tubes_3d


def _new_store(path):
    root = zarr.open_group(str(path), mode="w")
    root.attrs["skelprep"] = {"format_version": 1, "params": {}, "cases": []}
    return root


def test_write_and_read_back(tmp_path):
    labels = tubes_3d(shape=(70, 40, 130), seed=4)
    targets = skeleton_targets(labels)
    root = _new_store(tmp_path / "s.zarr")
    write_case(
        root, "sub/case_1", tube=targets.tube, thin=targets.thin, attrs={"source": "sub/case_1.nii.gz"}
    )
    store = open_store(tmp_path / "s.zarr")
    assert store.case_ids == ["sub/case_1"] and "sub/case_1" in store and len(store) == 1
    case = store["sub/case_1"]
    np.testing.assert_array_equal(case.tube[...], targets.tube)
    np.testing.assert_array_equal(case.thin[...], targets.thin)
    np.testing.assert_array_equal(case.tube[10:50, 5:30, 64:128], targets.tube[10:50, 5:30, 64:128])
    assert case.tube.dtype == np.uint8 and case.tube.chunks == (70, 40, 128)
    assert case.attrs["complete"] is True and case.shape == labels.shape
    assert case.attrs["label_counts"]["tube"] == {
        str(v): int((targets.tube == v).sum()) for v in np.unique(targets.tube) if v
    }
    assert verify_case_data(case) == []
    # plain zarr reads it, as the README promises
    plain = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    np.testing.assert_array_equal(plain["sub/case_1/tube"][...], targets.tube)


def test_uint16_labels(tmp_path):
    tube = np.zeros((10, 10), np.uint16)
    tube[3, 3] = 4000
    root = _new_store(tmp_path / "s.zarr")
    write_case(root, "c", tube=tube, thin=tube, attrs={"source": "c.png"})
    assert open_store(tmp_path / "s.zarr")["c"].tube.dtype == np.uint16


def test_incomplete_case_is_not_listed(tmp_path):
    root = _new_store(tmp_path / "s.zarr")
    root.create_group("half", attributes={"skelprep": {"source": "x.png", "complete": False}})
    store = open_store(tmp_path / "s.zarr")
    assert store.case_ids == [] and store.incomplete_case_ids == ["half"] and "half" not in store
    with pytest.raises(StoreError, match="incomplete"):
        store["half"]


def test_altered_chunk_detected(tmp_path):
    tube = tubes_3d(shape=(20, 20, 20), seed=5)
    root = _new_store(tmp_path / "s.zarr")
    write_case(root, "c", tube=tube, thin=tube, attrs={"source": "c"})
    chunk = shard_files(tmp_path / "s.zarr" / "c" / "tube")[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = verify_case_data(open_store(tmp_path / "s.zarr")["c"])
    assert problems and problems[0].startswith("tube")


def test_chunk_shape():
    assert chunk_shape((999, 960)) == ((256, 256), (1024, 1024))
    assert chunk_shape((64, 64, 64)) == ((64, 64, 64), (64, 64, 64))
    assert chunk_shape((30, 600, 600)) == ((30, 128, 128), (30, 256, 256))


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="no skelprep store"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a skelprep store"):
        open_store(tmp_path / "plain.zarr")
    root = zarr.open_group(str(tmp_path / "v9.zarr"), mode="w")
    root.attrs["skelprep"] = {"format_version": 9}
    with pytest.raises(StoreError, match="format version 9"):
        open_store(tmp_path / "v9.zarr")
    assert open_root(tmp_path / "plain.zarr") is not None


@pytest.mark.parametrize(
    ("shape", "dtype", "slice_chunks"),
    [
        ((512, 512), np.uint8, False),
        ((600, 999), np.uint16, False),
        ((100, 300, 257), np.uint8, False),
        ((40, 70, 90), np.float32, True),
        ((20, 130, 20), np.int16, False),
    ],
)
def test_write_array_writes_the_bytes_zarr_writes(tmp_path, shape, dtype, slice_chunks):
    """The lean shard writer's files equal zarr's own, byte for byte, and read back equal."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from skelprep.writer import write_array

    rng = np.random.default_rng(0)
    data = ((rng.random(shape) < 0.002) * 7).astype(dtype)
    data[..., : shape[-1] // 3] = 0  # whole chunks of zeros: left out by both
    ours = zarr.open_group(str(tmp_path / "ours.zarr"), mode="w")
    checksum = write_array(ours, "a", data, slice_chunks=slice_chunks)
    lead = (1,) if slice_chunks else ()
    chunks, shards = chunk_shape(shape[len(lead) :])
    lead_shard = (min(16, shape[0]),) if slice_chunks else ()
    theirs = zarr.open_group(str(tmp_path / "theirs.zarr"), mode="w").create_array(
        "a",
        shape=shape,
        dtype=dtype,
        chunks=lead + chunks,
        shards=lead_shard + shards,
        compressors=[ZstdCodec(level=3), Crc32cCodec()],
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "."},
    )
    theirs[...] = data

    def files(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    assert files(tmp_path / "ours.zarr" / "a") == files(tmp_path / "theirs.zarr" / "a")
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "ours.zarr"), mode="r")["a"][...], data)
    assert checksum == array_checksum(data)


def test_read_regions_equals_one_read_per_array(tmp_path):
    labels = tubes_3d(shape=(40, 50, 60), seed=1)
    targets = skeleton_targets(labels)
    root = _new_store(tmp_path / "s.zarr")
    write_case(root, "c", tube=targets.tube, thin=targets.thin, attrs={"source": "c.nii.gz"})
    case = open_store(tmp_path / "s.zarr")["c"]
    box = (slice(5, 30), slice(0, 50), slice(33, 60))
    tube, thin = read_regions([case.tube, case.thin], box)
    np.testing.assert_array_equal(tube, targets.tube[box])
    np.testing.assert_array_equal(thin, targets.thin[box])


def test_in_place_writes_keep_metadata_documents_whole(tmp_path, monkeypatch):
    """``put(whole=False)`` writes chunks in place but every ``zarr.json`` through a temporary name.

    A kill while an array's ``zarr.json`` was written in place left it empty, and zarr's
    listing of the store failed on it until the next build.
    """
    from skelprep import _files

    whole = []
    real = _files._write_whole
    monkeypatch.setattr(_files, "_write_whole", lambda path, value: whole.append(path) or real(path, value))
    _files.put(str(tmp_path), {"case/tube/zarr.json": b"{}", "case/tube/c.0.0": b"x"}, whole=False)
    assert whole == [str(tmp_path / "case/tube/zarr.json")]
    assert (tmp_path / "case/tube/c.0.0").read_bytes() == b"x"
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize("dtype", ["|u1", "<u2", "|i1", "<i2", "<i4", "<u8"])
@pytest.mark.parametrize(
    ("shape", "chunks", "shards"),
    [
        ((512, 512), (256, 256), (512, 512)),  # 2D, one shard
        ((600, 999), (256, 256), (1024, 1024)),  # 2D, edge chunks
        ((5, 7), (5, 7), (5, 7)),  # tiny 2D
        ((100, 300, 257), (64, 64, 64), (128, 128, 128)),  # 3D
        ((40, 70, 90), (1, 70, 90), (16, 70, 90)),  # 3D as slices (slice_chunks)
        ((3, 64, 64, 64), (1, 64, 64, 64), (1, 64, 64, 64)),  # channels first
    ],
)
def test_array_documents_are_the_bytes_zarr_writes(shape, dtype, chunks, shards):
    """A case array's zarr.json, built without zarr, equals zarr's own byte for byte."""
    from skelprep.writer import _array_metadata, _zarr_array_metadata

    _array_metadata.cache_clear()
    assert _array_metadata(shape, dtype, chunks, shards) == _zarr_array_metadata(shape, dtype, chunks, shards)


def test_group_documents_are_the_bytes_zarr_writes(tmp_path):
    from skelprep.writer import _group_document, _json_bytes

    attributes = {"skelprep": {"format_version": 2, "cases": ["a"], "spacing": [0.5, 1.0], "x": None}}
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="a", use_consolidated=False)
    root.attrs.update(attributes)
    assert (tmp_path / "s.zarr" / "zarr.json").read_bytes() == _json_bytes(_group_document(attributes))
    assert zarr.config.get("json_indent") == 2


@pytest.mark.parametrize("counts", [(1,), (5,), (2, 3), (4, 4), (1, 4, 4), (16, 1, 1), (3, 5, 7), (8, 8, 8)])
def test_shard_chunk_order_is_zarrs(counts):
    from zarr.core.indexing import morton_order_iter

    from skelprep._shards import _morton_order

    assert _morton_order(counts) == tuple(morton_order_iter(counts))


def test_a_local_store_is_recorded_without_zarr_as_zarr_writes_it(tmp_path):
    """record_build on a local path: the folder's path is the root, the root document zarr's."""
    import shutil

    from skelprep.writer import finalize_store, record_build

    def by_zarr(path, attributes):  # what open_for_writing wrote through zarr's API before
        zarr.open_group(str(path), mode="a", use_consolidated=False).attrs.update(attributes)
        return (path / "zarr.json").read_bytes()

    ours = record_build(tmp_path / "new.zarr", {"params": {"radius": 2}})  # a new store
    assert ours == str(tmp_path / "new.zarr")
    attributes = zarr.open_group(ours, mode="r").attrs.asdict()
    assert (tmp_path / "new.zarr" / "zarr.json").read_bytes() == by_zarr(tmp_path / "z1.zarr", attributes)
    finalize_store(ours, ours, since={})  # consolidated: the next build drops them, as zarr did
    shutil.copytree(tmp_path / "new.zarr", tmp_path / "z2.zarr")
    assert record_build(ours, {"params": {"radius": 3}}) == ours
    attributes = zarr.open_group(ours, mode="r").attrs.asdict()
    assert (tmp_path / "new.zarr" / "zarr.json").read_bytes() == by_zarr(tmp_path / "z2.zarr", attributes)
    (tmp_path / "foreign.zarr").mkdir()
    zarr.open_group(str(tmp_path / "foreign.zarr" / "node"), mode="w")
    with pytest.raises(StoreError, match="not a skelprep store"):
        record_build(tmp_path / "foreign.zarr", {})


@pytest.mark.parametrize("meta", ["x", ["a"], 3, 1.5])
def test_skelprep_attributes_that_are_no_object_are_refused(tmp_path, meta):
    from skelprep.writer import record_build

    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.attrs["skelprep"] = meta
    for opened in (lambda: open_store(tmp_path / "s.zarr"), lambda: record_build(tmp_path / "s.zarr", {})):
        with pytest.raises(
            StoreError, match=r"s.zarr: not a skelprep store \(attributes 'skelprep' is not an"
        ):
            opened()


@pytest.mark.parametrize(
    ("version", "shown"),
    [("2", "'2' (a str)"), (True, "True (a bool)"), (1.0, "1.0 (a float)"), (None, "None")],
)
def test_a_format_version_that_is_no_integer_is_refused_with_its_value_and_type(tmp_path, version, shown):
    from skelprep.writer import record_build

    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.attrs["skelprep"] = {"format_version": version, "params": {}, "cases": []}
    for opened in (lambda: open_store(tmp_path / "s.zarr"), lambda: record_build(tmp_path / "s.zarr", {})):
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

    from skelprep.writer import finalize_store, record_build

    def strict(path):
        return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))

    out = str(tmp_path / "s.zarr")
    root = record_build(out, {"params": {}})
    tube = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_case(root, "c", tube=tube, thin=tube, attrs={"source": "c.png", "spacing": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="not JSON compliant"):
        record_build(out, {"ratio": float("inf")})
    nan_group = {"zarr_format": 3, "node_type": "group", "attributes": {"v": float("nan")}}
    with pytest.raises(ValueError, match="not JSON compliant"):
        finalize_store(root, out, since={}, written={"e": nan_group})
    strict(tmp_path / "s.zarr" / "zarr.json")
