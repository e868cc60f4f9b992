"""Topology targets in the build: ``skelprep build --targets``, what each case records, adding a target to a
built store, and the Dataset returning them with the patch."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import skelprep.skeleton
import skelprep.targets
from skelprep import open_store
from skelprep.build import BuildParams, build
from skelprep.cli import cli
from skelprep.targets import components, image_diagonal, signed_distance, skeleton_radius
from skelprep.verify import verify

from .helpers import tubes_3d, write_png

SPACING = (2.0, 1.0, 1.5)
ALL = ["tube", "thin", "sdf", "radius", "components"]


def nnunet_dataset(root, n_cases: int = 2):
    """An nnU-Net raw dataset of two-class tube volumes with anisotropic spacing; case 1 lacks class 2."""
    (root / "labelsTr").mkdir(parents=True)
    labels = {"background": 0, "artery": 1, "vein": 2}
    (root / "dataset.json").write_text(
        json.dumps(
            {"labels": labels, "channel_names": {"0": "x"}, "file_ending": ".nii.gz", "numTraining": 2}
        )
    )
    masks = {}
    for i in range(n_cases):
        mask = tubes_3d(shape=(20, 24, 28), n=4, seed=i, n_classes=2).astype(np.uint8)
        if i == 1:
            mask[mask == 2] = 1
        nib.save(nib.Nifti1Image(mask, np.diag([*SPACING, 1.0])), root / "labelsTr" / f"case_{i}.nii.gz")
        masks[f"case_{i}"] = mask
    return root, masks


def test_a_default_build_stores_the_tube_and_thin_skeleton_only(tmp_path):
    dataset, _ = nnunet_dataset(tmp_path / "ds")
    build(dataset, workers=1)
    store = open_store(dataset / "skeletons.zarr")
    assert "targets" not in store.attrs
    for case_id in store:
        attrs = store[case_id].attrs
        assert "targets" not in attrs and set(attrs["arrays"]) == {"tube", "thin", "label"}


def test_build_stores_each_target_as_the_core_computes_it(tmp_path):
    dataset, masks = nnunet_dataset(tmp_path / "ds")
    report = build(dataset, workers=1, targets=ALL)
    assert len(report.built) == 2 and not report.failed
    store = open_store(dataset / "skeletons.zarr")
    assert store.attrs["targets"] == ["sdf", "radius", "components"]
    for case_id, mask in masks.items():
        case = store[case_id]
        thin = case.thin[...]
        sdf = case.array("sdf")[...]
        np.testing.assert_array_equal(sdf, signed_distance(mask, [1, 2], spacing=SPACING))
        np.testing.assert_array_equal(case.array("radius")[...], skeleton_radius(mask, thin, spacing=SPACING))
        expected = components(mask)
        np.testing.assert_array_equal(case.array("components")[...], expected.labels)
        assert case.attrs["targets"] == {
            "sdf": {"params": {"classes": [1, 2], "spacing": list(SPACING)}},
            "radius": {"params": {"spacing": list(SPACING)}},
            "components": {"params": {"connectivity": 26}, "count": expected.count},
        }
        assert np.isfinite(sdf).all()
    # case_1 has no class 2: its sdf channel is the documented +D, the image diagonal, everywhere
    absent = store["case_1"].array("sdf")[1]
    np.testing.assert_array_equal(absent, np.float32(image_diagonal(absent.shape, SPACING)))
    assert all(c.state == "ok" for c in verify(dataset))


def test_a_slice_axis_build_computes_every_target_per_slice(tmp_path):
    # a 2D network trains on the slices: its targets are the slices' own, in-plane distances included
    dataset, masks = nnunet_dataset(tmp_path / "ds")
    build(dataset, workers=1, targets=ALL, params=BuildParams(slice_axis=0))
    store = open_store(dataset / "skeletons.zarr")
    for case_id, mask in masks.items():
        case = store[case_id]
        thin = case.thin[...]
        for k in (0, 7):
            plane = mask[k]
            np.testing.assert_array_equal(
                case.array("sdf")[:, k], signed_distance(plane, [1, 2], spacing=SPACING[1:])
            )
            np.testing.assert_array_equal(
                case.array("radius")[k], skeleton_radius(plane, thin[k], spacing=SPACING[1:])
            )
        stored = case.array("components")[...]
        assert all(len(np.unique(stored[k][stored[k] > 0])) == components(mask[k]).count for k in (0, 7))
        assert case.attrs["targets"]["sdf"]["params"] == {
            "classes": [1, 2],
            "spacing": list(SPACING[1:]),
            "slice_axis": 0,
        }


def test_adding_a_target_to_a_built_store_computes_only_that_target(tmp_path, monkeypatch):
    dataset, masks = nnunet_dataset(tmp_path / "ds")
    build(dataset, workers=1, targets=["tube", "thin", "components"])
    store = open_store(dataset / "skeletons.zarr")
    before = {c: (store[c].tube[...], store[c].array("components")[...]) for c in masks}

    def not_again(*args, **kwargs):
        raise AssertionError("a stored target was computed again")

    # The stored tube, thin skeleton and components are current: neither is computed again
    monkeypatch.setattr(skelprep.skeleton, "skeleton_targets", not_again)
    monkeypatch.setattr(skelprep.targets, "components", not_again)
    report = build(dataset, workers=1, targets=["sdf"])
    assert len(report.built) == 2 and not report.failed, [o.reason for o in report.failed]
    store = open_store(dataset / "skeletons.zarr")
    assert store.attrs["targets"] == ["sdf", "components"]  # sticky: the store keeps components
    for case_id, mask in masks.items():
        case = store[case_id]
        np.testing.assert_array_equal(case.tube[...], before[case_id][0])
        np.testing.assert_array_equal(case.array("components")[...], before[case_id][1])
        np.testing.assert_array_equal(case.array("sdf")[...], signed_distance(mask, [1, 2], spacing=SPACING))
    # and a build that names no target keeps them, up to date
    report = build(dataset, workers=1)
    assert len(report.up_to_date) == 2 and set(
        open_store(dataset / "skeletons.zarr")["case_0"].attrs["targets"]
    ) == {
        "sdf",
        "components",
    }


def test_a_new_case_gets_the_targets_the_store_holds(tmp_path):
    dataset, _ = nnunet_dataset(tmp_path / "ds")
    build(dataset, workers=1, targets=["tube", "thin", "radius"])
    (dataset / "labelsTr" / "case_9.nii.gz").write_bytes(
        (dataset / "labelsTr" / "case_0.nii.gz").read_bytes()
    )
    build(dataset, workers=1)  # builds case_9 with the store's targets: radius
    assert "radius" in open_store(dataset / "skeletons.zarr")["case_9"].attrs["targets"]
    assert all(c.state == "ok" for c in verify(dataset))


def test_an_unknown_target_is_one_line_and_exit_2(tmp_path):
    dataset, _ = nnunet_dataset(tmp_path / "ds")
    result = CliRunner().invoke(
        cli, ["build", str(dataset), "--targets", "tube,sdf,skeleton", "--no-progress"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "skelprep: error: unknown target 'skeleton'; the targets are tube, thin, sdf, radius, components "
        "(option --targets)"
    ]
    assert not (dataset / "skeletons.zarr").exists()


def test_a_png_dataset_gets_its_targets_in_pixels(tmp_path):
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 20:24] = 1
    mask[5, 5:40] = 1
    write_png(tmp_path / "ds" / "labels" / "a.png", mask)
    result = CliRunner().invoke(
        cli, ["build", str(tmp_path / "ds"), "--targets", ",".join(ALL), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    case = open_store(tmp_path / "ds" / "skeletons.zarr")["a"]
    assert case.attrs["targets"]["sdf"]["params"] == {"classes": [1], "spacing": [1.0, 1.0]}
    np.testing.assert_array_equal(case.array("sdf")[...], signed_distance(mask, [1], spacing=None))


def png_classes_dataset(root):
    """A generic PNG dataset of two classes whose case ``b`` lacks class 2: its own highest label is 1."""
    a = np.zeros((30, 40), np.uint8)
    a[5:25, 8:12], a[12, 15:38] = 1, 2
    b = np.zeros((30, 40), np.uint8)
    b[4:26, 20:23] = 1
    write_png(root / "labels" / "a.png", a)
    write_png(root / "labels" / "b.png", b)
    return root, {"a": a, "b": b}


def test_classes_give_every_case_the_same_sdf_channels(tmp_path):
    dataset, masks = png_classes_dataset(tmp_path / "ds")
    build(dataset, workers=1, targets=["sdf"])  # without classes: each case's own 1..highest label
    store = open_store(dataset / "skeletons.zarr")
    assert [store[c].array("sdf").shape[0] for c in ("a", "b")] == [2, 1]
    report = build(dataset, workers=1, classes=[1, 2])  # a's sdf was of classes 1 and 2 already
    assert [(o.case_id, o.status) for o in report.outcomes] == [("a", "up-to-date"), ("b", "built")]
    store = open_store(dataset / "skeletons.zarr")
    assert store.attrs["sdf_classes"] == [1, 2]
    for case_id, mask in masks.items():
        case = store[case_id]
        assert case.attrs["targets"]["sdf"]["params"]["classes"] == [1, 2]
        np.testing.assert_array_equal(case.array("sdf")[...], signed_distance(mask, [1, 2], spacing=None))
    # sticky: a later build without classes keeps the store's, and finds every case current
    assert len(build(dataset, workers=1).up_to_date) == 2


def test_changing_the_classes_recomputes_the_sdf_only(tmp_path, monkeypatch):
    dataset, masks = png_classes_dataset(tmp_path / "ds")
    build(dataset, workers=1, targets=["sdf", "components"], classes=[1, 2])

    def not_again(*args, **kwargs):
        raise AssertionError("a stored target was computed again")

    monkeypatch.setattr(skelprep.skeleton, "skeleton_targets", not_again)
    monkeypatch.setattr(skelprep.targets, "components", not_again)
    assert all(c.state == "ok" for c in verify(dataset))  # against the store's own classes
    report = build(dataset, workers=1, classes=[2])
    assert len(report.built) == 2 and not report.failed, [o.reason for o in report.failed]
    store = open_store(dataset / "skeletons.zarr")
    for case_id, mask in masks.items():
        np.testing.assert_array_equal(
            store[case_id].array("sdf")[...], signed_distance(mask, [2], spacing=None)
        )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("1,x", "Invalid value for --classes: '1,x' is no list of integers"),
        ("1,0", "sdf class 0 is no positive label (option --classes)"),
        ("2,2", "sdf class 2 is named twice (option --classes)"),
        ("1,3", "sdf class 3 is the ignore label (option --classes)"),
    ],
)
def test_bad_classes_are_one_line_and_build_nothing(tmp_path, value, says):
    dataset, _ = png_classes_dataset(tmp_path / "ds")
    result = CliRunner().invoke(
        cli,
        [
            "build",
            str(dataset),
            "--targets",
            "sdf",
            "--ignore-label",
            "3",
            "--classes",
            value,
            "--no-progress",
        ],
    )
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert says in lines[-1] and len([line for line in lines if "error" in line.lower()]) == 1, lines
    assert not (dataset / "skeletons.zarr").exists()


def test_a_per_volume_target_in_a_slice_axis_build_is_recomputed(tmp_path):
    """Targets recorded without their slice axis (computed on the whole volume) are not taken for per-slice ones."""
    dataset, masks = nnunet_dataset(tmp_path / "ds")
    build(dataset, workers=1, targets=["radius"], params=BuildParams(slice_axis=0))
    root = zarr.open_group(str(dataset / "skeletons.zarr"), mode="r+")
    for case_id in masks:  # as an older build recorded them
        meta = root[case_id].attrs["skelprep"]
        meta["targets"]["radius"]["params"].pop("slice_axis")
        root[case_id].attrs.update({"skelprep": meta})
    assert {c.reason for c in verify(dataset)} == {
        "target 'radius' was built with other parameters (a build recomputes it)"
    }
    report = build(dataset, workers=1, params=BuildParams(slice_axis=0))
    assert len(report.built) == 2 and all(c.state == "ok" for c in verify(dataset))


@pytest.mark.parametrize("with_images", [False, True])
def test_the_dataset_returns_the_stored_targets_with_the_patch(tmp_path, with_images):
    torch = pytest.importorskip("torch")
    from skelprep.torch import SkeletonDataset

    dataset, masks = nnunet_dataset(tmp_path / "ds")
    (dataset / "imagesTr").mkdir()
    for case_id, mask in masks.items():
        image = (mask * 10 + 1).astype(np.int16)
        nib.save(
            nib.Nifti1Image(image, np.diag([*SPACING, 1.0])), dataset / "imagesTr" / f"{case_id}_0000.nii.gz"
        )
    build(dataset, workers=1, targets=ALL, with_images=with_images)
    store = open_store(dataset / "skeletons.zarr")
    torch.manual_seed(0)
    ds = SkeletonDataset(dataset, patch_size=(16, 16, 16), targets=["sdf", "radius", "components"])
    for index in range(6):
        item = ds[index % 2]
        case = store[item["case_id"]]
        offset = item["offset"].numpy()
        assert item["sdf"].shape == (2, 16, 16, 16) and item["sdf"].dtype == torch.float32
        for name in ("sdf", "radius", "components"):
            full = case.array(name)[...]
            full = full if full.ndim == 4 else full[None]
            mode = "edge" if name == "sdf" else "constant"
            # the patch as a crop of the whole stored array, padded as documented where it overhangs
            pad = [(0, 0)] + [(16, 16)] * 3
            padded = np.pad(full, pad, mode=mode)
            box = tuple(slice(o + 16, o + 32) for o in offset)
            np.testing.assert_array_equal(item[name].numpy(), padded[(slice(None), *box)])


def test_the_dataset_refuses_a_target_the_store_does_not_hold(tmp_path):
    pytest.importorskip("torch")
    from skelprep.store import StoreError
    from skelprep.torch import SkeletonDataset

    dataset, _ = nnunet_dataset(tmp_path / "ds")
    build(dataset, workers=1, targets=["tube", "thin", "radius"])
    with pytest.raises(StoreError, match=r"case 'case_0' holds no target 'sdf' \(a build with targets"):
        SkeletonDataset(dataset, patch_size=8, targets=["radius", "sdf"])
    with pytest.raises(ValueError, match="unknown stored target 'distance'"):
        SkeletonDataset(dataset, patch_size=8, targets=["distance"])
