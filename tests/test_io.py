"""Reading masks and images: formats, geometry, validation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from skelprep.io import InputError, image_shape, read_image, read_mask, split_suffix

from .helpers import EXAMPLES, write_png


def test_png_8bit_binary_255_is_remapped(tmp_path):
    mask = np.zeros((8, 9), np.uint8)
    mask[2:4, 1:7] = 255
    vol = read_mask(write_png(tmp_path / "m.png", mask))
    assert vol.array.dtype == np.uint8 and set(np.unique(vol.array)) == {0, 1}
    assert vol.label_remap == {255: 1} and vol.axes == "yx" and vol.spacing == (1.0, 1.0)


def test_png_multiclass_kept(tmp_path):
    mask = np.array([[0, 1, 2], [3, 255, 0]], np.uint8)
    vol = read_mask(write_png(tmp_path / "m.png", mask))
    np.testing.assert_array_equal(vol.array, mask)
    assert vol.label_remap == {}


def test_png_16bit(tmp_path):
    mask = np.zeros((6, 7), np.uint16)
    mask[1, 1:5] = 1000
    mask[3, 2] = 7
    path = tmp_path / "m16.png"
    Image.fromarray(mask).save(path)
    vol = read_mask(path)
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array, mask)


def test_png_palette(tmp_path):
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 1:5] = 2
    mask[4, :] = 5
    img = Image.fromarray(mask, mode="P")
    img.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    img.save(tmp_path / "pal.png")
    vol = read_mask(tmp_path / "pal.png")
    np.testing.assert_array_equal(vol.array, mask)


def test_png_rgb_equal_channels(tmp_path):
    mask = np.zeros((5, 6), np.uint8)
    mask[2, 1:5] = 3
    write_png(tmp_path / "rgb.png", np.stack([mask] * 3, axis=-1))
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png").array, mask)


def test_png_rgb_distinct_channels_rejected(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[1, 1] = (10, 20, 30)
    path = write_png(tmp_path / "colour.png", rgb)
    with pytest.raises(InputError, match="distinct channels") as err:
        read_mask(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_nifti_3d_with_singleton_4th_axis_and_geometry(tmp_path):
    data = np.zeros((5, 6, 7, 1), np.int16)
    data[1:3, 2, 3:6, 0] = 2
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    vol = read_mask(path)
    assert vol.array.shape == (5, 6, 7) and vol.array.dtype == np.uint8
    assert vol.spacing == pytest.approx((0.5, 0.7, 2.0)) and vol.axes == "ijk"
    np.testing.assert_allclose(vol.affine, affine)


def test_nifti_2d_slice_and_float_integral_labels(tmp_path):
    data = np.zeros((8, 9, 1), np.float32)
    data[2:4, 1:8, 0] = 3.0
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "s.nii")
    vol = read_mask(tmp_path / "s.nii")
    assert vol.array.shape == (8, 9) and vol.array.max() == 3


def test_nifti_real_4d_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.uint8), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(InputError, match="2D or 3D"):
        read_mask(tmp_path / "t.nii.gz")


def test_tiff_stack(tmp_path):
    stack = np.zeros((4, 5, 6), np.uint8)
    stack[1:3, 2, 1:5] = 255
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    vol = read_mask(tmp_path / "s.tif")
    assert vol.axes == "zyx" and vol.array.shape == (4, 5, 6) and vol.label_remap == {255: 1}


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "empty"),
        ("text.png", b"this is not an image", "cannot read"),
        ("junk.nii.gz", b"\x00garbage" * 50, "cannot read NIfTI"),
        ("mask.jpg", b"xx", "unsupported file type"),
        ("mask.bmp", b"xx", "unsupported file type"),
    ],
)
def test_bad_files_one_line_errors(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=reason) as err:
        read_mask(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_probability_map_and_nan_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 0.5, np.float32), np.eye(4)), tmp_path / "p.nii.gz")
    with pytest.raises(InputError, match="fractional"):
        read_mask(tmp_path / "p.nii.gz")
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "n.nii.gz")
    with pytest.raises(InputError, match="NaN"):
        read_mask(tmp_path / "n.nii.gz")


def test_negative_and_huge_labels_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), -2, np.int16), np.eye(4)), tmp_path / "neg.nii.gz")
    with pytest.raises(InputError, match="negative"):
        read_mask(tmp_path / "neg.nii.gz")
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 70000, np.int32), np.eye(4)), tmp_path / "big.nii.gz")
    with pytest.raises(InputError, match="exceeds 65535"):
        read_mask(tmp_path / "big.nii.gz")


def test_read_image_channel_first():
    rgb = read_image(EXAMPLES / "road_cracks" / "imagesTr" / "crack_000_0000.png")
    assert rgb.array.shape == (3, 640, 1024)
    vol = read_image(EXAMPLES / "octa3d" / "imagesTr" / "octa_000_0000.nii.gz")
    assert vol.array.shape == (1, 64, 64, 64)


def test_split_suffix():
    assert split_suffix("a/b.NII.GZ") == ("a/b", ".NII.GZ")
    assert split_suffix("x.tiff") == ("x", ".tiff")
    assert split_suffix("x.txt") == ("x.txt", "")


@pytest.mark.parametrize("mode, channels", [("RGBA", 3), ("LA", 1), ("RGB", 3), ("L", 1)])
def test_read_image_drops_alpha(tmp_path, mode, channels):
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(grey).convert(mode).save(tmp_path / "img.png")
    image = read_image(tmp_path / "img.png").array
    assert image.shape == (channels, 5, 6)
    np.testing.assert_array_equal(image[0], grey)


def test_nifti_reads_the_same_with_zlib_as_with_isal(tmp_path, monkeypatch):
    """The fast inflate is optional: zlib (same API, same checks) gives the same volume."""
    import zlib

    import nibabel as nib

    from skelprep import io as skio

    volume = np.zeros((9, 7, 5), np.uint8)
    volume[2:6, 1:4, 1:3] = 3
    path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    fast = skio.read_mask(path)
    monkeypatch.setattr(skio, "_inflate", zlib)
    plain = skio.read_mask(path)
    np.testing.assert_array_equal(fast.array, plain.array)
    np.testing.assert_array_equal(fast.array, volume)
    raw, digest = skio.read_bytes(path)
    assert digest == skio.file_sha256(path) and raw == path.read_bytes()


def _nifti_with(path, **fields):
    """A small valid NIfTI mask whose header fields are then set as given (nibabel's writer fixes none)."""
    image = nib.Nifti1Image(np.ones((4, 5, 6), np.uint8), np.eye(4))
    image.header["vox_offset"] = 352
    for name, value in fields.items():
        image.header[name] = value
    if "srow_x" in fields:
        image.header["sform_code"] = 1
    path.write_bytes(image.header.binaryblock + b"\x00" * 4 + np.ones((4, 5, 6), np.uint8).tobytes("F"))
    return path


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"pixdim": [1, 1, np.nan, 1, 0, 0, 0, 0]}, "pixdim has NaN or infinite spacing"),
        ({"pixdim": [1, 1, 1, np.inf, 0, 0, 0, 0]}, "pixdim has NaN or infinite spacing"),
        ({"srow_x": [np.nan, 0, 0, 0]}, "affine .* is not finite"),
    ],
)
def test_nifti_with_nan_or_infinite_geometry_rejected(tmp_path, fields, reason):
    """NaN spacing would be written into the store's JSON as NaN, which is not JSON."""
    path = _nifti_with(tmp_path / "m.nii", **fields)
    for read in (read_mask, read_image):
        with pytest.raises(InputError, match=reason) as err:
            read(path)
        assert str(err.value).startswith(str(path))


def test_nifti_zero_and_negative_pixdim_read_as_nibabel_fixes_them(tmp_path):
    """Legacy writers leave pixdim 0: read as spacing 1, a negative one as its absolute value."""
    vol = read_mask(_nifti_with(tmp_path / "m.nii", pixdim=[1, 0, -2, 3, 0, 0, 0, 0]))
    assert vol.spacing == (1.0, 2.0, 3.0) and (vol.array == 1).all()


def test_multi_frame_png_rejected(tmp_path):
    """An animated PNG is not read as its first frame without a word."""
    frames = [Image.fromarray(np.full((6, 7), v, np.uint8)) for v in (0, 1, 2)]
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])
    for read in (read_mask, read_image, image_shape):
        with pytest.raises(InputError, match="has 3 frames"):
            read(tmp_path / "a.png")


def test_tiff_of_several_series_rejected(tmp_path):
    """Pages of different shapes are separate series: reading the first alone would drop the rest."""
    tifffile.imwrite(tmp_path / "s.tif", np.ones((5, 6), np.uint8))
    tifffile.imwrite(tmp_path / "s.tif", np.ones((7, 8), np.uint8), append=True)
    for read in (read_mask, read_image, image_shape):
        with pytest.raises(InputError, match="has 2 image series"):
            read(tmp_path / "s.tif")


def test_pil_errors_name_no_stream_object(tmp_path):
    path = tmp_path / "text.png"
    path.write_bytes(b"this is not an image")
    with pytest.raises(InputError) as err:
        read_mask(path)
    assert str(err.value) == f"{path}: cannot read image (UnidentifiedImageError: cannot identify image file)"


def test_image_header_gives_shape_dtype_and_samples(tmp_path):
    from skelprep.io import image_header

    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "rgb.png")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1)), np.eye(4)), tmp_path / "f.nii.gz")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((5, 6, 3), np.uint16), photometric="rgb")
    headers = {name: image_header(tmp_path / name) for name in ("rgb.png", "f.nii.gz", "rgb.tif")}
    assert {n: (h.shape, h.dtype.name, h.samples, h.nbytes) for n, h in headers.items()} == {
        "rgb.png": ((5, 6), "uint8", 3, 90),
        "f.nii.gz": ((4, 5, 6), "float64", 1, 960),
        "rgb.tif": ((5, 6), "uint16", 3, 180),
    }
