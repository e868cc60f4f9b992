"""Small built datasets and alignment checks shared by the MONAI and TorchIO adapter tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import zarr

from skelprep.build import build
from skelprep.io import read_image, read_mask
from skelprep.store.format import array_layout

from .helpers import EXAMPLES, copy_cases, tubes_3d, write_png

NIFTI_CASE = "vessels"
NIFTI_SHAPE = (30, 36, 42)
PNG_CASE = "crack_000"


def rotated_affine() -> np.ndarray:
    """Voxel-to-world: a rotation about an oblique axis, spacing 0.7 / 1.3 / 2.1 mm, an offset.

    Not diagonal, not a permutation: a transposed or mis-flipped target cannot
    land on the label by accident, and ``Orientationd``/``ToCanonical`` must
    really reorder axes.
    """
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    angle = 0.6
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k  # Rodrigues
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 1.3, 2.1])
    affine[:3, 3] = [12.0, -7.5, 3.25]
    return affine


TOPOLOGY = ("tube", "thin", "sdf", "radius", "components")


def built(dataset: Path, **kwargs) -> Path:
    """Build the dataset's store in process (``kwargs`` to :func:`skelprep.build.build`); return the store path."""
    report = build(dataset, workers=1, **kwargs)
    assert report.ok, [o.message for o in report.failed]
    return dataset / "skeletons.zarr"


def nifti_dataset(root: Path) -> Path:
    """Generic layout: one 3D 3-class tube case with :func:`rotated_affine`, image = noisy label."""
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    labels = tubes_3d(NIFTI_SHAPE, n=6, seed=3)
    image = labels * 50.0 + np.random.default_rng(0).normal(0, 5, labels.shape)
    nib.save(nib.Nifti1Image(labels, rotated_affine()), root / "labels" / f"{NIFTI_CASE}.nii.gz")
    nib.save(
        nib.Nifti1Image(image.astype(np.float32), rotated_affine()), root / "images" / f"{NIFTI_CASE}.nii.gz"
    )
    return root


def png_dataset(root: Path) -> Path:
    """One real 2D case of examples/road_cracks: 640x1024, classes 1-3, RGB image (nnU-Net layout)."""
    return copy_cases(EXAMPLES / "road_cracks", root, [PNG_CASE])


def binary_png_dataset(root: Path) -> Path:
    """A small 0/255 mask (stored as 0/1, ``label_remap`` {255: 1}) with a grey image, 48x80."""
    mask = np.zeros((48, 80), np.uint8)
    mask[20:26, 5:75] = 255
    mask[5:45, 50:55] = 255
    write_png(root / "labels" / "bin.png", mask)
    write_png(root / "images" / "bin.png", (mask // 2 + 20).astype(np.uint8))
    return root


def store_copy_with_affine(store: Path, dst: Path, case_id: str, affine: np.ndarray) -> Path:
    """A copy of ``store`` whose case attributes claim ``affine`` (the arrays are untouched)."""
    shutil.copytree(store, dst)
    group = zarr.open_group(dst, mode="r+", use_consolidated=False)[case_id]
    meta = dict(group.attrs["skelprep"])
    group.attrs.update({"skelprep": {**meta, "affine": np.asarray(affine).tolist()}})
    return dst


def flipped(affine: np.ndarray, length: int) -> np.ndarray:
    """``affine`` with its first voxel axis (of ``length`` voxels) reversed, over the same field of view.

    The slip a wrong affine typically is (an LPS/RAS mix-up, a voxel order read backwards).
    """
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, length - 1.0
    return np.asarray(affine) @ flip


def store_copy_with_images(store: Path, dst: Path, dataset: Path) -> Path:
    """A copy of ``store`` whose cases also hold ``image`` and ``label`` arrays, as format 2 does.

    Written as docs/store-format.md specifies them: ``image`` channel-first in the mask's
    voxel order and the source dtype, ``label`` the mask as read.
    """
    shutil.copytree(store, dst)
    root = zarr.open_group(dst, mode="r+", use_consolidated=False)
    for case_id in list(root.group_keys()):
        meta = root[case_id].attrs["skelprep"]
        mask = dataset / meta["source"]
        image_path = next((dataset / "images").glob(mask.name)) if (dataset / "images").is_dir() else None
        if image_path is None:
            image_path = next((dataset / "imagesTr").glob(f"{Path(case_id).name}_0000.*"))
        for name, data in (("image", read_image(image_path).array), ("label", read_mask(mask).array)):
            layout = array_layout(name, data.shape, data.dtype, tuple(meta["shape"]))
            root[case_id].create_array(name, shape=data.shape, dtype=data.dtype, fill_value=0, **layout)[
                ...
            ] = data
    return dst


def off_label(target: np.ndarray, label: np.ndarray) -> int:
    """Target voxels that do not lie on label voxels of the same class."""
    target, label = np.asarray(target), np.asarray(label)
    assert target.shape == label.shape, (target.shape, label.shape)
    return int(((target > 0) & (np.rint(target) != np.rint(label))).sum())


def tiff_dataset(root: Path) -> Path:
    """Generic layout: one (z, y, x) TIFF stack with resolution tags (ITK reads them as spacing), 14x40x48."""
    import tifffile

    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    labels = tubes_3d((14, 40, 48), n=5, seed=5)
    for folder, data in (("labels", labels), ("images", labels * 60 + 10)):
        tifffile.imwrite(
            root / folder / "stack.tif",
            data.astype(np.uint8),
            photometric="minisblack",
            resolution=(2.0, 4.0),
        )
    return root


def assert_patches_aligned(patches: list[dict[str, np.ndarray]]) -> None:
    """Patches of ``image``, ``label``, ``tube``, ``thin`` (channel-first, centred on the tube) agree."""
    for p in patches:
        tube, thin, label = p["tube"], p["thin"], p["label"]
        assert p["image"].shape[1:] == tube.shape[1:] == label.shape[1:]
        assert off_label(tube, label) == 0  # every tube voxel on the label, same class
        assert off_label(thin, tube) == 0  # where the centreline crosses the patch, its tube is there
        # Centred on a tube voxel, within 2 voxels of the centreline. (Resampling a 1-voxel centreline with
        # nearest neighbours can drop it from a patch; its radius-2 tube survives.)
        assert tube.any()
    assert any(p["thin"].any() for p in patches)  # the check above is not vacuous


def assert_sdf_follows_label(sdf: np.ndarray, label: np.ndarray, spacing: float = 1.0) -> None:
    """A resampled sdf (K, *spatial) against the exact sdf of the resampled label (1, *spatial).

    What docs/topology-targets.md promises for linear resampling: within a couple of output
    voxels everywhere and one voxel almost everywhere, and the sign (the class) wrong only
    next to the boundary.
    """
    from skelprep.targets import signed_distance

    label = np.rint(np.asarray(label)[0]).astype(np.int32)
    exact = signed_distance(label, list(range(1, sdf.shape[0] + 1)), spacing=(spacing,) * label.ndim)
    error = np.abs(np.asarray(sdf, np.float64) - exact)
    assert error.max() <= 3.0 * spacing, error.max()
    assert np.quantile(error, 0.99) <= 1.0 * spacing, np.quantile(error, 0.99)
    far = np.abs(exact) > 2.0 * spacing
    assert far.any() and ((sdf < 0) == (exact < 0))[far].all()
