"""Store format 2: images and labels beside the targets (build --with-images) and streaming from them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

import skelprep.skeleton
from skelprep.build import build
from skelprep.io import read_mask
from skelprep.store import ATTRS_KEY, open_store, verify_case_data
from skelprep.torch import SkeletonDataset
from skelprep.verify import verify

from .helpers import EXAMPLES, copy_cases, crop_padded, mount_tmpfs, shard_files, tubes_3d, write_png

CLI = [sys.executable, "-m", "skelprep.cli"]


def nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def png_dataset(root: Path) -> Path:
    """Generic layout, 2 cases: an RGB channel file and a 16-bit grayscale one per case."""
    rng = np.random.default_rng(0)
    for i in range(2):
        labels = np.zeros((70, 90), np.uint8)
        labels[10:20, 5:80] = 1
        labels[30:60, 40:46] = 2
        write_png(root / "labels" / f"case_{i}.png", labels)
        write_png(root / "images" / f"case_{i}_0000.png", rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
        gray = rng.integers(0, 60000, (70, 90)).astype(np.uint16)
        Image.fromarray(gray).save(root / "images" / f"case_{i}_0001.png")
    return root


def tiff_dataset(root: Path) -> Path:
    """Generic layout, 2 cases: 3D TIFF stacks, float32 images."""
    rng = np.random.default_rng(1)
    for i in range(2):
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "labels" / f"stack_{i}.tif", tubes_3d(shape=(20, 30, 40), seed=i))
        tifffile.imwrite(
            root / "images" / f"stack_{i}.tif", rng.normal(5, 2, (20, 30, 40)).astype(np.float32)
        )
    return root


def source_image(kind: str, case_id: str, dataset: Path) -> np.ndarray:
    """The case's image as the files hold it, read without skelprep, channel-first."""
    if kind == "png":
        rgb = np.moveaxis(np.array(Image.open(dataset / "images" / f"{case_id}_0000.png")), -1, 0)
        gray = np.array(Image.open(dataset / "images" / f"{case_id}_0001.png"))[None]
        return np.concatenate([rgb.astype(np.uint16), gray.astype(np.uint16)])
    if kind == "tiff":
        return tifffile.imread(dataset / "images" / f"{case_id}.tif")[None]
    return np.asanyarray(nib.load(dataset / "imagesTr" / f"{case_id}_0000.nii.gz").dataobj)[None]


def source_label(kind: str, case_id: str, dataset: Path) -> np.ndarray:
    if kind == "png":
        return np.array(Image.open(dataset / "labels" / f"{case_id}.png"))
    if kind == "tiff":
        return tifffile.imread(dataset / "labels" / f"{case_id}.tif")
    return np.asanyarray(nib.load(dataset / "labelsTr" / f"{case_id}.nii.gz").dataobj)


def make(kind: str, root: Path) -> Path:
    if kind == "png":
        return png_dataset(root / "png")
    if kind == "tiff":
        return tiff_dataset(root / "tiff")
    return copy_cases(EXAMPLES / "octa3d", root / "octa", ["octa_000", "octa_001"])


@pytest.fixture(scope="module")
def octa_built(tmp_path_factory) -> Path:
    dataset = make("nifti", tmp_path_factory.mktemp("octa"))
    assert build(dataset, workers=1, with_images=True).ok
    return dataset


@pytest.mark.parametrize("kind", ["png", "nifti", "tiff"])
def test_stored_image_and_label_equal_the_source_files(kind, tmp_path):
    dataset = make(kind, tmp_path)
    report = build(dataset, workers=1, with_images=True)
    assert report.ok and len(report.built) == 2, report.as_dict()
    store = open_store(dataset / "skeletons.zarr")
    assert store.attrs["format_version"] == 3 and store.attrs["with_images"] is True
    pooled = []
    for case_id in store.case_ids:
        case = store[case_id]
        image, label = source_image(kind, case_id, dataset), source_label(kind, case_id, dataset)
        stored = case.image[...]
        assert stored.dtype == image.dtype and stored.shape == image.shape
        np.testing.assert_array_equal(stored, image)
        np.testing.assert_array_equal(case.label[...], label)
        assert verify_case_data(case) == []
        # The statistics are those of the source voxels.
        stats = case.attrs["images"]["channels"]
        fg = label > 0
        for c, channel in enumerate(image.astype(np.float64)):
            assert stats[c]["mean"] == pytest.approx(channel.mean(), rel=1e-9)
            assert stats[c]["std"] == pytest.approx(channel.std(), rel=1e-9)
            assert stats[c]["fg_mean"] == pytest.approx(channel[fg].mean(), rel=1e-9)
            assert stats[c]["fg_p99_5"] == pytest.approx(np.percentile(channel[fg], 99.5))
        pooled.append(image.reshape(image.shape[0], -1).astype(np.float64))
        # Every stored location lies on its class; small classes are listed whole.
        for name, array in (("label", label), ("tube", case.tube[...])):
            locations = case.read(f"{name}_locations")
            assert (array[tuple(locations[:, 1:].T)] == locations[:, 0]).all()
            classes, counts = np.unique(array[array > 0], return_counts=True)
            for cls, n in zip(classes, counts, strict=True):
                assert (locations[:, 0] == cls).sum() == min(n, 10_000)
    data = np.concatenate(pooled, axis=1)
    dataset_stats = store.attrs["intensity_statistics"]
    assert [s["mean"] for s in dataset_stats] == pytest.approx(data.mean(1).tolist(), rel=1e-9)
    assert [s["std"] for s in dataset_stats] == pytest.approx(data.std(1).tolist(), rel=1e-9)
    # A rebuild of the same files is reproducible and costs nothing.
    again = build(dataset, workers=1, with_images=True, force=True)
    assert again.ok
    case = open_store(dataset / "skeletons.zarr")[store.case_ids[0]]
    np.testing.assert_array_equal(
        case.read("tube_locations"), store[store.case_ids[0]].read("tube_locations")
    )
    assert len(build(dataset, workers=1).up_to_date) == 2  # a store with images stays one


@pytest.mark.parametrize(
    ("normalization", "patch"),
    [("zscore", (24, 40, 72)), ("ct", (24, 40, 72)), ("none", (24, 40, 72)), ("zscore", (100, 96, 96))],
)
def test_items_are_normalized_crops_of_the_sources(octa_built, normalization, patch):
    # (100, 96, 96): a patch large enough to be read in parallel threads, overhanging the 64^3 cases
    ds = SkeletonDataset(octa_built, patch_size=patch, foreground_prob=0.5, normalization=normalization)
    store = open_store(octa_built / "skeletons.zarr")
    data = store.attrs["intensity_statistics"][0]
    torch.manual_seed(1)
    for index in (0, 1, 0, 1):
        item = ds[index]
        case_id, offset = item["case_id"], item["offset"].tolist()
        image = source_image("nifti", case_id, octa_built).astype(np.float64)
        stats = store[case_id].attrs["images"]["channels"][0]
        if normalization == "zscore":
            expected = (image - stats["mean"]) / stats["std"]
            assert abs(image.mean() - stats["mean"]) < 1e-9  # the stored statistics are the whole image's
        elif normalization == "ct":
            clipped = np.clip(image, data["fg_p00_5"], data["fg_p99_5"])
            expected = (clipped - data["fg_mean"]) / data["fg_std"]
        else:
            expected = image
        np.testing.assert_allclose(
            item["image"].numpy(), crop_padded(expected, offset, ds.patch_size), atol=1e-4
        )
        label = source_label("nifti", case_id, octa_built)
        np.testing.assert_array_equal(item["label"][0].numpy(), crop_padded(label, offset, ds.patch_size))
        tube = store[case_id].tube[...]
        np.testing.assert_array_equal(item["tube"][0].numpy(), crop_padded(tube, offset, ds.patch_size))


def test_callable_normalization_gets_the_raw_patch_and_statistics(octa_built):
    seen = {}

    def scale(image, stats):
        seen.update(stats)
        return image / 255.0

    item = SkeletonDataset(octa_built, patch_size=16, normalization=scale)[0]
    assert set(seen) == {"case", "dataset"} and seen["case"][0]["std"] > 0
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0


@pytest.mark.parametrize("foreground", ["label", "tube"])
def test_foreground_centres_lie_on_the_requested_class(tmp_path, foreground):
    dataset = make("png", tmp_path)
    assert build(dataset, workers=1, with_images=True).ok
    ds = SkeletonDataset.from_store(
        dataset / "skeletons.zarr", patch_size=(15, 21), foreground_prob=1.0, foreground=foreground
    )
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        item = ds[0]
        centre = item[foreground][0, 7, 10]
        assert centre > 0
        seen.add(int(centre))
    assert seen == {1, 2}  # classes drawn uniformly


def test_from_store_works_with_the_dataset_folder_deleted(tmp_path):
    dataset = make("nifti", tmp_path)
    out = tmp_path / "elsewhere" / "store.zarr"
    assert build(dataset, out, workers=1, with_images=True).ok
    expected = {cid: source_label("nifti", cid, dataset) for cid in ("octa_000", "octa_001")}
    shutil.rmtree(dataset)
    ds = SkeletonDataset.from_store(out, patch_size=32, include_thin=True)
    assert ds.case_ids == ["octa_000", "octa_001"] and ds.cases == []
    loader = DataLoader(
        ds, batch_size=2, num_workers=2, sampler=RandomSampler(ds, replacement=True, num_samples=4)
    )
    for batch in loader:
        assert batch["image"].shape == (2, 1, 32, 32, 32) and batch["thin"].shape == (2, 1, 32, 32, 32)
        for i, case_id in enumerate(batch["case_id"]):
            crop = crop_padded(expected[case_id], batch["offset"][i].tolist(), (32,) * 3)
            np.testing.assert_array_equal(batch["label"][i, 0].numpy(), crop)
    whole = SkeletonDataset.from_store(out)[1]
    np.testing.assert_array_equal(whole["label"][0].numpy(), expected["octa_001"])


def test_targets_only_stores_warn_once_and_from_store_refuses_them(tmp_path):
    dataset = make("nifti", tmp_path)
    assert build(dataset, workers=1).ok
    with pytest.warns(UserWarning, match="with_images=True"):
        SkeletonDataset(dataset, patch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SkeletonDataset(dataset, patch_size=16)  # one-time
    with pytest.raises(ValueError, match="built with images"):
        SkeletonDataset.from_store(dataset / "skeletons.zarr")
    with pytest.raises(ValueError, match="'ct' needs"):
        SkeletonDataset(dataset, normalization="ct")


def _no_skeletons(*args, **kwargs):
    raise AssertionError("skeletons were recomputed although the mask did not change")


def test_adding_images_to_a_version_1_store_reuses_its_targets(tmp_path, monkeypatch):
    dataset = make("nifti", tmp_path)
    assert build(dataset, workers=1).ok
    store_path = dataset / "skeletons.zarr"
    before = {cid: open_store(store_path)[cid].tube[...] for cid in ("octa_000", "octa_001")}
    root = zarr.open_group(str(store_path), mode="r+")  # as version 1 wrote it: same case layout
    root.attrs[ATTRS_KEY] = {**root.attrs[ATTRS_KEY], "format_version": 1}
    assert open_store(store_path).attrs["format_version"] == 1  # version-1 stores still open
    assert all(c.state == "ok" for c in verify(dataset))
    monkeypatch.setattr(skelprep.skeleton, "skeleton_targets", _no_skeletons)
    report = build(dataset, workers=1, with_images=True)
    assert report.ok and len(report.built) == 2, report.as_dict()
    store = open_store(store_path)
    assert store.attrs["format_version"] == 3 and store.attrs["upgraded_from"] == 1
    for cid, tube in before.items():
        assert store[cid].has_images
        np.testing.assert_array_equal(store[cid].tube[...], tube)
    assert all(c.state == "ok" for c in verify(dataset))


def test_a_changed_image_makes_the_case_stale_and_only_its_images_are_rewritten(tmp_path, monkeypatch):
    dataset = make("nifti", tmp_path)
    assert build(dataset, workers=1, with_images=True).ok
    path = dataset / "imagesTr" / "octa_001_0000.nii.gz"
    image = np.asanyarray(nib.load(path).dataobj).copy()
    image[0, 0, 0] += 1
    nifti(path, image)
    checks = {c.case_id: c for c in verify(dataset)}
    assert checks["octa_000"].state == "ok"
    assert checks["octa_001"].state == "stale" and "image changed" in checks["octa_001"].reason
    with pytest.raises(Exception, match="octa_001.*stale"):
        SkeletonDataset(dataset)[1]
    monkeypatch.setattr(skelprep.skeleton, "skeleton_targets", _no_skeletons)
    report = build(dataset, workers=1)  # the store carries images: the build keeps them current
    assert [o.case_id for o in report.built] == ["octa_001"] and report.ok
    np.testing.assert_array_equal(open_store(dataset / "skeletons.zarr")["octa_001"].image[0], image)
    assert all(c.state == "ok" for c in verify(dataset))


def test_verify_finds_a_corrupt_image_chunk_and_info_lists_images(octa_built, tmp_path):
    dataset = copy_cases(octa_built, tmp_path / "copy", ["octa_000", "octa_001"])
    shutil.copytree(octa_built / "skeletons.zarr", dataset / "skeletons.zarr")
    shard = shard_files(dataset / "skeletons.zarr" / "octa_001" / "0")[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    checks = {c.case_id: c for c in verify(dataset)}
    assert checks["octa_001"].state == "corrupt" and "image" in checks["octa_001"].reason
    assert checks["octa_000"].state == "ok"
    info = subprocess.run(CLI + ["info", str(dataset / "skeletons.zarr")], capture_output=True, text=True)
    assert info.returncode == 0 and "images" in info.stdout
    assert "1x64x64x64 uint8" in info.stdout


def bad_inputs_dataset(root: Path) -> Path:
    """nnU-Net layout with two channels: one good case and one case per bad image input."""
    (root / "labelsTr").mkdir(parents=True)
    (root / "imagesTr").mkdir()
    meta = {
        "channel_names": {"0": "A", "1": "B"},
        "labels": {"background": 0, "v": 1},
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    shape = (12, 14, 16)
    rng = np.random.default_rng(0)
    second = {
        "good": rng.normal(size=shape).astype(np.float32),
        "nan_only": np.full(shape, np.nan, np.float32),
        "constant": np.full(shape, 7, np.int16),
        "other_shape": rng.normal(size=(12, 14, 15)).astype(np.float32),
        "complex": (rng.normal(size=shape) + 1j).astype(np.complex64),
        "unreadable": None,
        "missing": None,
    }
    for case_id, channel in second.items():
        nifti(root / "labelsTr" / f"{case_id}.nii.gz", tubes_3d(shape=shape, n=2, seed=1))
        nifti(root / "imagesTr" / f"{case_id}_0000.nii.gz", rng.integers(0, 99, shape).astype(np.int16))
        target = root / "imagesTr" / f"{case_id}_0001.nii.gz"
        if case_id == "unreadable":
            target.write_bytes(b"\x1f\x8b not really a gzip stream" * 10)
        elif channel is not None:
            nifti(target, channel)
    return root


def test_bad_image_inputs_fail_their_case_in_one_line_and_keep_what_was_built(tmp_path):
    dataset = bad_inputs_dataset(tmp_path / "bad")
    out = tmp_path / "store.zarr"
    done = subprocess.run(
        CLI + ["build", str(dataset), "--out", str(out), "--workers", "1", "--no-progress", "--with-images"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    failed = {Path(line.removeprefix("failed: ").split(": ")[0]).name: line for line in lines}
    assert all(line.startswith("failed: ") for line in lines), done.stderr
    expected = {
        "nan_only_0001.nii.gz": "no finite voxel",
        "constant_0001.nii.gz": "constant channel",
        "other_shape_0001.nii.gz": "differs from the shape",
        "complex_0001.nii.gz": "unsupported image dtype complex64",
        "unreadable_0001.nii.gz": "cannot read NIfTI",
        "missing_0001.nii.gz": "missing: image channel 1 of case 'missing'",
    }
    assert len(lines) == len(expected), done.stderr
    for name, reason in expected.items():
        assert reason in failed[name], (name, done.stderr)
    assert "1 built" in done.stdout and open_store(out).case_ids == ["good"]
    # Nothing already in the store is lost: a good case whose image turns bad keeps its stored data.
    before = open_store(out)["good"].image[...]
    nifti(dataset / "imagesTr" / "good_0001.nii.gz", np.full((12, 14, 16), np.nan, np.float32))
    again = subprocess.run(
        CLI + ["build", str(dataset), "--out", str(out), "--workers", "1", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1 and "good_0001.nii.gz: image channel 1: no finite voxel" in again.stderr
    np.testing.assert_array_equal(open_store(out)["good"].image[...], before)


def test_a_full_disk_ends_the_build_with_one_line_and_keeps_the_complete_cases(tmp_path):
    """A real full disk: a 3 MiB tmpfs (needs root to mount; skipped otherwise)."""
    mount = tmp_path / "small_disk"
    if not mount_tmpfs(mount, "3m"):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        dataset = tmp_path / "noisy"
        rng = np.random.default_rng(0)
        for i in range(8):  # ~1 MB of incompressible image per case: the disk fills after 2-3 cases
            nifti(dataset / "labels" / f"case_{i}.nii.gz", tubes_3d(shape=(64, 64, 64), n=2, seed=i))
            nifti(dataset / "images" / f"case_{i}.nii.gz", rng.normal(size=(64, 64, 64)).astype(np.float32))
        out = mount / "store.zarr"
        done = subprocess.run(
            CLI
            + ["build", str(dataset), "--out", str(out), "--workers", "1", "--no-progress", "--with-images"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"skelprep: error: {out}: no space left on device"), lines[0]
        store = open_store(out)
        n = len(store.case_ids)
        assert 0 < n < 8 and f"keeps its {n} complete case(s)" in lines[0] and "rerun" in lines[0]
        for case_id in store.case_ids:
            assert verify_case_data(store[case_id]) == []
            np.testing.assert_array_equal(
                store[case_id].label[...], read_mask(dataset / "labels" / f"{case_id}.nii.gz").array
            )
    finally:
        subprocess.run(["umount", str(mount)])


def test_tensorstore_reads_the_store_as_documented(octa_built):
    """A second Zarr v3 implementation reads every array kind (sharded Blosc image, zstd targets, samples)."""
    ts = pytest.importorskip("tensorstore")
    store = open_store(octa_built / "skeletons.zarr")
    case = store["octa_001"]
    for name, box in (("image", np.s_[0, 0:40, 8:40, 30:64]), ("tube", np.s_[0:40, 8:40, 30:64])):
        path = case.attrs["arrays"][name]  # "0", "labels/tube/0"
        spec = {"driver": "zarr3", "kvstore": f"file://{octa_built / 'skeletons.zarr' / 'octa_001' / path}"}
        array = ts.open(spec).result()
        np.testing.assert_array_equal(array[box].read().result(), case.group[path][box])
    spec = {
        "driver": "zarr3",
        "kvstore": f"file://{octa_built / 'skeletons.zarr' / 'octa_001' / 'tube_locations'}",
    }
    np.testing.assert_array_equal(ts.open(spec).result().read().result(), case.read("tube_locations"))
