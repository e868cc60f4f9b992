"""The Dask build: correctness, incrementality, worker-count invariance, schedulers, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from skelprep import open_store, skeleton_targets
from skelprep.build import BuildError, BuildParams, build
from skelprep.io import read_mask
from skelprep.layout import discover
from skelprep.store.lock import store_lock
from skelprep.verify import verify

from .helpers import CLI, shard_files, write_png


def _arrays(store_path):
    store = open_store(store_path)
    return {c: (store[c].tube[...], store[c].thin[...]) for c in store.case_ids}


def test_build_matches_core_and_is_incremental(octa_dataset):
    report = build(octa_dataset, workers=2)
    assert report.ok and len(report.built) == 4
    store = open_store(octa_dataset / "skeletons.zarr")
    for case in discover(octa_dataset).cases:
        labels = read_mask(case.mask).array
        expected = skeleton_targets(labels)
        stored = store[case.case_id]
        np.testing.assert_array_equal(stored.tube[...], expected.tube)
        np.testing.assert_array_equal(stored.thin[...], expected.thin)
        assert stored.attrs["fallback_components"] == expected.fallback_components
        assert stored.attrs["source"] == f"labelsTr/{case.case_id}.nii.gz"
        assert stored.attrs["axes"] == "ijk" and len(stored.attrs["affine"]) == 4
    assert store.attrs["cases"] == [f"octa_{i:03d}" for i in range(4)]
    assert store.attrs["params"]["radius"] == 2

    # unchanged dataset: nothing recomputed
    again = build(octa_dataset, workers=2)
    assert len(again.up_to_date) == 4 and not again.built

    # one changed mask: exactly that case
    mask = octa_dataset / "labelsTr" / "octa_002.nii.gz"
    import nibabel as nib

    img = nib.load(mask)
    data = np.asarray(img.dataobj).copy()
    data[:8] = 0
    nib.save(nib.Nifti1Image(data, img.affine), mask)
    changed = build(octa_dataset, workers=1)
    assert [o.case_id for o in changed.built] == ["octa_002"] and len(changed.up_to_date) == 3
    np.testing.assert_array_equal(
        open_store(octa_dataset / "skeletons.zarr")["octa_002"].tube[...],
        skeleton_targets(data.astype(np.uint8)).tube,
    )

    # changed parameters: everything; --force: everything
    assert len(build(octa_dataset, workers=2, params=BuildParams(radius=1)).built) == 4
    assert len(build(octa_dataset, workers=2, params=BuildParams(radius=1), force=True).built) == 4
    assert all(c.state == "ok" for c in verify(octa_dataset))


def test_identical_output_with_one_and_two_workers(cracks_dataset, tmp_path):
    build(cracks_dataset, tmp_path / "one.zarr", workers=1)
    build(cracks_dataset, tmp_path / "two.zarr", workers=2)
    one, two = _arrays(tmp_path / "one.zarr"), _arrays(tmp_path / "two.zarr")
    assert one.keys() == two.keys() and len(one) == 3
    for case_id in one:
        for a, b in zip(one[case_id], two[case_id], strict=True):
            np.testing.assert_array_equal(a, b)
    assert {int(v) for v in np.unique(one["crack_000"][0])} <= {0, 1, 2, 3}


def test_build_on_existing_local_cluster(cracks_dataset, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True) as cluster:
        report = build(cracks_dataset, tmp_path / "c.zarr", scheduler=cluster.scheduler_address)
    assert report.ok and len(report.built) == 3
    assert all(c.state == "ok" for c in verify(cracks_dataset, tmp_path / "c.zarr"))


def test_failed_cases_do_not_stop_the_build(tmp_path):
    root = tmp_path / "ds"
    mask = np.zeros((30, 30), np.uint8)
    mask[10:14, 3:27] = 1
    write_png(root / "labels" / "good.png", mask)
    (root / "labels" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    report = build(root, workers=1)
    assert [o.case_id for o in report.built] == ["good"]
    assert [o.case_id for o in report.failed] == ["broken"]
    assert "broken.png" in report.failed[0].reason and "\n" not in report.failed[0].reason
    assert not report.ok


def test_modes_and_ignore_label_from_dataset_json(tmp_path):
    root = tmp_path / "nn"
    (root / "labelsTr").mkdir(parents=True)
    (root / "dataset.json").write_text(
        '{"labels": {"background": 0, "a": 1, "ignore": 3}, "file_ending": ".png"}'
    )
    mask = np.zeros((30, 40), np.uint8)
    mask[10:16, 2:38] = 1
    mask[5:25, 18:22] = 3
    write_png(root / "labelsTr" / "c.png", mask)
    report = build(root, workers=1, params=BuildParams(mode="per-class"))
    assert report.ok
    case = open_store(root / "skeletons.zarr")["c"]
    assert case.attrs["params"]["ignore_label"] == 3 and case.attrs["params"]["mode"] == "per-class"
    np.testing.assert_array_equal(
        case.tube[...], skeleton_targets(mask, ignore_label=3, mode="per-class").tube
    )


def test_second_build_on_locked_store_refuses(octa_dataset):
    out = os.fspath(octa_dataset / "skeletons.zarr")
    with store_lock(out):
        with pytest.raises(BuildError, match="another skelprep build"):
            build(octa_dataset, workers=1)


def _store_walks(monkeypatch, out):
    """The os.walk calls over the store ``out`` from now on (remove_partial_files' walk)."""
    walks, walk = [], os.walk

    def spy(top, *args, **kwargs):
        if os.fspath(top) == os.fspath(out):
            walks.append(top)
        return walk(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", spy)
    return walks


def test_a_killed_builds_partial_files_are_removed_by_the_next_build(octa_dataset, monkeypatch):
    out = octa_dataset / "skeletons.zarr"
    assert build(octa_dataset, workers=1).ok  # ends cleanly: a rerun would not walk the store
    partial = out / "octa_001" / "labels" / "tube" / "0" / f"c.0.0.0.{'ab' * 16}.partial"
    # a build killed between zarr's write of a temporary file and its rename into place
    killed = (
        "import os, signal\nfrom skelprep.store.lock import store_lock\n"
        f"with store_lock({os.fspath(out)!r}):\n"
        f"    open({os.fspath(partial)!r}, 'wb').write(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", killed]).returncode == -signal.SIGKILL
    walks = _store_walks(monkeypatch, out)
    report = build(octa_dataset, workers=1)
    assert report.ok and len(report.up_to_date) == 4
    assert walks and not partial.exists()


def test_a_rerun_after_a_clean_build_does_not_walk_the_store(octa_dataset, monkeypatch):
    out = octa_dataset / "skeletons.zarr"
    walks = _store_walks(monkeypatch, out)
    assert build(octa_dataset, workers=1).ok
    assert len(walks) == 1  # a new store: no earlier build said it ended cleanly
    for _ in range(2):
        assert len(build(octa_dataset, workers=1).up_to_date) == 4
    assert len(walks) == 1
    (out.with_name(out.name + ".lock")).write_text("pid 1\n")  # as an older skelprep leaves it
    assert len(build(octa_dataset, workers=1).up_to_date) == 4
    assert len(walks) == 2


def test_verify_reports_states(octa_dataset):
    build(octa_dataset, workers=2)
    store = octa_dataset / "skeletons.zarr"
    (octa_dataset / "labelsTr" / "octa_000.nii.gz").write_bytes(
        (octa_dataset / "labelsTr" / "octa_001.nii.gz").read_bytes()
    )
    for shard in shard_files(store / "octa_001" / "labels" / "thin" / "0"):  # all chunks of one array gone
        shard.unlink()
    (octa_dataset / "labelsTr" / "octa_003.nii.gz").unlink()
    states = {c.case_id: c.state for c in verify(octa_dataset)}
    assert states == {"octa_000": "stale", "octa_001": "corrupt", "octa_002": "ok", "octa_003": "orphan"}
    report = build(octa_dataset, workers=1, prune=True)
    assert report.pruned == ["octa_003"] and sorted(o.case_id for o in report.built) == ["octa_000"]
    # the corrupt case still has matching fingerprints: verify finds it, --force repairs it
    build(octa_dataset, workers=1, force=True)
    assert all(c.state == "ok" for c in verify(octa_dataset))


def test_incremental_consolidation_equals_a_full_one(cracks_dataset, tmp_path):
    """The consolidated metadata a build updates equal those zarr computes from every node."""
    import json
    import warnings

    import zarr
    from PIL import Image

    from skelprep.build import build

    dataset = cracks_dataset
    out = tmp_path / "s.zarr"
    build(dataset, out, workers=2)
    masks = sorted((dataset / "labelsTr").glob("*.png"))
    masks[0].unlink()
    labels = np.asarray(Image.open(masks[1])).copy()
    labels[:8, :8] = 1
    Image.fromarray(labels).save(masks[1])
    report = build(dataset, out, workers=2, prune=True)
    assert report.built and report.pruned
    ours = json.loads((out / "zarr.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(out))
    theirs = json.loads((out / "zarr.json").read_text())
    assert ours["consolidated_metadata"] == theirs["consolidated_metadata"]
    assert ours["attributes"]["skelprep"]["cases"] == open_store(out).case_ids


def test_up_to_date_rerun_writes_nothing(cracks_dataset, tmp_path):
    from skelprep.build import build

    out = tmp_path / "s.zarr"
    build(cracks_dataset, out, workers=1)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    report = build(cracks_dataset, out, workers=2)
    assert not report.built and report.up_to_date
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_2d_build_with_cold_kernels_compiles_only_2d_ones_and_exits_cleanly(tmp_path):
    """A 2D build with an empty numba cache compiles the kernels it runs, not Lee's, and exits 0."""
    mask = np.zeros((300, 300), np.uint8)
    mask[100:104, 10:290] = 1
    write_png(tmp_path / "data" / "labels" / "road.png", mask)
    cache = tmp_path / "numba-cache"  # empty: every kernel the build runs compiles
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    args = [*CLI, "build", str(tmp_path / "data"), "--out", str(tmp_path / "s.zarr"), "--workers", "2"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    compiled = {p.name.split("-")[0] for p in cache.rglob("*.nbi")}
    assert "_thinning._zhang_points" in compiled and "skeleton._ball_points" in compiled
    assert "_thinning._thin_flat" not in compiled  # Lee's kernel: 3D only


@pytest.mark.parametrize("mode", ["joint", "per-class"])
def test_recorded_label_counts_match_the_arrays(cracks_dataset, tmp_path, mode):
    """``label_counts`` of both targets and ``mask_label_counts`` are the arrays' own counts."""
    out = tmp_path / "s.zarr"
    assert build(cracks_dataset, out, params=BuildParams(mode=mode), workers=1).ok
    store = open_store(out)
    for case_id in store.case_ids:
        case = store[case_id]

        def counts(a):
            values, n = np.unique(a, return_counts=True)
            return {str(v): int(k) for v, k in zip(values, n, strict=True) if v}

        recorded = case.attrs["label_counts"]
        assert recorded["tube"] == counts(case.tube[...]) and recorded["thin"] == counts(case.thin[...])
        assert recorded["thin"]  # a skeleton of a non-empty mask is not empty
        mask = read_mask(cracks_dataset / case.attrs["source"]).array
        assert case.attrs["mask_label_counts"] == counts(mask)


def _zarr_documents(store_path) -> str:
    """Every ``zarr.json`` of a local store, concatenated."""
    return "\n".join(p.read_text() for p in sorted(store_path.rglob("zarr.json")))


def test_store_attributes_record_paths_relative_to_the_dataset(tmp_path):
    """No store document names the builder's folders, unless asked with ``absolute_paths``."""
    rng = np.random.default_rng(0)
    ds = tmp_path / "ds"
    for folder in (ds, tmp_path / "elsewhere"):
        write_png(folder / "labels" / "a.png", (rng.random((32, 32)) > 0.6).astype(np.uint8))
        write_png(folder / "images" / "a.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    default = ds / "skeletons.zarr"
    assert build(ds, workers=1, with_images=True).ok
    store = open_store(default)
    assert (store.attrs["dataset"], store.attrs["dataset_name"]) == ("..", "ds")
    assert store["a"].attrs["source"] == "labels/a.png"
    assert store["a"].attrs["images"]["sources"] == ["images/a.png"]
    assert store.source_path("a") == str(ds / "labels" / "a.png")

    apart = tmp_path / "stores" / "s.zarr"
    assert build(ds, apart, workers=1).ok
    assert open_store(apart).attrs["dataset"] == "../../ds"
    assert open_store(apart).source_path("a") == str(ds / "labels" / "a.png")

    # Files outside the dataset root (absolute globs): recorded with '..' parts.
    outside = tmp_path / "glob.zarr"
    elsewhere = tmp_path / "elsewhere"
    globs = dict(masks=f"{elsewhere}/labels/*.png", images=f"{elsewhere}/images/*.png")
    assert build(ds, outside, workers=1, with_images=True, **globs).ok
    store = open_store(outside)
    assert store["a"].attrs["source"] == "../elsewhere/labels/a.png"
    assert store["a"].attrs["images"]["sources"] == ["../elsewhere/images/a.png"]
    assert store.source_path("a") == str(elsewhere / "labels" / "a.png")
    for path in (default, apart, outside):
        assert str(tmp_path) not in _zarr_documents(path), path

    # Only the option names them; up-to-date cases keep what they recorded, --force rewrites them.
    again = build(ds, outside, workers=1, absolute_paths=True, **globs)
    assert len(again.up_to_date) == 1
    store = open_store(outside)
    assert store.attrs["dataset"] == str(ds) and store["a"].attrs["source"] == "../elsewhere/labels/a.png"
    assert build(ds, outside, workers=1, absolute_paths=True, force=True, **globs).built
    store = open_store(outside)
    assert store["a"].attrs["source"] == str(elsewhere / "labels" / "a.png")
    assert store["a"].attrs["images"]["sources"] == [str(elsewhere / "images" / "a.png")]
    assert store.source_path("a") == str(elsewhere / "labels" / "a.png")


@pytest.mark.parametrize("meta", ["x", ["a"], 3])
def test_a_root_whose_skelprep_attributes_are_no_object_is_refused_in_one_line(tmp_path, meta):
    import json

    out = tmp_path / "s.zarr"
    out.mkdir()
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {"skelprep": meta}}
    (out / "zarr.json").write_text(json.dumps(doc))
    write_png(tmp_path / "ds" / "labels" / "a.png", np.eye(8, dtype=np.uint8))
    with pytest.raises(BuildError, match=r"not a skelprep store \(attributes 'skelprep' is not an object\)"):
        build(tmp_path / "ds", out, workers=1)
    assert json.loads((out / "zarr.json").read_text()) == doc
