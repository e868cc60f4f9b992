"""Topology targets of the core: each against an independent scipy computation, and their bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from skelprep.skeleton import thin_skeleton
from skelprep.targets import (
    TargetError,
    build_targets,
    components,
    distance_inside,
    image_diagonal,
    signed_distance,
    skeleton_radius,
)


def blobs(shape: tuple[int, ...], n_classes: int, seed: int) -> np.ndarray:
    """A label map of smooth random blobs of ``n_classes`` classes on background (uint8)."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random(shape), 2.0)
    cut = np.quantile(field, np.linspace(0.45, 1.0, n_classes + 1))
    return np.digitize(field, cut[:-1]).astype(np.uint8)


CASES = [
    pytest.param((48, 64), None, id="2d-unit"),
    pytest.param((48, 64), (0.5, 1.25), id="2d-aniso"),
    pytest.param((20, 28, 24), (2.5, 0.7, 0.9), id="3d-aniso"),
]


def scipy_sdf(mask: np.ndarray, spacing) -> np.ndarray:
    return ndi.distance_transform_edt(~mask, sampling=spacing) - ndi.distance_transform_edt(
        mask, sampling=spacing
    )


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_signed_distance_equals_scipy_per_class_and_for_a_union(shape, spacing):
    label = blobs(shape, 3, seed=len(shape))
    assert set(np.unique(label)) == {0, 1, 2, 3}
    sdf = signed_distance(label, [0, 1, 2, 3, (2, 3)], spacing=spacing)
    assert sdf.dtype == np.float32 and sdf.shape == (5, *shape)
    for k, mask in enumerate([label == 0, label == 1, label == 2, label == 3, label >= 2]):
        np.testing.assert_allclose(sdf[k], scipy_sdf(mask, spacing), rtol=1e-6)
        np.testing.assert_array_equal(sdf[k] < 0, mask)  # never 0: the sign is the class


def test_signed_distance_of_a_class_with_no_voxel_and_of_one_covering_the_image():
    label = np.ones((10, 12), np.uint16)
    sdf = signed_distance(label, [1, 7], spacing=(2.0, 0.5))
    diagonal = image_diagonal(label.shape, (2.0, 0.5))
    assert np.isfinite(sdf).all()
    np.testing.assert_array_equal(sdf[0], np.float32(-diagonal))
    np.testing.assert_array_equal(sdf[1], np.float32(diagonal))
    real = signed_distance(blobs((10, 12), 1, 0), [1], spacing=(2.0, 0.5))
    assert np.abs(real).max() < diagonal  # farther than any real distance


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_skeleton_radius_is_scipy_distance_to_the_background_on_the_skeleton(shape, spacing):
    label = blobs(shape, 2, seed=3)
    thin = thin_skeleton(label)
    assert thin.any()
    radius = skeleton_radius(label, thin, spacing=spacing)
    expected = ndi.distance_transform_edt(label > 0, sampling=spacing) * (thin > 0)
    assert radius.dtype == np.float32
    np.testing.assert_allclose(radius, expected, rtol=1e-6)
    np.testing.assert_array_equal(radius > 0, thin > 0)


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_distance_inside_is_scipy_distance_transform(shape, spacing):
    mask = blobs(shape, 1, seed=4) > 0
    got = distance_inside(mask, spacing=spacing)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ndi.distance_transform_edt(mask, sampling=spacing), rtol=1e-6)
    full = distance_inside(np.ones(shape, bool), spacing=spacing)
    assert (
        np.isfinite(full).all()
        and (full == np.float32(image_diagonal(shape, spacing or (1,) * len(shape)))).all()
    )


def test_skeleton_radius_without_background_is_the_diagonal():
    label = np.ones((5, 6), np.uint8)
    thin = np.zeros_like(label)
    thin[2, 1:5] = 1
    radius = skeleton_radius(label, thin, spacing=None)
    np.testing.assert_array_equal(radius[thin > 0], np.float32(image_diagonal((5, 6), (1, 1))))
    assert (radius[thin == 0] == 0).all()


def assert_same_partition(got: np.ndarray, expected: np.ndarray) -> None:
    """The same components, the numbering aside: the id pairs are a bijection, background to background."""
    pairs = np.unique(np.stack([got.ravel(), expected.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    np.testing.assert_array_equal(got == 0, expected == 0)
    assert set(np.unique(got)) == set(range(int(got.max()) + 1))  # 1..count, no gap


@pytest.mark.parametrize(("shape", "connectivities"), [((60, 70), (4, 8)), ((24, 26, 22), (6, 18, 26))])
def test_components_equal_scipy_label_for_every_connectivity(shape, connectivities):
    rng = np.random.default_rng(5)
    label = (rng.random(shape) < 0.3).astype(np.uint8) * rng.integers(1, 3, shape).astype(np.uint8)
    counts = []
    for connectivity, rank in zip(connectivities, range(1, len(shape) + 1), strict=True):
        expected, n = ndi.label(label > 0, structure=ndi.generate_binary_structure(len(shape), rank))
        got = components(label, connectivity=connectivity)
        assert (got.count, got.connectivity, got.per_class) == (n, connectivity, False)
        assert got.labels.dtype == np.uint32
        assert_same_partition(got.labels, expected)
        counts.append(n)
    assert len(set(counts)) == len(counts)  # the connectivities differ on this input


def test_components_per_class_split_touching_classes():
    label = np.zeros((6, 8), np.uint8)
    label[1:5, 1:4] = 1
    label[1:5, 4:7] = 2  # touches class 1
    assert components(label).count == 1
    split = components(label, per_class=True)
    assert split.count == 2 and split.per_class
    for value in (1, 2):
        assert len(np.unique(split.labels[label == value])) == 1
    assert split.labels[1, 1] != split.labels[1, 6]


def test_components_more_than_the_dtype_holds():
    label = np.zeros((40, 40), np.uint8)
    label[::2, ::2] = 1  # 400 isolated pixels
    assert components(label, dtype=np.uint16).count == 400
    with pytest.raises(TargetError, match="400 components do not fit in uint8"):
        components(label, dtype=np.uint8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lab: signed_distance(lab, [300], spacing=None), "class 300 cannot occur in uint8 labels"),
        (lambda lab: signed_distance(lab, [1], spacing=(1.0,)), "has 1 values for a 2D label map"),
        (lambda lab: signed_distance(lab, [1], spacing=(1.0, 0.0)), "positive and finite"),
        (lambda lab: signed_distance(lab, [1], spacing=(1.0, float("nan"))), "positive and finite"),
        (lambda lab: signed_distance(lab, [], spacing=None), "classes is empty"),
        (lambda lab: signed_distance(lab, [1.5], spacing=None), "class ids must be integers"),
        (lambda lab: signed_distance(lab.astype(float), [1], spacing=None), "integer or boolean"),
        (lambda lab: signed_distance(lab.astype(np.int8) - 1, [1], spacing=None), "non-negative"),
        (lambda lab: skeleton_radius(lab, lab[:3], spacing=None), "differs from labels shape"),
        (lambda lab: skeleton_radius(lab, np.ones_like(lab), spacing=None), "voxels on the background"),
        (lambda lab: components(lab, connectivity=6), "connectivity 6 is not one of"),
        (lambda lab: components(lab, dtype=np.int32), "unsigned integer dtype"),
    ],
)
def test_bad_input_is_one_target_error_line(call, message):
    label = blobs((16, 16), 1, seed=1)
    with pytest.raises(TargetError, match=message) as info:
        call(label)
    assert "\n" not in str(info.value)


def test_spacing_is_required():
    with pytest.raises(TypeError):
        signed_distance(np.zeros((4, 4), np.uint8), [1])  # no silent unit spacing


def rotate_and_zoom(array: np.ndarray, angle_deg: float, zoom: float, order: int, cval) -> np.ndarray:
    """``array`` rotated in its first two axes about the centre and magnified ``zoom`` times (scipy, ``order``)."""
    a = np.deg2rad(angle_deg)
    rotation = np.eye(array.ndim)
    rotation[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    matrix = rotation.T / zoom  # output voxel -> input voxel
    centre = (np.array(array.shape) - 1) / 2
    return ndi.affine_transform(array, matrix, offset=centre - matrix @ centre, order=order, cval=cval)


@pytest.mark.parametrize(
    ("shape", "angle", "zoom"),
    [((160, 160), 30, 1.3), ((160, 160), 30, 0.7), ((160, 160), 90, 1.0), ((48, 48, 48), 30, 1.3)],
)
def test_a_rotated_and_scaled_sdf_is_near_the_sdf_of_the_rotated_and_scaled_mask(shape, angle, zoom):
    # docs/topology-targets.md's contract: labels nearest, distances linear and multiplied by the zoom
    label = blobs(shape, 1, seed=2)
    label[tuple(slice(0, n // 3) for n in shape)] = 0  # the foreground stays in view, its distances too
    label *= np.pad(np.ones([n - 2 * (n // 3) for n in shape], np.uint8), [(n // 3, n // 3) for n in shape])
    sdf = signed_distance(label, [1], spacing=None)[0]
    moved = rotate_and_zoom(label, angle, zoom, order=0, cval=255)
    in_view = moved != 255  # output voxels that come from inside the input
    truth = signed_distance(np.where(in_view, moved, 0), [1], spacing=None)[0]
    moved_sdf = zoom * rotate_and_zoom(sdf, angle, zoom, order=1, cval=0.0)
    error = np.abs(moved_sdf - truth)[in_view]
    if angle % 90 == 0 and zoom == 1:
        assert error.max() == 0  # a grid symmetry: exact
    else:
        assert error.max() < 2.5 and np.quantile(error, 0.99) < 1.1, (error.max(), np.quantile(error, 0.99))
    flipped = ((moved_sdf < 0) != (truth < 0))[in_view]
    assert np.abs(truth[in_view][flipped]).max(initial=0) < 2  # the sign differs only next to the boundary


@pytest.mark.parametrize("axis", [0, 1])
def test_build_targets_per_slice_are_each_slice_s_2d_targets_stacked(axis):
    """With slice_axis, every slice gets the 2D targets of its own labels and in-plane spacing; components are
    numbered on through the slices, so 1..count over the case."""
    label = blobs((6, 7, 40), 2, seed=3).swapaxes(0, axis).copy()  # slices of blobs along ``axis``
    label.swapaxes(0, axis)[2] = 0  # a slice without foreground
    thin = np.stack([thin_skeleton(part) for part in np.moveaxis(label, axis, 0)], axis=axis)
    spacing = (0.5, 1.25)  # of the slices' two axes
    out = build_targets(
        ["sdf", "radius", "components"], label, thin, spacing=spacing, classes=[1, 2], slice_axis=axis
    )
    sdf, radius, comps = out["sdf"][0], out["radius"][0], out["components"][0]
    assert sdf.shape == (2, *label.shape) and radius.shape == comps.shape == label.shape
    offset = 0
    for k in range(label.shape[axis]):
        part = np.take(label, k, axis=axis)
        np.testing.assert_array_equal(
            np.take(sdf, k, axis=axis + 1), signed_distance(part, [1, 2], spacing=spacing)
        )
        np.testing.assert_array_equal(
            np.take(radius, k, axis=axis), skeleton_radius(part, np.take(thin, k, axis=axis), spacing=spacing)
        )
        expected = components(part)
        assert expected.connectivity == 8
        got = np.take(comps, k, axis=axis)
        np.testing.assert_array_equal(got, np.where(expected.labels > 0, expected.labels + offset, 0))
        offset += expected.count
    assert out["components"][1] == {"params": {"connectivity": 8, "slice_axis": axis}, "count": offset}
    assert int(comps.max()) == offset > label.shape[axis]
    assert out["sdf"][1]["params"] == {"classes": [1, 2], "spacing": list(spacing), "slice_axis": axis}


def test_build_targets_per_slice_refuses_a_2d_label_map_and_3d_spacing():
    label = np.zeros((4, 5, 6), np.uint8)
    with pytest.raises(TargetError, match="slice_axis 0 needs a 3D label map"):
        build_targets(["sdf"], label[0], label[0], spacing=(1.0, 1.0), classes=[1], slice_axis=0)
    with pytest.raises(TargetError, match="spacing .* has 3 values for a 2D label map"):
        build_targets(["sdf"], label, label, spacing=(1.0, 1.0, 1.0), classes=[1], slice_axis=0)
