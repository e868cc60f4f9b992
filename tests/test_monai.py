"""skelprep.monai with the real MONAI: stored targets stay on the label through MONAI's dict transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("monai")
torch = pytest.importorskip("torch")

from monai import transforms as T  # noqa: E402

from skelprep.geometry import GeometryError  # noqa: E402
from skelprep.monai import LoadSkeletonTargetsd, data_dicts  # noqa: E402
from skelprep.store import open_store  # noqa: E402
from skelprep.torch.dataset import INTERPOLATION  # noqa: E402

from .adapter_data import (  # noqa: E402
    NIFTI_CASE,
    NIFTI_SHAPE,
    assert_patches_aligned,
    assert_sdf_follows_label,
    binary_png_dataset,
    built,
    flipped,
    off_label,
    rotated_affine,
    store_copy_with_affine,
    store_copy_with_images,
)

KEYS = ("image", "label", "tube", "thin")
MODES = ("bilinear", "nearest", "nearest", "nearest")


def loading(store, *, ref_key="label", **kwargs):
    return [
        T.LoadImaged(("image", "label")),
        T.EnsureChannelFirstd(("image", "label")),
        LoadSkeletonTargetsd(("tube", "thin"), store=store, ref_key=ref_key, **kwargs),
    ]


def compose_error(pipeline, data) -> BaseException:
    """The error a transform raised inside ``Compose`` (MONAI wraps it in a RuntimeError)."""
    with pytest.raises(RuntimeError, match="applying transform") as info:
        pipeline(data)
    return info.value.__cause__


def pipeline_3d(store, *, ref_key="label", patch=20, seed=0):
    pipe = T.Compose(
        [
            *loading(store, ref_key=ref_key),
            T.Orientationd(KEYS, axcodes="RAS", labels=None),
            T.Spacingd(KEYS, pixdim=(1.0, 1.0, 1.0), mode=MODES),
            T.RandCropByPosNegLabeld(
                KEYS, label_key="tube", spatial_size=(patch,) * 3, pos=1, neg=0, num_samples=3
            ),
            T.RandAffined(KEYS, prob=1.0, rotate_range=(0.4, 0.4, 0.4), scale_range=0.15, mode=MODES),
        ]
    )
    pipe.set_random_state(seed)
    return pipe


def pipeline_2d(store, *, seed=0, **kwargs):
    pipe = T.Compose(
        [
            *loading(store, **kwargs),
            T.Spacingd(KEYS, pixdim=(1.5, 1.5), mode=MODES),
            T.RandCropByPosNegLabeld(
                KEYS, label_key="tube", spatial_size=(64, 64), pos=1, neg=0, num_samples=3
            ),
            T.RandAffined(KEYS, prob=1.0, rotate_range=0.6, scale_range=0.15, mode=MODES),
        ]
    )
    pipe.set_random_state(seed)
    return pipe


def assert_aligned(patches):
    assert_patches_aligned([{k: p[k].numpy() for k in KEYS} for p in patches])


def test_nifti_targets_carry_the_stored_affine_and_voxel_order(nifti):
    dataset, store = nifti
    d = T.Compose(loading(store))(data_dicts(dataset)[0])
    stored = open_store(store)[NIFTI_CASE].tube[...]
    assert d["tube"].shape == (1, *stored.shape) == d["label"].shape
    np.testing.assert_array_equal(d["tube"][0].numpy(), stored)
    np.testing.assert_allclose(d["tube"].affine.numpy(), rotated_affine(), atol=1e-5)
    assert off_label(d["tube"], d["label"]) == 0


def test_nifti_aligned_after_orientation_spacing_crop_and_affine(nifti):
    dataset, store = nifti
    for seed in range(2):
        patches = pipeline_3d(store, seed=seed)(data_dicts(dataset)[0])
        assert len(patches) == 3
        assert_aligned(patches)


def test_topology_targets_load_aligned_and_keep_distances_through_orientation_and_spacing(nifti_topology):
    dataset, store = nifti_topology
    keys = ("label", "sdf", "radius", "components")
    modes = tuple("bilinear" if INTERPOLATION[k] == "linear" else "nearest" for k in keys)
    loaded = T.Compose(
        [
            T.LoadImaged("label"),
            T.EnsureChannelFirstd("label"),
            LoadSkeletonTargetsd(keys[1:], store=store),
        ]
    )(data_dicts(dataset)[0])
    case = open_store(store)[NIFTI_CASE]
    for key in keys[1:]:
        stored = case.array(key)[...]
        np.testing.assert_array_equal(loaded[key].numpy().reshape(stored.shape), stored)
    assert loaded["sdf"].shape == (3, *NIFTI_SHAPE)
    assert off_label(loaded["components"] > 0, loaded["label"] > 0) == 0

    resampled = T.Compose(
        [
            T.Orientationd(keys, axcodes="RAS", labels=None),
            T.Spacingd(keys, pixdim=(1.0, 1.0, 1.0), mode=modes),
        ]
    )(loaded)
    assert resampled["sdf"].shape[1:] == resampled["label"].shape[1:] != NIFTI_SHAPE
    assert_sdf_follows_label(resampled["sdf"].numpy(), resampled["label"].numpy())
    assert off_label(resampled["radius"] > 0, resampled["label"] > 0) == 0


def test_wrong_affine_in_the_store_is_refused_and_would_misalign(nifti, tmp_path):
    dataset, store = nifti
    wrong = store_copy_with_affine(
        store, tmp_path / "wrong.zarr", NIFTI_CASE, flipped(rotated_affine(), NIFTI_SHAPE[0])
    )
    error = compose_error(T.Compose(loading(wrong)), data_dicts(dataset)[0])
    assert isinstance(error, GeometryError) and "differs from the affine of 'label'" in str(error)
    # Without the check, the same transforms put the tube beside the label: the alignment check can fail.
    resample = T.Compose(
        [
            *loading(wrong, ref_key=None),
            T.Orientationd(KEYS, "RAS", labels=None),
            T.Spacingd(KEYS, 1.0, mode=MODES),
        ]
    )
    d = resample(data_dicts(dataset)[0])
    assert off_label(d["tube"], d["label"]) > 0.2 * int((d["tube"] > 0).sum())


def test_png_targets_follow_pilreader_transpose(png):
    dataset, store = png
    d = T.Compose(loading(store))(data_dicts(dataset)[0])
    stored = open_store(store)["crack_000"].tube[...]  # (row, column) = (640, 1024)
    assert stored.shape == (640, 1024)
    assert d["image"].shape == (3, 1024, 640) and d["tube"].shape == (1, 1024, 640)
    np.testing.assert_array_equal(d["tube"][0].numpy(), stored.T)
    assert off_label(d["tube"], d["label"]) == 0
    error = compose_error(T.Compose(loading(store, reverse_indexing=False)), data_dicts(dataset)[0])
    assert isinstance(error, GeometryError) and "spatial shape" in str(error)  # a wrong voxel order is caught


def test_png_aligned_after_spacing_crop_and_affine(png):
    dataset, store = png
    assert_aligned(pipeline_2d(store)(data_dicts(dataset)[0]))


def test_binary_mask_remapped_to_the_tube_classes(tmp_path):
    dataset = binary_png_dataset(tmp_path / "bin")
    store = built(dataset)
    data = data_dicts(dataset)[0]
    as_read = T.Compose(loading(store, remap_keys=()))(data)["label"]
    assert set(np.unique(as_read.numpy())) == {0.0, 255.0}  # LoadImaged reads the file's 0/255
    d = T.Compose(loading(store))(data)
    assert set(np.unique(d["label"].numpy())) == {0.0, 1.0}
    assert off_label(d["tube"], d["label"]) == 0 and d["tube"].any()


def test_arrays_stored_with_images_load_like_the_files(nifti, tmp_path):
    dataset, store = nifti
    with_images = store_copy_with_images(store, tmp_path / "v2.zarr", dataset)
    from_files = T.Compose(loading(store))(data_dicts(dataset)[0])
    from_store = LoadSkeletonTargetsd(("image", "label", "tube"), store=with_images)({"case_id": NIFTI_CASE})
    for key in ("image", "label", "tube"):
        np.testing.assert_allclose(from_store[key].numpy(), from_files[key].numpy(), rtol=1e-6)
        np.testing.assert_allclose(from_store[key].affine.numpy(), from_files[key].affine.numpy(), atol=1e-5)


def test_transform_pickles_without_its_open_store(nifti):
    dataset, store = nifti
    transform = LoadSkeletonTargetsd(("tube",), store=store, ref_key=None)
    transform({"case_id": NIFTI_CASE})
    clone = pickle.loads(pickle.dumps(transform))
    assert clone._store is None
    assert clone({"case_id": NIFTI_CASE})["tube"].shape == (1, 30, 36, 42)


def test_recall_loss_on_a_monai_network_with_dice_ce(png):
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from skelprep.torch import SkeletonRecallLoss

    dataset, store = png
    patches = pipeline_2d(store)(data_dicts(dataset)[0])
    batch = {k: torch.stack([p[k] for p in patches]) for k in KEYS}
    net = UNet(spatial_dims=2, in_channels=3, out_channels=4, channels=(4, 8), strides=(2,))
    logits = net(batch["image"])
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, batch["label"]) + SkeletonRecallLoss()(
        logits, batch["tube"]
    )
    loss.backward()
    assert torch.isfinite(loss) and next(net.parameters()).grad is not None


def test_2d_nifti_saved_with_a_singleton_axis_gets_it_back(tmp_path):
    import nibabel as nib

    labels = np.zeros((40, 30, 1), np.uint8)
    labels[5:35, 12:17] = 2
    for folder in ("labels", "images"):
        (tmp_path / "d" / folder).mkdir(parents=True)
        nib.save(
            nib.Nifti1Image(labels, np.diag([0.5, 0.8, 1.0, 1.0])), tmp_path / "d" / folder / "flat.nii.gz"
        )
    store = built(tmp_path / "d")
    assert open_store(store)["flat"].shape == (40, 30)  # stored without the singleton axis
    d = T.Compose(loading(store))(data_dicts(tmp_path / "d")[0])
    assert d["label"].shape == d["tube"].shape == (1, 40, 30, 1)
    assert off_label(d["tube"], d["label"]) == 0 and d["tube"].any()
