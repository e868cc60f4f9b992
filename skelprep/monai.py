"""MONAI adapter: stored Skeleton Recall targets as keys of a MONAI data dict (the ``monai`` extra).

:class:`LoadSkeletonTargetsd` puts the stored arrays of a case (``tube``, and
``thin``, or ``image``/``label`` from a store that holds them) into the data
dict as channel-first :class:`monai.data.MetaTensor` s in the voxel order and
with the affine that MONAI's ``LoadImaged`` gives the image of the same case.
Every later dict transform then treats them like the label::

    from monai import transforms as T
    from skelprep.monai import LoadSkeletonTargetsd, data_dicts

    keys = ("image", "label", "tube")
    pipeline = T.Compose([
        T.LoadImaged(("image", "label")),
        T.EnsureChannelFirstd(("image", "label")),
        LoadSkeletonTargetsd(("tube",), store="examples/octa3d/skeletons.zarr"),   # checks against "label"
        T.Orientationd(keys, axcodes="RAS"),
        T.Spacingd(keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest", "nearest")),
        T.RandCropByPosNegLabeld(keys, label_key="tube", spatial_size=(32, 32, 32)),
        T.RandAffined(keys, prob=1.0, rotate_range=0.3, mode=("bilinear", "nearest", "nearest")),
    ])
    items = pipeline(data_dicts("examples/octa3d")[0])   # a list: RandCropByPosNegLabeld gives num_samples

Why a dict transform and not an ``ImageReader``: a reader is chosen per file
name, but the store is one Zarr group for all cases, so a reader would need the
array name and case id smuggled into the "file name" or its constructor (one
``LoadImaged`` per key); more importantly a reader cannot see the image it must
agree with. The transform reads the case id from the dict, and checks the
target against the already loaded reference key (``ref_key``, the label by
default): same spatial shape, and, for NIfTI, the same affine — a stale store,
a wrong affine or a reader with another convention fails loudly (a
:class:`~skelprep.geometry.GeometryError`) instead of training on a shifted
target. Place it after ``LoadImaged``/``EnsureChannelFirstd`` and before any
spatial transform (it refuses a reference that was already transformed).

Topology targets (a store built with ``--targets``) load by name like the tube:
``LoadSkeletonTargetsd(("tube", "sdf", "radius", "components"), store=...)`` gives ``sdf`` with one
channel per class. Resample each key with the mode :data:`skelprep.torch.dataset.INTERPOLATION` names
(``"bilinear"`` for ``sdf``, ``"nearest"`` for the others). The distances are in physical units, so
``Orientationd`` and ``Spacingd`` keep them; a transform that scales (``RandAffined(scale_range=...)``,
``RandZoomd``) needs ``sdf`` and ``radius`` multiplied by its scale (docs/topology-targets.md says what
holds exactly).

Voxel order (see :mod:`skelprep.geometry` for the table): NIfTI targets keep
nibabel's ``(i, j, k)`` order and the stored affine, as ``NibabelReader``.
PNG targets, stored ``(row, column)``, are transposed to ``(column, row)`` with
an identity affine, as ``PILReader`` with its default ``reverse_indexing=True``
(pass ``reverse_indexing=False`` here if you pass it to the reader). TIFF
stacks, stored ``(z, y, x)``, become ``(x, y, z)`` as ``ITKReader`` gives them
(MONAI has no TIFF reader without ``itk``, which the test environment lacks:
this row follows MONAI's source and is not tested). Where the store has no
affine (PNG, TIFF), the target takes the reference's affine after the shape
check, so TIFF resolution tags read by ITK carry over.

The loss. ``skelprep.torch.SkeletonRecallLoss`` takes the network's raw
logits (it applies the softmax itself, fused) and the tube of class ids; the
float tube MONAI's transforms produce is fine (it is cast to int64). With
MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``, pass the same logits
to both::

    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from skelprep.torch import SkeletonRecallLoss

    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2))
    dice_ce, recall = DiceCELoss(to_onehot_y=True, softmax=True), SkeletonRecallLoss()
    logits = net(batch["image"])                                  # (B, C, *spatial), no softmax
    loss = dice_ce(logits, batch["label"]) + 1.0 * recall(logits, batch["tube"])

(If you already have the probabilities, ``SkeletonRecallLoss(apply_softmax=False)(probs, tube)``.)
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from skelprep.geometry import GeometryError, VoxelGeometry, framework_geometry, same_affine, to_framework
from skelprep.io import _squeezed
from skelprep.layout import discover
from skelprep.store import SkeletonStore, StoreError, as_store, case_group, read_array

__all__ = ["LoadSkeletonTargetsd", "data_dicts"]


def data_dicts(
    dataset: str | os.PathLike,
    *,
    case_ids: Sequence[str] | None = None,
    masks: str | None = None,
    images: str | None = None,
) -> list[dict[str, Any]]:
    """MONAI data dicts ``{"image", "label", "case_id"}`` for the cases of a dataset folder.

    ``image`` is the image file, or the list of channel files (``LoadImaged``
    stacks them as channels); ``label`` the mask file. Discovery reads no
    pixel data (see :func:`skelprep.layout.discover`). Cases that discovery
    cannot pair with their images (a missing channel file) are left out, as
    are the dataset's :attr:`~skelprep.layout.DatasetLayout.problems`.
    """
    layout = discover(dataset, masks=masks, images=images)
    wanted = None if case_ids is None else set(case_ids)
    out = []
    for case in layout.cases:
        if wanted is not None and case.case_id not in wanted:
            continue
        if case.image_problem is not None:  # left out like the dataset's other problem cases
            continue
        item: dict[str, Any] = {"label": os.fspath(case.mask), "case_id": case.case_id}
        if case.images:
            paths = [os.fspath(p) for p in case.images]
            item["image"] = paths[0] if len(paths) == 1 else paths
        out.append(item)
    return out


def _reference_geometry(ref: Any, key: Hashable) -> tuple[tuple[int, ...], np.ndarray]:
    """(spatial shape as loaded, affine) of the reference key; refuses a transformed one."""
    if not isinstance(ref, MetaTensor):
        raise GeometryError(
            f"reference key '{key}' is a {type(ref).__name__}, not a MetaTensor from LoadImaged"
        )
    if ref.applied_operations:
        raise GeometryError(
            f"reference key '{key}' was already transformed ({ref.applied_operations[-1].get('class')}); "
            "place LoadSkeletonTargetsd before any spatial transform"
        )
    shape = ref.meta.get("spatial_shape")
    shape = tuple(int(n) for n in (ref.shape[1:] if shape is None else np.asarray(shape).ravel()))
    return shape, np.asarray(ref.affine, np.float64)


def _match_shape(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``array`` (C, *spatial) as (C, *shape) if they differ at most by trailing singleton axes; else None."""
    if array.shape[1:] == shape:
        return array
    return array.reshape(array.shape[:1] + shape) if _squeezed(array.shape[1:]) == _squeezed(shape) else None


def _remap(x: torch.Tensor, remap: Mapping[str, int]) -> torch.Tensor:
    out = x.clone()
    for src, dst in remap.items():
        out[x == float(src)] = dst
    return out


class LoadSkeletonTargetsd(MapTransform):
    """Add stored arrays of the dict's case as channel-first ``MetaTensor`` s aligned with its image.

    Parameters
    ----------
    keys : str or sequence of str
        Stored arrays to load, also the dict keys they get: ``"tube"``,
        ``"thin"``, ``"image"``/``"label"`` from a store built with images, and
        ``"sdf"``, ``"radius"``, ``"components"`` from a store built with them.
    store : path or URL
        The skelprep store (``<dataset>/skeletons.zarr``). Opened lazily, once
        per process, so the transform pickles cheaply to DataLoader workers.
    case_key : str
        Dict key holding the case id (as :func:`data_dicts` writes it).
    ref_key : str or None
        Already loaded key to check the targets against (spatial shape; affine
        for NIfTI) and whose affine they take where the store has none.
        ``None`` skips the check and uses the table in :mod:`skelprep.geometry`.
    reverse_indexing : bool
        As given to MONAI's ``PILReader`` (default True): PNG targets are
        transposed to ``(column, row)``.
    dtype : numpy dtype
        Of the loaded arrays; float32 as ``LoadImaged`` (spatial transforms
        resample in float). A stored ``image`` keeps ``dtype`` too.
    remap_keys : sequence of str
        Label keys in the dict to which the case's ``label_remap`` is applied:
        a 0/255 mask read by ``LoadImaged`` becomes 0/1, the classes of the
        tube (a no-op for masks skelprep did not remap). ``()`` to leave them.
    allow_missing_keys : bool
        Skip stored arrays the case does not have instead of raising.

    Raises
    ------
    KeyError
        The case id is not a complete case of the store.
    StoreError
        The store cannot be opened, the case is incomplete, or lacks an array.
    GeometryError
        The target's shape or affine disagrees with ``ref_key``.
    """

    def __init__(
        self,
        keys: KeysCollection = ("tube",),
        *,
        store: str | os.PathLike,
        case_key: str = "case_id",
        ref_key: str | None = "label",
        reverse_indexing: bool = True,
        dtype: np.dtype | type | None = np.float32,
        remap_keys: Sequence[str] = ("label",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.store_path = os.fspath(store)
        self.case_key = case_key
        self.ref_key = ref_key
        self.reverse_indexing = reverse_indexing
        self.dtype = dtype
        self.remap_keys = tuple(remap_keys)
        self._store: SkeletonStore | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None  # reopened in the worker
        return state

    @property
    def store(self) -> SkeletonStore:
        if self._store is None:
            self._store = as_store(self.store_path)
        return self._store

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case_id = str(d[self.case_key])
        group, attrs = case_group(self.store, case_id)
        geometry = framework_geometry(attrs, "monai", reverse_indexing=self.reverse_indexing)
        ref = None
        if self.ref_key is not None and self.ref_key not in self.keys and self.ref_key in d:
            ref = _reference_geometry(d[self.ref_key], self.ref_key)

        def read_all() -> dict[Hashable, np.ndarray]:
            arrays = {}
            for key in self.keys:
                try:
                    arrays[key] = read_array(group, str(key), self.store.path)
                except StoreError:
                    if not self.allow_missing_keys:
                        raise
            return arrays

        # confirmed once for all keys: the case as case_group read it, or StoreError "being rebuilt"
        for key, array in self.store.checked(case_id, attrs, read_all).items():
            d[key] = self._meta_tensor(array, attrs, geometry, ref, case_id, key)
        remap = attrs.get("label_remap") or {}
        for key in self.remap_keys:
            if remap and key in d:
                d[key] = _remap(d[key], remap)
        return d

    def _meta_tensor(
        self,
        array: np.ndarray,
        attrs: Mapping[str, Any],
        geometry: VoxelGeometry,
        ref: tuple[tuple[int, ...], np.ndarray] | None,
        case_id: str,
        key: Hashable,
    ) -> MetaTensor:
        channel_first = array.ndim == len(attrs["shape"]) + 1
        out = to_framework(array, geometry, channel_first=channel_first)
        affine = geometry.affine
        if ref is not None:
            ref_shape, ref_affine = ref
            matched = _match_shape(out, ref_shape)
            if matched is None:
                raise GeometryError(
                    f"case '{case_id}': stored '{key}' has spatial shape {out.shape[1:]} as MONAI orders it, "
                    f"'{self.ref_key}' has {ref_shape} (another reader, or reverse_indexing={not self.reverse_indexing}?)"
                )
            out = matched
            if not geometry.stored_affine:
                affine = ref_affine  # the file has no geometry: the pixel grid is all there is
            elif not same_affine(affine, ref_affine):
                raise GeometryError(
                    f"case '{case_id}': stored affine of '{key}' {np.round(affine, 4).tolist()} differs from "
                    f"the affine of '{self.ref_key}' {np.round(ref_affine, 4).tolist()} (stale or wrong store?)"
                )
        tensor = torch.as_tensor(np.ascontiguousarray(out, dtype=self.dtype))
        meta = {
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(out.shape[1:]),
            "space": "RAS",
            "original_channel_dim": 0,
            "filename_or_obj": f"{Path(self.store_path).as_posix()}/{case_id}/{key}",
        }
        return MetaTensor(tensor, affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)
