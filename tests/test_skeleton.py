"""The core: parity with the reference recipe, options, fallback."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import dilation, skeletonize

import skelprep.skeleton
from skelprep import skeleton_targets, skeletonize_mask, thin_skeleton, tube_from_thin, tubed_skeleton
from skelprep.io import read_mask

from .helpers import SHARED, needs, tubes_3d


def reference_tube(labels: np.ndarray) -> np.ndarray:
    """The reference recipe, restated directly (nnU-Net SkeletonTransform, do_tube=True)."""
    skel = skeletonize(labels > 0).astype(np.int16)
    skel = dilation(dilation(skel))  # scikit-image's default footprint: the connectivity-1 cross
    return skel * labels


def assert_parity_where_kept(labels: np.ndarray, targets, fallback: int) -> None:
    """Ours equals the reference, plus fallback skeletons in components the reference deleted whole."""
    ref = reference_tube(labels)
    if fallback == 0:
        np.testing.assert_array_equal(targets.tube, ref)
        return
    ref_thin = skeletonize(labels > 0)
    comps, _ = ndi.label(labels > 0, structure=np.ones((3,) * labels.ndim))
    kept = np.isin(comps, np.unique(comps[ref_thin]))  # includes background (label 0)
    np.testing.assert_array_equal(targets.thin[kept] > 0, ref_thin[kept])
    assert len(np.unique(comps[(targets.thin > 0) & ~kept])) == fallback
    # the tube is the recipe applied to that skeleton, so it contains the reference tube
    np.testing.assert_array_equal(targets.tube, dilation(dilation(targets.thin > 0)) * labels)
    assert (targets.tube >= ref).all()


@pytest.mark.parametrize("name", [f"Image_1{i}{s}_1stHO.png" for i in range(1, 5) for s in "LR"])
def test_parity_chase_vessels(name):
    labels = read_mask(needs(SHARED / "real" / "chase_db1" / name)).array
    targets = skeleton_targets(labels)
    assert targets.fallback_components == 0
    np.testing.assert_array_equal(targets.tube, reference_tube(labels))


@pytest.mark.parametrize("i", range(6))
def test_parity_cracks_multiclass(i):
    labels = read_mask(
        needs(SHARED / "nnunet" / "Dataset001_RoadCracks" / "labelsTr" / f"crack_{i:03d}.png")
    ).array
    assert labels.max() >= 1
    targets = skeleton_targets(labels)
    np.testing.assert_array_equal(targets.tube, reference_tube(labels))
    np.testing.assert_array_equal(targets.thin, skeletonize(labels > 0) * labels)


def test_parity_octa_3d():
    labels = read_mask(needs(SHARED / "real" / "tubenet_octa" / "OCTA-Labels.tif")).array
    targets = skeleton_targets(labels)
    assert_parity_where_kept(labels, targets, targets.fallback_components)
    # Every connected component keeps a skeleton.
    comps, n = ndi.label(labels > 0, structure=np.ones((3, 3, 3)))
    assert set(np.unique(comps[targets.thin > 0])) == set(range(1, n + 1))


@pytest.mark.parametrize("i", range(4))
def test_parity_octa_nifti_cases(i):
    labels = read_mask(
        needs(SHARED / "nnunet" / "Dataset002_OCTA" / "labelsTr" / f"octa_{i:03d}.nii.gz")
    ).array
    targets = skeleton_targets(labels)
    assert_parity_where_kept(labels, targets, targets.fallback_components)


@pytest.mark.parametrize("seed", range(4))
def test_parity_generated_multiclass_3d(seed):
    labels = tubes_3d(seed=seed)
    assert len(np.unique(labels)) >= 3
    targets = skeleton_targets(labels)
    assert_parity_where_kept(labels, targets, targets.fallback_components)
    assert targets.tube.dtype == labels.dtype


def test_bool_input_and_dtypes():
    labels = tubes_3d(seed=1) > 0
    assert tubed_skeleton(labels).max() == 1
    wide = tubes_3d(seed=1).astype(np.uint16) * 300
    tube = tubed_skeleton(wide)
    assert tube.dtype == np.uint16 and set(np.unique(tube)) <= set(np.unique(wide))


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_radius_is_l1_ball(radius):
    thin = np.zeros((11, 11, 11), bool)
    thin[5, 5, 5] = True
    tube = tube_from_thin(thin, radius)
    expected = np.abs(np.indices(thin.shape) - 5).sum(axis=0) <= radius
    np.testing.assert_array_equal(tube, expected)


def test_tube_from_thin_with_labels_equals_targets():
    labels = tubes_3d(seed=2)
    targets = skeleton_targets(labels, radius=3)
    np.testing.assert_array_equal(tube_from_thin(targets.thin, 3, labels), targets.tube)


def test_tube_from_thin_without_labels_takes_largest_label():
    thin = np.zeros((7, 7), np.uint8)
    thin[3, 2], thin[3, 4] = 1, 2
    tube = tube_from_thin(thin, 1)
    assert tube[3, 3] == 2 and tube[3, 1] == 1 and tube[2, 4] == 2


def test_per_class_keeps_touching_centrelines():
    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 2:28] = 1
    labels[10:15, 2:28] = 2  # touches class 1 along a whole edge
    joint = thin_skeleton(labels)
    per_class = thin_skeleton(labels, mode="per-class")
    # joint: one centreline along the common edge; per-class: one inside each band
    assert set(np.unique(per_class)) == {0, 1, 2}
    assert (per_class[5:10] == 1).any() and (per_class[10:15] == 2).any()
    assert np.flatnonzero(joint.any(axis=1)).tolist() != np.flatnonzero(per_class.any(axis=1)).tolist()
    # on single-class masks both modes agree
    single = (labels > 0).astype(np.uint8)
    np.testing.assert_array_equal(thin_skeleton(single), thin_skeleton(single, mode="per-class"))


def test_ignore_label_is_not_skeletonized():
    labels = np.zeros((20, 40), np.uint8)
    labels[8:12, 2:38] = 1
    labels[2:18, 18:22] = 9  # an ignore region crossing the vessel
    targets = skeleton_targets(labels, ignore_label=9)
    assert not (targets.tube == 9).any() and not (targets.thin == 9).any()
    assert not targets.tube[:, 18:22].any()
    # the reference would run the skeleton through the ignore region
    assert (reference_tube(labels)[:, 18:22] > 0).any()
    cleaned = np.where(labels == 9, 0, labels)
    np.testing.assert_array_equal(targets.tube, reference_tube(cleaned))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_axis_equals_2d_recipe_per_slice(axis):
    labels = tubes_3d(shape=(12, 20, 24), seed=3)
    tube = tubed_skeleton(labels, slice_axis=axis)
    for k in range(labels.shape[axis]):
        sl = np.take(labels, k, axis=axis)
        np.testing.assert_array_equal(np.take(tube, k, axis=axis), reference_tube(sl))


@pytest.mark.parametrize("width", [2, 4])
def test_even_width_bar_fallback(width):
    bar = np.zeros((12, 12, 40), np.uint8)
    bar[3 : 3 + width, 3 : 3 + width, 4:34] = 1
    assert not skeletonize(bar > 0).any()  # scikit-image deletes the bar whole (scikit-image#3757)
    targets = skeleton_targets(bar)
    assert targets.fallback_components == 1
    assert targets.thin.any() and (targets.thin <= bar).all()
    # the fallback is a centreline along the bar, not a dot
    assert np.ptp(np.argwhere(targets.thin)[:, 2]) >= 20
    assert (targets.tube <= bar).all()


def test_fallback_counts_only_deleted_components():
    labels = np.zeros((12, 30, 60), np.uint8)
    labels[3:5, 3:5, 5:35] = 1  # deleted by Lee
    labels[6, 10:25, 40:55] = 2  # a flat plate: kept
    thin, n = skeletonize_mask(labels > 0)
    assert n == 1
    assert thin[3:5, 3:5].any() and thin[6].any()


def test_fallback_single_voxel_for_tiny_cube():
    cube = np.zeros((6, 6, 6), bool)
    cube[2:4, 2:4, 2:4] = True
    thin, n = skeletonize_mask(cube)
    assert thin.sum() >= 1 and (thin <= cube).all()
    assert n == (0 if skeletonize(cube).any() else 1)


def test_empty_and_full_inputs():
    assert not tubed_skeleton(np.zeros((5, 6), np.uint8)).any()
    assert not tubed_skeleton(np.zeros((5, 6, 7), np.uint8)).any()
    full = np.ones((9, 9, 9), np.uint8)
    assert tubed_skeleton(full).any()


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4), np.float32), "integer"),
        (np.zeros((4,), np.uint8), "2D or 3D"),
        (np.zeros((4,), bool), "2D or 3D"),
        (np.zeros((2, 3, 4, 5), bool), "2D or 3D"),
        (np.full((4, 4), -1, np.int16), "non-negative"),
    ],
)
def test_rejects_bad_labels(bad, match):
    with pytest.raises(ValueError, match=match):
        skeleton_targets(bad)


def test_rejects_bad_options():
    labels = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="mode"):
        skeleton_targets(labels, mode="both")
    with pytest.raises(ValueError, match="radius"):
        skeleton_targets(labels, radius=-1)
    with pytest.raises(ValueError, match="3D"):
        skeleton_targets(labels, slice_axis=0)
    with pytest.raises(ValueError, match="background"):
        skeleton_targets(labels, ignore_label=0)


def _sparse_volume(seed: int) -> np.ndarray:
    """A large, sparse volume with thin tubes and bars that Lee thinning deletes whole."""
    labels = np.zeros((60, 90, 120), np.uint8)
    labels[10:50, 10:80, 10:110] = tubes_3d(shape=(40, 70, 100), n=4, seed=seed, n_classes=2)
    labels[2:4, 2:4, 20:60] = 3  # even-width bars: need the fallback
    labels[55:57, 80:82, 5:45] = 3
    return labels


@pytest.mark.parametrize("seed", range(3))
def test_the_fallback_goes_to_exactly_the_components_lee_deletes(seed):
    """The flood fill from the skeleton finds every component scikit-image's Lee thinning deleted whole."""
    labels = _sparse_volume(seed)
    targets = skeleton_targets(labels)
    components, n = ndi.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    deleted = n - np.count_nonzero(np.unique(components[skeletonize(labels > 0)]))
    assert targets.fallback_components == deleted >= 2
    assert set(np.unique(components[targets.thin > 0]).tolist()) == set(range(1, n + 1))
    assert_parity_where_kept(labels, targets, deleted)


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("slice_axis", [None, 1])
def test_scattered_and_dense_dilation_agree(monkeypatch, radius, slice_axis):
    thin = skeletonize_mask(_sparse_volume(0) > 0)[0]
    thin[0, 0, 0] = thin[-1, -1, -1] = True  # seeds on the array corners: clipping
    monkeypatch.setattr(skelprep.skeleton, "_SPARSE_DILATE_FACTOR", 0)  # scatter ball offsets
    scattered = tube_from_thin(thin, radius, slice_axis=slice_axis)
    monkeypatch.setattr(skelprep.skeleton, "_SPARSE_DILATE_FACTOR", 10**9)  # scipy binary_dilation
    dense = tube_from_thin(thin, radius, slice_axis=slice_axis)
    np.testing.assert_array_equal(scattered, dense)
    cross = ndi.generate_binary_structure(3, 1)
    if slice_axis is not None:
        cross[:, 0], cross[:, 2] = False, False  # no neighbours along axis 1
    np.testing.assert_array_equal(dense, ndi.binary_dilation(thin, cross, iterations=radius))


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
@pytest.mark.parametrize("slice_axis", [None, 1])
def test_the_tube_scatter_equals_the_dilations(monkeypatch, radius, slice_axis):
    """The targets' ball scatter (a kernel) equals tube_from_thin's numpy and scipy dilations."""
    labels = _sparse_volume(1)
    labels[0, 0, :3] = labels[-1, -1, -3:] = 2  # skeleton voxels on the array corners: clipping
    cases = [labels.astype(np.uint16), labels[25].astype(np.int32), labels[:, :, ::-1]]  # 3D, 2D, strided
    for case in cases if slice_axis is None else cases[:1]:
        targets = skeleton_targets(case, radius=radius, slice_axis=slice_axis)
        for factor in (0, 10**9):  # numpy: scattered index arrays, then scipy's dense dilation
            with monkeypatch.context() as m:
                m.setattr(skelprep.skeleton, "_SPARSE_DILATE_FACTOR", factor)
                tube = tube_from_thin(targets.thin > 0, radius, case, slice_axis=slice_axis)
            assert targets.tube.dtype == tube.dtype == case.dtype
            np.testing.assert_array_equal(targets.tube, tube)


def test_2d_components_the_thinning_deletes_get_the_fallback(monkeypatch):
    """The 2D kernel's orphans (none in practice: Zhang-Suen keeps every component) get the fallback."""
    mask = np.zeros((20, 30), bool)
    mask[3:6, 2:20] = True
    mask[10:16, 5:25] = True
    real = skelprep.skeleton.zhang_points
    cut = 10 * 30  # flat index of row 10: the second component's pixels lie after it

    def without_second(m):  # as if thinning had deleted the second component whole
        skeleton, orphans = real(m)
        assert orphans.size == 0
        return skeleton[skeleton < cut], np.flatnonzero(m)[np.flatnonzero(m) >= cut]

    monkeypatch.setattr(skelprep.skeleton, "zhang_points", without_second)
    thin, n = skeletonize_mask(mask)
    assert n == 1
    expected = np.zeros_like(mask)
    expected.reshape(-1)[real(mask)[0][real(mask)[0] < cut]] = True
    expected[10:16, 5:25] = skelprep.skeleton._fallback_skeleton(mask[10:16, 5:25])
    np.testing.assert_array_equal(thin, expected)
