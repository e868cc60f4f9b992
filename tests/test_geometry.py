"""skelprep.geometry: the voxel order and affine each framework gives a stored case (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from skelprep.geometry import framework_geometry, same_affine, to_framework


def test_nifti_keeps_order_and_stored_affine_in_both_frameworks():
    affine = np.array([[0, -1.3, 0, 4], [0.7, 0, 0, -2], [0, 0, 2.1, 1], [0, 0, 0, 1]])
    attrs = {"axes": "ijk", "affine": affine.tolist(), "spacing": [0.7, 1.3, 2.1], "source": "a.nii.gz"}
    for framework in ("monai", "torchio"):
        g = framework_geometry(attrs, framework)
        assert g.order == (0, 1, 2) and g.stored_affine
        np.testing.assert_array_equal(g.affine, affine)
    array = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(to_framework(array, g)[0], array)


def test_2d_nifti_gets_a_trailing_axis_in_torchio_only():
    attrs = {"axes": "ij", "affine": np.eye(4).tolist(), "source": "a.nii"}
    array = np.zeros((5, 7), np.uint8)
    assert to_framework(array, framework_geometry(attrs, "monai")).shape == (1, 5, 7)
    assert to_framework(array, framework_geometry(attrs, "torchio")).shape == (1, 5, 7, 1)


def test_png_orders():
    attrs = {"axes": "yx", "affine": None, "spacing": [1.0, 1.0], "source": "m.png"}
    array = np.arange(35).reshape(5, 7)
    monai = framework_geometry(attrs, "monai")
    np.testing.assert_array_equal(to_framework(array, monai)[0], array.T)
    np.testing.assert_array_equal(monai.affine, np.eye(4))
    plain = framework_geometry(attrs, "monai", reverse_indexing=False)
    np.testing.assert_array_equal(to_framework(array, plain)[0], array)
    torchio = framework_geometry(attrs, "torchio")
    np.testing.assert_array_equal(to_framework(array, torchio)[0, :, :, 0], array.T)
    np.testing.assert_array_equal(torchio.affine, np.diag([-1.0, -1, 1, 1]))


def test_tiff_stack_reversed_with_itk_affine():
    attrs = {"axes": "zyx", "affine": None, "spacing": [3.0, 2.0, 0.5], "source": "s.tif"}
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for framework in ("monai", "torchio"):
        g = framework_geometry(attrs, framework)
        np.testing.assert_array_equal(to_framework(array, g)[0], array.transpose(2, 1, 0))
        np.testing.assert_array_equal(g.affine, np.diag([-0.5, -2.0, 3.0, 1.0]))
        assert not g.stored_affine
    flat = {"axes": "yx", "affine": None, "source": "flat.TIF"}
    np.testing.assert_array_equal(framework_geometry(flat, "monai").affine, np.diag([-1.0, -1, 1, 1]))


def test_channel_first_arrays_keep_their_channels():
    attrs = {"axes": "yx", "affine": None, "source": "rgb.png"}
    image = np.arange(3 * 5 * 7).reshape(3, 5, 7)
    out = to_framework(image, framework_geometry(attrs, "torchio"), channel_first=True)
    assert out.shape == (3, 7, 5, 1)
    np.testing.assert_array_equal(out[1, :, :, 0], image[1].T)


def test_bad_input():
    with pytest.raises(ValueError, match="framework"):
        framework_geometry({"axes": "yx"}, "keras")
    with pytest.raises(ValueError, match="without a stored affine"):
        framework_geometry({"axes": "ijk", "affine": None}, "monai")
    with pytest.raises(ValueError, match="2 or 3"):
        framework_geometry({"axes": "ijkt"}, "monai")


def test_same_affine_tolerates_rounding_not_a_voxel_shift():
    a = np.diag([0.7, 1.3, 2.1, 1.0])
    shifted = a.copy()
    shifted[0, 3] = 0.1  # a seventh of a voxel
    assert same_affine(a, a + 1e-6) and not same_affine(a, shifted)
