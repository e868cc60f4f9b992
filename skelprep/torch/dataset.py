"""A map-style torch Dataset over a dataset folder and its skelprep store.

Images and masks are read with :mod:`skelprep.io` (whole files), the Skeleton
Recall targets from the Zarr store; with a ``patch_size`` only the patch's
region of the stored arrays is read. The store is opened lazily in each process,
so the Dataset pickles cheaply and works with ``DataLoader(num_workers=N)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from skelprep._fs import as_path
from skelprep.io import file_sha256, read_image, read_mask
from skelprep.layout import Case, discover
from skelprep.store import (
    CaseTargets,
    SkeletonStore,
    StoreError,
    case_state,
    default_store_path,
    open_store,
    read_regions,
)

__all__ = ["SkeletonDataset", "normalize_image"]

# Foreground centres are drawn from at most this many stored coordinates per class and case.
_MAX_COORDS = 10_000


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Z-score each channel of a channel-first image, as float32.

    Examples
    --------
    >>> import numpy as np
    >>> out = normalize_image(np.array([[[0, 2], [4, 6]]], np.uint8))
    >>> out.dtype, float(out.mean()), round(float(out.std()), 5)
    (dtype('float32'), 0.0, 1.0)
    """
    image = image.astype(np.float32)
    axes = tuple(range(1, image.ndim))
    mean = image.mean(axis=axes, keepdims=True)
    std = image.std(axis=axes, keepdims=True)
    return (image - mean) / np.maximum(std, 1e-8)


def _crop_pad(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array[..., start:start+size]`` over the trailing axes, zero outside the array."""
    lead = array.ndim - len(size)
    shape = array.shape[lead:]
    inside = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, shape, strict=True))
    return _pad_to(array[(slice(None),) * lead + inside], start, size, shape)


def _pad_to(
    region: np.ndarray, start: Sequence[int], size: Sequence[int], shape: Sequence[int]
) -> np.ndarray:
    """Zero-pad a region read at the clipped box of (``start``, ``size``) back to ``size``."""
    lead = region.ndim - len(size)
    pad = [(0, 0)] * lead + [
        (max(-s, 0), max(s + n - d, 0)) for s, n, d in zip(start, size, shape, strict=True)
    ]
    return np.pad(region, pad) if any(p != (0, 0) for p in pad) else region


class SkeletonDataset(Dataset):
    """Cases (or random patches of them) with image, label and Skeleton Recall tube.

    Item ``i`` is case ``i`` (``self.case_ids[i]``): the whole case, or one random
    patch of it when ``patch_size`` is given. Use a sampler with replacement
    (``RandomSampler(ds, replacement=True, num_samples=steps * batch)``) to draw
    many patches per epoch.

    Parameters
    ----------
    dataset : path
        Dataset folder, as given to ``skelprep build`` (nnU-Net raw, generic,
        or globs via ``masks``/``images``).
    store : path or URL, optional
        The built store; default ``<dataset>/skeletons.zarr``.
    patch_size : int or sequence of int, optional
        Patch shape (one int is used for every axis). Patches are zero-padded at
        the borders, so every item has exactly this shape and the default
        collate stacks them.
    foreground_prob : float
        Probability that a patch is centred on a tube voxel (of a tube class
        chosen uniformly among the case's classes, as nnU-Net oversamples
        foreground); otherwise the centre is uniform over the case.
    include_thin : bool
        Also return the thin skeleton as ``"thin"``.
    transform : callable, optional
        Applied to the item dict last (MONAI / TorchIO dict transforms, or any
        ``dict -> dict``).
    case_ids : sequence of str, optional
        Use only these cases (e.g. a train/validation split).
    check_fingerprints : bool
        Compare each mask's SHA-256 with the store's fingerprint on the case's
        first use (once per case and process) and refuse stale targets.
    masks, images : str, optional
        Glob patterns, as for :func:`skelprep.layout.discover`.

    Raises
    ------
    StoreError
        The store is missing or not a skelprep store, or a case is not built
        or incomplete (at construction); a case's mask changed since its
        targets were built (stale, on first use).
    ValueError
        A bad argument, a case without image, or image and mask shapes differ.

    Notes
    -----
    Items are dicts of channel-first tensors: ``image`` float32 ``(C, *spatial)``
    (z-scored per channel), ``label`` int64 ``(1, *spatial)``, ``tube`` int64
    ``(1, *spatial)``, optionally ``thin``, plus ``case_id`` (str), ``spacing``
    (float64 ``(ndim,)``) and ``offset`` (int64 ``(ndim,)``: the patch's first
    voxel in the case, negative where the patch overhangs the border).

    Randomness comes from a per-process numpy generator seeded from
    ``torch.initial_seed()``, which DataLoader sets differently in every worker
    (and ``torch.manual_seed`` sets in the main process).

    Examples
    --------
    >>> from torch.utils.data import DataLoader, RandomSampler
    >>> ds = SkeletonDataset("examples/road_cracks", patch_size=256)
    >>> loader = DataLoader(ds, batch_size=2, num_workers=2,
    ...                     sampler=RandomSampler(ds, replacement=True, num_samples=100))
    >>> batch = next(iter(loader))
    >>> batch["image"].shape, batch["tube"].shape
    (torch.Size([2, 3, 256, 256]), torch.Size([2, 1, 256, 256]))
    """

    def __init__(
        self,
        dataset: str | os.PathLike,
        store: str | os.PathLike | None = None,
        *,
        patch_size: int | Sequence[int] | None = None,
        foreground_prob: float = 0.33,
        include_thin: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        case_ids: Sequence[str] | None = None,
        check_fingerprints: bool = True,
        masks: str | None = None,
        images: str | None = None,
    ) -> None:
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"foreground_prob must lie in [0, 1], got {foreground_prob}")
        self.dataset = as_path(dataset)  # a URL stays a URL
        self.store_path = os.fspath(store) if store is not None else default_store_path(self.dataset)
        layout = discover(dataset, masks=masks, images=images)
        cases = {c.case_id: c for c in layout.cases}
        if case_ids is not None:
            unknown = [c for c in case_ids if c not in cases]
            if unknown:
                raise ValueError(f"{self.dataset}: unknown case id(s): {', '.join(unknown)}")
            cases = {c: cases[c] for c in case_ids}
        if not cases:
            raise ValueError(f"{self.dataset}: no usable cases")
        for case in cases.values():
            if not case.images:
                raise ValueError(f"{self.dataset}: case '{case.case_id}' has no image")
        self.cases: list[Case] = list(cases.values())
        self.foreground_prob = float(foreground_prob)
        self.include_thin = include_thin
        self.transform = transform
        self.check_fingerprints = check_fingerprints
        # Check the store once now, so that a missing build fails before training starts;
        # the handle itself is dropped and reopened lazily in each process.
        attrs = self._check_store(open_store(self.store_path))
        self._shapes = {cid: tuple(a["shape"]) for cid, a in attrs.items()}
        ndims = {len(s) for s in self._shapes.values()}
        if len(ndims) != 1:
            raise ValueError(f"{self.dataset}: cases mix 2D and 3D masks")
        self.ndim = ndims.pop()
        if patch_size is None:
            self.patch_size = None
        else:
            size = (
                (patch_size,) * self.ndim
                if isinstance(patch_size, int)
                else tuple(int(p) for p in patch_size)
            )
            if len(size) != self.ndim or min(size) < 1:
                raise ValueError(f"patch_size {patch_size} does not fit {self.ndim}D cases")
            self.patch_size = size
        self._reset_process_state()

    # -- per-process state ----------------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid: int | None = None
        self._store: SkeletonStore | None = None
        self._rng: np.random.Generator | None = None
        self._verified: set[str] = set()
        self._coords: dict[str, dict[int, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Open Zarr handles and generators stay behind: each process makes its own.
        state = self.__dict__.copy()
        for key in ("_pid", "_store", "_rng", "_coords"):
            state[key] = None if key != "_coords" else {}
        state["_verified"] = set()
        return state

    def _process(self) -> tuple[SkeletonStore, np.random.Generator]:
        """The store and generator of this process (fork-started workers must not share them)."""
        if self._pid != os.getpid():
            self._reset_process_state()
            self._pid = os.getpid()
            self._store = open_store(self.store_path)
            self._rng = np.random.default_rng(torch.initial_seed())
        assert self._store is not None and self._rng is not None
        return self._store, self._rng

    # -- checks ---------------------------------------------------------------------------------

    def _check_store(self, store: SkeletonStore) -> dict[str, dict[str, Any]]:
        attrs = {}
        for case in self.cases:
            meta = store.case_attrs(case.case_id)
            state = case_state(meta)
            if not state.ok:
                raise StoreError(
                    f"{self.store_path}: case '{case.case_id}' is {state.state} ({state.reason}; "
                    "run 'skelprep build')"
                )
            attrs[case.case_id] = meta
        return attrs

    def _targets(self, case: Case) -> CaseTargets:
        store, _ = self._process()
        targets = store[case.case_id]
        if self.check_fingerprints and case.case_id not in self._verified:
            if not case_state(targets.attrs, fingerprint=file_sha256(case.mask)).ok:
                raise StoreError(
                    f"{self.store_path}: case '{case.case_id}' is stale ({case.mask} changed since its targets "
                    "were built; rerun 'skelprep build')"
                )
            self._verified.add(case.case_id)
        return targets

    # -- sampling -------------------------------------------------------------------------------

    def _tube_coords(self, targets: CaseTargets, rng: np.random.Generator) -> dict[int, np.ndarray]:
        """A cached sample of tube coordinates per class (read once per case and process)."""
        cached = self._coords.get(targets.case_id)
        if cached is None:
            cached = {}
            counts = (targets.attrs.get("label_counts") or {}).get("tube")
            if counts is None or counts:  # the recorded counts say whether reading is needed at all
                tube = targets.tube[...]
                for value in np.unique(tube):
                    if value == 0:
                        continue
                    flat = np.flatnonzero(tube == value)
                    if flat.size > _MAX_COORDS:
                        flat = rng.choice(flat, _MAX_COORDS, replace=False)
                    cached[int(value)] = np.stack(np.unravel_index(flat, tube.shape), axis=1).astype(np.int32)
            self._coords[targets.case_id] = cached
        return cached

    def _patch_start(
        self, targets: CaseTargets, shape: tuple[int, ...], rng: np.random.Generator
    ) -> np.ndarray:
        assert self.patch_size is not None
        size = np.asarray(self.patch_size)
        centre = None
        if rng.random() < self.foreground_prob:
            coords = self._tube_coords(targets, rng)
            if coords:
                cls = list(coords)[rng.integers(len(coords))]
                centre = coords[cls][rng.integers(len(coords[cls]))]
        if centre is None:
            centre = np.array([rng.integers(0, d) for d in shape])
        return centre - size // 2

    # -- items ----------------------------------------------------------------------------------

    @property
    def case_ids(self) -> list[str]:
        """Case ids in item order."""
        return [c.case_id for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def _read_image(self, case: Case, shape: tuple[int, ...]) -> np.ndarray:
        channels = [read_image(path).array for path in case.images]
        image = np.concatenate(channels, axis=0) if len(channels) > 1 else channels[0]
        if image.shape[1:] != shape:
            raise ValueError(
                f"case '{case.case_id}': image shape {image.shape[1:]} differs from mask shape {shape}"
            )
        return normalize_image(image)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        _, rng = self._process()
        targets = self._targets(case)
        shape = targets.shape
        mask = read_mask(case.mask)
        if mask.array.shape != shape:
            raise ValueError(
                f"case '{case.case_id}': mask shape {mask.array.shape} differs from stored {shape}"
            )
        image = self._read_image(case, shape)
        label = mask.array
        names = ("tube", "thin") if self.include_thin else ("tube",)
        if self.patch_size is None:
            start = np.zeros(len(shape), dtype=np.int64)
            stored = {name: getattr(targets, name)[...] for name in names}
        else:
            start = self._patch_start(targets, shape, rng)
            size = self.patch_size
            inside = tuple(
                slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, shape, strict=True)
            )
            # Slicing the zarr array decodes only the chunks the patch touches.
            # All arrays of the patch in one concurrent read (skelprep.store.read_regions).
            regions = read_regions([getattr(targets, name) for name in names], inside)
            stored = {name: _pad_to(r, start, size, shape) for name, r in zip(names, regions, strict=True)}
            image = _crop_pad(image, start, size)
            label = _crop_pad(label, start, size)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "label": torch.from_numpy(label.astype(np.int64))[None],
        }
        for name, array in stored.items():
            item[name] = torch.from_numpy(array.astype(np.int64))[None]
        item["case_id"] = case.case_id
        item["spacing"] = torch.tensor(targets.spacing, dtype=torch.float64)
        item["offset"] = torch.as_tensor(np.asarray(start, dtype=np.int64))
        if self.transform is not None:
            item = self.transform(item)
        return item

    def __repr__(self) -> str:
        return (
            f"SkeletonDataset({os.fspath(self.dataset)!r}, store={self.store_path!r}, cases={len(self)}, "
            f"patch_size={self.patch_size})"
        )
