"""SkeletonDataset: aligned patches through DataLoader workers, full cases, store errors, pickling, transforms."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from skelprep.build import build
from skelprep.io import read_image, read_mask
from skelprep.store import ATTRS_KEY, StoreError, open_store
from skelprep.torch.dataset import SkeletonDataset, normalize_image

from .helpers import EXAMPLES, copy_cases, crop_padded

DATA = EXAMPLES  # the bundled copies of the shared nnU-Net datasets: no ../shared needed


def make_dataset(root: Path, kind: str, n: int = 2) -> Path:
    """``kind`` "2d"/"3d": a targets-only store; "2d-img"/"3d-img": built with images (streamed items)."""
    name = kind.replace("-", "_")
    if kind.startswith("2d"):
        path = copy_cases(DATA / "road_cracks", root / f"cracks_{name}", [f"crack_{i:03d}" for i in range(n)])
    else:
        path = copy_cases(DATA / "octa3d", root / f"octa_{name}", [f"octa_{i:03d}" for i in range(n)])
    report = build(path, workers=1, with_images=kind.endswith("img"))
    assert report.ok and len(report.built) == n
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    return {kind: make_dataset(root, kind) for kind in ("2d", "3d", "2d-img", "3d-img")}


@pytest.mark.parametrize(
    ("kind", "patch"),
    [("2d", (96, 160)), ("3d", (24, 32, 40)), ("2d-img", (96, 160)), ("3d-img", (24, 32, 40))],
)
def test_dataloader_workers_yield_aligned_patches(built, kind, patch):
    dataset = built[kind]
    ds = SkeletonDataset(dataset, patch_size=patch, foreground_prob=0.5, include_thin=True)
    assert ds.streamed == kind.endswith("img")
    store = open_store(dataset / "skeletons.zarr")
    sampler = RandomSampler(ds, replacement=True, num_samples=12)
    loader = DataLoader(ds, batch_size=3, num_workers=2, sampler=sampler)
    offsets = []
    n_batches = 0
    for batch in loader:
        n_batches += 1
        assert batch["image"].dtype == torch.float32 and batch["image"].shape[2:] == patch
        for key in ("label", "tube", "thin"):
            # the store's dtype, as nnU-Net's loader keeps its seg narrow
            assert batch[key].dtype == torch.uint8 and batch[key].shape == (3, 1, *patch)
        tube, label = batch["tube"], batch["label"]
        on_tube = tube > 0
        assert (label[on_tube] > 0).all() and torch.equal(tube[on_tube], label[on_tube])
        assert ((batch["thin"] > 0) <= on_tube).all()
        for i, case_id in enumerate(batch["case_id"]):
            offset = batch["offset"][i].tolist()
            offsets.append(tuple(offset))
            case = next(c for c in ds.cases if c.case_id == case_id)
            # Every array of the item is the same region of its source.
            image = normalize_image(np.concatenate([read_image(p).array for p in case.images]))
            # (streamed: z-scored with the stored float64 statistics, here with float32 ones)
            np.testing.assert_allclose(
                batch["image"][i].numpy(), crop_padded(image, offset, patch), atol=2e-5
            )
            np.testing.assert_array_equal(
                label[i, 0].numpy(), crop_padded(read_mask(case.mask).array, offset, patch)
            )
            np.testing.assert_array_equal(
                tube[i, 0].numpy(), crop_padded(store[case_id].tube[...], offset, patch)
            )
            np.testing.assert_array_equal(
                batch["thin"][i, 0].numpy(), crop_padded(store[case_id].thin[...], offset, patch)
            )
            assert batch["spacing"][i].shape == (len(patch),)
    assert n_batches == 4
    # The two workers draw their own patches.
    assert len(set(offsets)) > len(offsets) // 2


@pytest.mark.parametrize("kind", ["2d", "3d", "2d-img"])
def test_foreground_oversampling_centres_on_the_tube(built, kind):
    patch = (64, 64) if kind.startswith("2d") else (16, 16, 16)
    torch.manual_seed(0)
    ds = SkeletonDataset(built[kind], patch_size=patch, foreground_prob=1.0)
    centre = tuple(p // 2 for p in patch)
    for i in range(len(ds)):
        for _ in range(5):
            item = ds[i]
            assert item["tube"][(0, *centre)] > 0
    # Class-balanced: in the 4-class cracks, each tube class is drawn (uniform over present classes).
    if kind.startswith("2d"):
        seen = {int(ds[0]["tube"][(0, *centre)]) for _ in range(40)}
        present = {
            int(k)
            for k in open_store(built[kind] / "skeletons.zarr")[ds.case_ids[0]].attrs["label_counts"]["tube"]
        }
        assert seen == present


@pytest.mark.parametrize("kind", ["3d", "3d-img"])
def test_patches_at_borders_are_zero_padded(built, kind):
    # Axis 0 of the patch is longer than the 64^3 case.
    ds = SkeletonDataset(built[kind], patch_size=(80, 20, 20), foreground_prob=0.0)
    item = ds[0]
    assert item["image"].shape == (1, 80, 20, 20)
    offset = item["offset"].tolist()
    assert offset[0] < 0  # centre in [0, 64): the patch overhangs on axis 0
    assert float(item["image"][:, : -offset[0]].abs().sum()) == 0.0
    assert int(item["label"][:, : -offset[0]].sum()) == 0


@pytest.mark.parametrize("kind", ["2d", "3d", "2d-img", "3d-img"])
def test_full_case_mode(built, kind):
    ds = SkeletonDataset(built[kind], include_thin=True)
    store = open_store(built[kind] / "skeletons.zarr")
    assert len(ds) == 2
    item = ds[1]
    case = ds.cases[1]
    mask = read_mask(case.mask)
    assert item["case_id"] == case.case_id
    assert item["label"].shape == (1, *mask.array.shape)
    assert item["image"].shape[0] == (3 if kind.startswith("2d") else 1)
    np.testing.assert_array_equal(item["tube"][0].numpy(), store[case.case_id].tube[...])
    np.testing.assert_array_equal(item["thin"][0].numpy(), store[case.case_id].thin[...])
    image = item["image"].numpy().reshape(item["image"].shape[0], -1)
    np.testing.assert_allclose(image.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(image.std(1), 1, atol=1e-4)
    assert torch.equal(item["spacing"], torch.tensor(mask.spacing, dtype=torch.float64))
    assert "thin" not in SkeletonDataset(built[kind])[0]


def flip(item: dict) -> dict:
    """A custom dict transform (module level, so that the Dataset stays picklable)."""
    for key in ("image", "label", "tube"):
        item[key] = torch.flip(item[key], dims=[-1])
    item["flipped"] = True
    return item


def test_pickles_after_use_and_with_transform(built):
    plain = SkeletonDataset(built["2d"])
    ds = SkeletonDataset(built["2d"], transform=flip)
    item, ref = ds[0], plain[0]  # opens the store in this process
    assert item["flipped"] is True
    assert torch.equal(item["tube"], torch.flip(ref["tube"], dims=[-1]))
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._store is None  # no open handle travels
    assert torch.equal(clone[0]["label"], item["label"])
    # case_ids restricts and orders the cases.
    one = SkeletonDataset(built["2d"], case_ids=[ds.case_ids[1]])
    assert len(one) == 1 and one[0]["case_id"] == ds.case_ids[1]
    with pytest.raises(ValueError, match="unknown case"):
        SkeletonDataset(built["2d"], case_ids=["nope"])
    with pytest.raises(ValueError, match="patch_size"):
        SkeletonDataset(built["2d"], patch_size=(64, 64, 64))


def test_missing_store(tmp_path):
    dataset = copy_cases(DATA / "octa3d", tmp_path / "octa", ["octa_000"])
    with pytest.raises(StoreError, match="no skelprep store"):
        SkeletonDataset(dataset)


def test_stale_incomplete_and_unbuilt_cases(tmp_path):
    dataset = make_dataset(tmp_path, "2d")
    store_path = dataset / "skeletons.zarr"
    # Stale: the mask changed after the build (found on first use of the case).
    mask_path = dataset / "labelsTr" / "crack_001.png"
    mask = np.array(Image.open(mask_path))
    mask[0, 0] = 3 - mask[0, 0] % 3
    Image.fromarray(mask).save(mask_path)
    ds = SkeletonDataset(dataset)
    ds[0]  # the unchanged case still loads
    with pytest.raises(StoreError, match="crack_001.*stale"):
        ds[1]
    assert SkeletonDataset(dataset, check_fingerprints=False)[1]["case_id"] == "crack_001"
    # Incomplete: a case whose build did not finish.
    group = zarr.open_group(store_path / "crack_000", mode="r+")
    meta = dict(group.attrs[ATTRS_KEY])
    group.attrs[ATTRS_KEY] = {**meta, "complete": False}
    with pytest.raises(StoreError, match="crack_000.*incomplete"):
        SkeletonDataset(dataset)
    # Not built at all.
    del zarr.open_group(store_path, mode="r+")["crack_000"]
    with pytest.raises(StoreError, match="crack_000.*not built"):
        SkeletonDataset(dataset)
