"""skelprep.torchio with the real TorchIO: stored targets stay on the label through TorchIO's transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

tio = pytest.importorskip("torchio")
torch = pytest.importorskip("torch")

from skelprep.geometry import GeometryError  # noqa: E402
from skelprep.store import StoreError, open_store  # noqa: E402
from skelprep.torchio import skeleton_label_map, subjects_dataset  # noqa: E402

from .adapter_data import (  # noqa: E402
    NIFTI_CASE,
    NIFTI_SHAPE,
    PNG_CASE,
    assert_patches_aligned,
    assert_sdf_follows_label,
    binary_png_dataset,
    built,
    flipped,
    off_label,
    rotated_affine,
    store_copy_with_affine,
    store_copy_with_images,
    tiff_dataset,
)
from .helpers import write_png  # noqa: E402


def patches(subjects, patch_size, n=4):
    queue = tio.Queue(
        subjects,
        max_length=n,
        samples_per_volume=n,
        sampler=tio.LabelSampler(patch_size, label_name="tube"),
        num_workers=0,
        shuffle_subjects=False,
        verbose=False,
    )
    return [queue[i] for i in range(n)]


def assert_aligned(patch_list):
    assert_patches_aligned(
        [{k: p[k].data.numpy() for k in ("image", "label", "tube", "thin")} for p in patch_list]
    )


def test_label_map_of_a_nifti_case_has_the_stored_affine(nifti):
    dataset, store = nifti
    tube = skeleton_label_map(store, NIFTI_CASE)
    label = tio.LabelMap(dataset / "labels" / f"{NIFTI_CASE}.nii.gz")
    assert tube.shape == label.shape == (1, 30, 36, 42)
    np.testing.assert_allclose(tube.affine, rotated_affine(), atol=1e-5)
    np.testing.assert_array_equal(tube.data[0].numpy(), open_store(store)[NIFTI_CASE].tube[...])
    assert off_label(tube.data, label.data) == 0


def test_nifti_aligned_after_canonical_resample_affine_and_queue(nifti):
    dataset, store = nifti
    transform = tio.Compose(
        [tio.ToCanonical(), tio.Resample(1.0), tio.RandomAffine(scales=0.15, degrees=25, isotropic=False)]
    )
    torch.manual_seed(0)
    subjects = subjects_dataset(store, dataset, names=("tube", "thin"), transform=transform)
    assert_aligned(patches(subjects, 20, n=6))


def test_topology_targets_get_their_interpolation_and_keep_distances_through_resampling(nifti_topology):
    dataset, store = nifti_topology
    names = ("sdf", "radius", "components")
    (subject,) = subjects_dataset(store, dataset, names=names)
    assert isinstance(subject["sdf"], tio.ScalarImage)
    assert all(isinstance(subject[n], tio.LabelMap) for n in ("radius", "components"))
    case = open_store(store)[NIFTI_CASE]
    for name in names:
        stored = case.array(name)[...]
        np.testing.assert_array_equal(subject[name].data.numpy().reshape(stored.shape), stored)
        np.testing.assert_allclose(subject[name].affine, rotated_affine(), atol=1e-5)
    assert subject["sdf"].shape == (3, *NIFTI_SHAPE)

    resampled = tio.Compose([tio.ToCanonical(), tio.Resample(1.0)])(subject)
    assert resampled["sdf"].shape[1:] == resampled["label"].shape[1:] != NIFTI_SHAPE
    assert_sdf_follows_label(resampled["sdf"].data.numpy(), resampled["label"].data.numpy())
    assert off_label(resampled["radius"].data > 0, resampled["label"].data > 0) == 0


def test_png_case_in_torchio_voxel_order(png):
    dataset, store = png
    subject = subjects_dataset(store, dataset, names=("tube",))[0]
    stored = open_store(store)[PNG_CASE].tube[...]  # (row, column) = (640, 1024)
    assert subject["image"].shape == (3, 1024, 640, 1) and subject["tube"].shape == (1, 1024, 640, 1)
    np.testing.assert_array_equal(subject["tube"].data[0, :, :, 0].numpy(), stored.T)
    np.testing.assert_array_equal(subject["tube"].affine, subject["image"].affine)
    np.testing.assert_array_equal(skeleton_label_map(store, PNG_CASE).affine, subject["image"].affine)
    subject.check_consistent_space()
    assert off_label(subject["tube"].data, subject["label"].data) == 0


def test_png_aligned_after_affine_and_queue(png):
    dataset, store = png
    torch.manual_seed(0)
    transform = tio.RandomAffine(scales=(0.85, 1.15, 0.85, 1.15, 1, 1), degrees=(0, 0, 0, 0, -40, 40))
    subjects = subjects_dataset(store, dataset, names=("tube", "thin"), transform=transform)
    assert_aligned(patches(subjects, (64, 64, 1)))


def test_wrong_affine_in_the_store_is_refused_and_would_misalign(nifti, tmp_path):
    dataset, store = nifti
    wrong = store_copy_with_affine(
        store, tmp_path / "wrong.zarr", NIFTI_CASE, flipped(rotated_affine(), NIFTI_SHAPE[0])
    )
    subjects = subjects_dataset(wrong, dataset)
    with pytest.raises(GeometryError, match="differs from the affine of"):
        subjects[0]  # SubjectsDataset loads the subject
    # Used on its own, the label map carries the wrong affine: TorchIO's samplers refuse the subject ...
    label = tio.LabelMap(dataset / "labels" / f"{NIFTI_CASE}.nii.gz")
    subject = tio.Subject(label=label, tube=skeleton_label_map(wrong, NIFTI_CASE))
    with pytest.raises(RuntimeError, match="not in the same space|More than one value"):
        subject.check_consistent_space()
    # ... and resampled onto the label's grid, the tube lies beside the label: the alignment check can fail.
    on_label_grid = tio.Resample("label")(subject)
    tube = on_label_grid["tube"].data
    assert off_label(tube, on_label_grid["label"].data) > 0.2 * int((tube > 0).sum())


def test_binary_mask_label_gets_the_tube_classes(tmp_path):
    dataset = binary_png_dataset(tmp_path / "bin")
    store = built(dataset)
    subject = subjects_dataset(store, dataset)[0]
    assert set(np.unique(subject["label"].data.numpy())) == {0, 1}  # the file holds 0/255
    assert off_label(subject["tube"].data, subject["label"].data) == 0 and subject["tube"].data.any()


def test_store_with_images_needs_no_dataset(nifti, png, tmp_path):
    for dataset, store in (nifti, png):
        with_images = store_copy_with_images(store, tmp_path / f"{dataset.name}.zarr", dataset)
        from_files = subjects_dataset(store, dataset)[0]
        from_store = subjects_dataset(with_images)[0]  # no dataset folder
        for key in ("image", "label", "tube"):
            np.testing.assert_array_equal(from_store[key].data.numpy(), from_files[key].data.numpy())
            np.testing.assert_allclose(from_store[key].affine, from_files[key].affine, atol=1e-5)
    with pytest.raises(StoreError, match="--with-images"):
        subjects_dataset(store)  # targets only, and no dataset folder


def test_subjects_pickle_for_queue_workers(nifti):
    dataset, store = nifti
    subjects = subjects_dataset(store, dataset)
    clone = pickle.loads(pickle.dumps(subjects))
    np.testing.assert_array_equal(clone[0]["tube"].data, subjects[0]["tube"].data)


def test_tiff_stack_in_torchio_voxel_order_and_spacing(tmp_path):
    dataset = tiff_dataset(tmp_path / "tif")
    store = built(dataset)
    torch.manual_seed(0)
    transform = tio.RandomAffine(scales=0.1, degrees=20)
    subject = subjects_dataset(store, dataset, names=("tube", "thin"))[0]
    stored = open_store(store)["stack"].tube[...]  # (z, y, x)
    assert subject["image"].shape == subject["tube"].shape == (1, 48, 40, 14)
    np.testing.assert_array_equal(subject["tube"].data[0].numpy(), stored.transpose(2, 1, 0))
    assert subject["tube"].spacing == subject["image"].spacing != (1.0, 1.0, 1.0)  # ITK's, from the tags
    subject.check_consistent_space()
    assert off_label(subject["tube"].data, subject["label"].data) == 0
    subjects = subjects_dataset(store, dataset, names=("tube", "thin"), transform=transform)
    assert_aligned(patches(subjects, (16, 16, 8)))


def test_labels_match_torchio_reading_where_it_reads_them_right(nifti, png):
    for dataset, store in (nifti, png):
        subject = subjects_dataset(store, dataset)[0]
        native = tio.LabelMap(next(dataset.glob("labels*/*.*")))  # TorchIO's own reading of the mask
        np.testing.assert_array_equal(subject["label"].data, native.data)
        np.testing.assert_array_equal(subject["label"].affine, native.affine)


def test_palette_mask_keeps_its_class_indices(tmp_path):
    from PIL import Image

    indices = np.zeros((48, 80), np.uint8)
    indices[20:26, 5:75], indices[5:45, 50:55] = 1, 2
    (tmp_path / "pal" / "labels").mkdir(parents=True)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    image.save(tmp_path / "pal" / "labels" / "p.png")
    write_png(tmp_path / "pal" / "images" / "p.png", indices * 100)
    store = built(tmp_path / "pal")
    assert tio.LabelMap(tmp_path / "pal" / "labels" / "p.png").shape[0] == 3  # SimpleITK: colours
    subject = subjects_dataset(store, tmp_path / "pal")[0]
    assert subject["label"].shape == subject["tube"].shape == (1, 80, 48, 1)
    assert set(np.unique(subject["label"].data.numpy())) == {0, 1, 2}
    assert off_label(subject["tube"].data, subject["label"].data) == 0 and subject["tube"].data.any()
    subject.check_consistent_space()
