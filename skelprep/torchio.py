"""TorchIO adapter: stored Skeleton Recall targets as ``tio.LabelMap`` s (the ``torchio`` extra).

:func:`skeleton_label_map` gives one stored array of a case as a lazy
``tio.LabelMap`` (read from the store when TorchIO first needs the data) in
the voxel order and with the affine that TorchIO gives the image of the same
case; as a ``LabelMap`` it is resampled with nearest-neighbour interpolation
and left alone by intensity transforms. :func:`subjects_dataset` turns a store
and its dataset folder into a ``tio.SubjectsDataset`` of subjects with
``image``, ``label`` and the targets, ready for ``tio.Queue`` and
``tio.LabelSampler(label_name="tube")``::

    import torchio as tio
    from skelprep.torchio import subjects_dataset

    subjects = subjects_dataset("examples/octa3d/skeletons.zarr", "examples/octa3d",
                                transform=tio.Compose([tio.ToCanonical(), tio.RandomAffine()]))
    queue = tio.Queue(subjects, max_length=16, samples_per_volume=4,
                      sampler=tio.LabelSampler(32, label_name="tube"), num_workers=2)

Voxel order (see :mod:`skelprep.geometry` for the table): TorchIO reads every
format through SimpleITK (NIfTI falling back to nibabel) as ``(C, W, H, D)``.
NIfTI targets keep nibabel's ``(i, j, k)`` order and the stored affine. PNG
targets, stored ``(row, column)``, become ``(1, column, row, 1)`` with
``diag(-1, -1, 1, 1)`` (ITK's RAS view of a file without geometry); TIFF stacks,
stored ``(z, y, x)``, become ``(1, x, y, z)`` with ``diag(-sx, -sy, sz, 1)``.
Where the store has no affine (PNG, TIFF), :func:`subjects_dataset` takes the
affine TorchIO reads from the case's mask file, so that TIFF resolution tags
(which ITK reads as spacing and skelprep does not) carry over.

TorchIO checks the geometry itself: its samplers call
``Subject.check_consistent_space()``, which raises when the tube's affine
(origin, direction, spacing) or shape differs from the image's — a wrong or
stale affine in the store is an error there, never a silent shift.

Topology targets (a store built with ``--targets``): ``subjects_dataset(..., names=("tube", "sdf",
"radius"))`` gives ``sdf`` as a ``ScalarImage``, so that spatial transforms resample it linearly, and
``radius`` and ``components`` as ``LabelMap`` s (nearest), as
:data:`skelprep.torch.dataset.INTERPOLATION` says. TorchIO's intensity transforms act on every
``ScalarImage``: give them ``include=["image"]``. The distances are in physical units, so reorienting and
resampling to another spacing keep them; a transform that scales (``RandomAffine(scales=...)``) needs
``sdf`` and ``radius`` multiplied by its scale (docs/topology-targets.md says what holds exactly).

Images come from the dataset files, read by TorchIO; labels from the mask
files as skelprep reads them (palette indices, 0/255 as 0/1: TorchIO's
SimpleITK reader would give a palette PNG three colour channels), placed in
TorchIO's voxel order with the affine TorchIO reads from the mask's header.
For cases whose store holds ``image`` and ``label`` arrays (``skelprep build
--with-images``, store format v2) both come from the store; then no dataset
folder is needed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio
from torchio.data.io import read_affine

from skelprep.geometry import GeometryError, framework_geometry, same_affine, to_framework
from skelprep.io import read_mask
from skelprep.layout import discover
from skelprep.store import SkeletonStore, StoreError, array_path, as_store, has_arrays, stored_array
from skelprep.torch.dataset import INTERPOLATION

__all__ = ["skeleton_label_map", "stored_scalar_image", "subjects_dataset"]


def _read_stored(
    store_path: str,
    case_id: str,
    name: str,
    affine: np.ndarray | None,
    affine_from: str | None,
    _path: object = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """TorchIO reader: a stored array as ``(C, W, H, D)`` and its affine (the file path is ignored)."""
    store = as_store(store_path, cached=True)  # once per process (DataLoader / Queue workers)
    array, attrs = stored_array(store, case_id, name)
    geometry = framework_geometry(attrs, "torchio")
    out = to_framework(array, geometry, channel_first=array.ndim == len(attrs["shape"]) + 1)
    if affine is None:
        affine = geometry.affine
        if affine_from is not None:
            # TorchIO's own reading of the mask header: bitwise what the image and label get (nibabel's
            # and ITK's float64 affines of one header differ by ~1e-8, enough for Resample(1.0) to give
            # shapes one voxel apart). A stored affine must agree with it.
            file_affine = read_affine(affine_from)
            if geometry.stored_affine and not same_affine(geometry.affine, file_affine):
                raise GeometryError(
                    f"{store_path}: case '{case_id}': stored affine {np.round(geometry.affine, 4).tolist()} "
                    f"differs from the affine of {affine_from} {np.round(file_affine, 4).tolist()} "
                    "(stale or wrong store?)"
                )
            affine = file_affine
    return _label_tensor(out), np.asarray(affine, np.float64)


def _label_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint16:  # torch has no uint16 arithmetic; TorchIO would make it int32 too
        array = array.astype(np.int32)
    return torch.as_tensor(np.ascontiguousarray(array))


def _stored_image(
    kind: type[tio.Image],
    store: str | os.PathLike | SkeletonStore,
    case_id: str,
    name: str,
    affine: np.ndarray | None,
    affine_from: str | os.PathLike | None,
) -> tio.Image:
    store = as_store(store)
    if case_id not in store:
        raise StoreError(f"{store.path}: case '{case_id}' is not built (run 'skelprep build')")
    reader = functools.partial(
        _read_stored,
        store.path,
        case_id,
        name,
        None if affine is None else np.asarray(affine, np.float64),
        None if affine_from is None else os.fspath(affine_from),
    )
    # The "path" names the array's folder (TorchIO shows it and checks that it exists); the reader
    # opens the store itself.
    where = array_path(store.case_attrs(case_id) or {}, name)
    return kind(path=f"{store.path}/{case_id}/{where}", reader=reader, verify_path=False)


def skeleton_label_map(
    store: str | os.PathLike | SkeletonStore,
    case_id: str,
    name: str = "tube",
    *,
    affine: np.ndarray | None = None,
    affine_from: str | os.PathLike | None = None,
) -> tio.LabelMap:
    """A stored array of a case as a lazy ``tio.LabelMap`` in TorchIO's voxel order.

    Parameters
    ----------
    store : path, URL or SkeletonStore
    case_id : str
    name : str
        ``"tube"``, ``"thin"``, or ``"label"`` from a store built with images.
    affine : ndarray, optional
        Override the affine (4x4). By default the stored one (NIfTI) or, where
        the store has none, the one TorchIO gives a file without geometry
        (``diag(-1, -1, 1, 1)`` with the stored spacing) — or, with
        ``affine_from``, the one TorchIO reads from that file (the case's mask).
    affine_from : path, optional
        Image file of the case whose header gives the affine when the store
        has none.

    Raises
    ------
    StoreError
        The store cannot be opened or the case is not built. A missing array
        raises when the data are first read.

    Examples
    --------
    >>> tube = skeleton_label_map("examples/octa3d/skeletons.zarr", "octa_000")   # nothing read yet
    >>> tube.shape, tube.data.dtype
    ((1, 64, 64, 64), torch.uint8)
    """
    return _stored_image(tio.LabelMap, store, case_id, name, affine, affine_from)


def stored_scalar_image(
    store: str | os.PathLike | SkeletonStore, case_id: str, name: str = "image"
) -> tio.ScalarImage:
    """The stored ``image`` of a case (store built with ``--with-images``) as a lazy ``tio.ScalarImage``."""
    return _stored_image(tio.ScalarImage, store, case_id, name, None, None)


def _target_image(
    store: SkeletonStore, case_id: str, name: str, affine_from: str | os.PathLike | None
) -> tio.Image:
    """A stored target as the image type TorchIO resamples it with: linear ``ScalarImage``, nearest ``LabelMap``."""
    kind = tio.ScalarImage if INTERPOLATION.get(name) == "linear" else tio.LabelMap
    return _stored_image(kind, store, case_id, name, None, affine_from)


def _read_mask_file(path: str) -> tuple[torch.Tensor, np.ndarray]:
    """TorchIO reader for a mask: skelprep's reading (the labels the targets were built from), TorchIO's frame.

    TorchIO's own reader (SimpleITK) turns a palette PNG mask into three colour
    channels and keeps 0/255 binary masks as 0/255; skelprep reads palette
    indices and 0/1 (``label_remap``). The voxels are put in TorchIO's order by
    the same mapping as the targets, and the affine is TorchIO's reading of the
    file's header, which the image of the case gets too.
    """
    vol = read_mask(path)
    attrs = {
        "axes": vol.axes,
        "affine": None if vol.affine is None else vol.affine.tolist(),
        "spacing": list(vol.spacing),
        "source": os.fspath(path),
    }
    return _label_tensor(to_framework(vol.array, framework_geometry(attrs, "torchio"))), read_affine(path)


def subjects_dataset(
    store: str | os.PathLike | SkeletonStore,
    dataset: str | os.PathLike | None = None,
    *,
    names: Sequence[str] = ("tube",),
    transform: Callable | None = None,
    case_ids: Sequence[str] | None = None,
    masks: str | None = None,
    images: str | None = None,
) -> tio.SubjectsDataset:
    """A ``tio.SubjectsDataset`` of the store's cases: ``image``, ``label`` and the stored ``names``.

    Parameters
    ----------
    store : path, URL or SkeletonStore
        The built store.
    dataset : path, optional
        The dataset folder the store was built from (as given to ``skelprep
        build``). Images and labels are read from its files, except for cases
        whose store holds ``image`` and ``label`` arrays, which are read from
        the store. Without ``dataset`` every case must hold them.
    names : sequence of str
        Stored arrays to add under their own names: ``tube``, ``thin``, and the
        topology targets of a store built with ``--targets`` (``sdf``,
        ``radius``, ``components``). Each gets the image type of its
        interpolation (:data:`skelprep.torch.dataset.INTERPOLATION`): ``sdf`` a
        ``ScalarImage`` (linear), the others ``LabelMap`` s (nearest).
    transform : callable, optional
        TorchIO transform for every subject (``tio.Compose([...])``).
    case_ids : sequence of str, optional
        Only these cases (default: every case of the dataset, or of the store).
    masks, images : str, optional
        Glob patterns, as for :func:`skelprep.layout.discover`.

    Returns
    -------
    tio.SubjectsDataset
        Subjects with ``image`` (ScalarImage), ``label`` (LabelMap, read as skelprep
        reads masks, so its classes are the tube's), one
        image per name, and ``case_id``. Nothing is read until a subject
        is used.

    Raises
    ------
    StoreError
        The store cannot be opened; a case is not built; no dataset was given
        and a case has no stored image.
    """
    store = as_store(store)
    if dataset is None:
        ids = list(store.case_ids if case_ids is None else case_ids)
        files: dict[str, Any] = {}
    else:
        layout = discover(dataset, masks=masks, images=images)
        files = {c.case_id: c for c in layout.cases}
        ids = list(files if case_ids is None else case_ids)
    missing = [c for c in ids if c not in store]
    if missing:
        raise StoreError(
            f"{store.path}: {len(missing)} case(s) not built, e.g. '{missing[0]}' (run 'skelprep build')"
        )
    subjects = []
    for case_id in ids:
        case = files.get(case_id)
        if has_arrays(store, case_id, ("image", "label")):
            image = stored_scalar_image(store, case_id)
            label = skeleton_label_map(store, case_id, "label")
            affine_from = None
        elif case is None:
            where = "no such case in the dataset" if dataset is not None else "no dataset folder given"
            raise StoreError(
                f"{store.path}: case '{case_id}' has no stored image ({where}); pass the dataset folder "
                "or build with --with-images"
            )
        elif case.image_problem is not None:
            raise StoreError(str(case.image_problem))
        elif not case.images:
            raise StoreError(f"{case.mask}: case '{case_id}' has no image file")
        else:
            image = tio.ScalarImage(case.images[0] if len(case.images) == 1 else list(case.images))
            label = tio.LabelMap(case.mask, reader=_read_mask_file)
            affine_from = case.mask
        targets = {name: _target_image(store, case_id, name, affine_from) for name in names}
        subjects.append(tio.Subject(image=image, label=label, case_id=case_id, **targets))
    return tio.SubjectsDataset(subjects, transform=transform)
