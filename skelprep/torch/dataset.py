"""A map-style torch Dataset over a skelprep store (and, for targets-only stores, its dataset folder).

A store built with ``skelprep build --with-images`` (format 2) holds each case's
image and label beside its targets, with intensity statistics and sampled
foreground locations: an item then reads exactly the chunks its patch touches
from ``image``, ``label`` and ``tube`` (and ``thin``), normalizes the patch with
the stored statistics and never opens a source file.
:meth:`SkeletonDataset.from_store` needs nothing but the store.

A targets-only store keeps the old path (with a one-time warning): images and
masks are read whole from the dataset folder with :mod:`skelprep.io` on every
item, which costs seconds per item on CT-size volumes.

The store is opened lazily in each process, so the Dataset pickles cheaply and
works with ``DataLoader(num_workers=N)``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from skelprep._fs import as_path
from skelprep.io import file_sha256, read_image, read_mask
from skelprep.layout import Case, discover
from skelprep.stats import class_locations, ct_normalize, zscore
from skelprep.store import (
    EXTRA_TARGETS,
    CaseTargets,
    SkeletonStore,
    StoreError,
    case_state,
    default_store_path,
    open_store,
)

__all__ = ["SkeletonDataset", "normalize_image", "NORMALIZATIONS", "INTERPOLATION"]

# Foreground centres are drawn from at most this many coordinates per class and case
# (the stored samples hold as many, see skelprep.stats.MAX_LOCATIONS).
_MAX_COORDS = 10_000
NORMALIZATIONS: tuple[str, ...] = ("zscore", "ct", "none")
Normalization = str | Callable[[np.ndarray, dict[str, Any]], np.ndarray]
_THREADED_VOXELS = 96**3  # patches of at least this many voxels read their arrays in parallel threads
_WARNED: set[str] = set()  # stores already warned about in this process: the warning is one-time
# How a spatial augmentation resamples each item key (docs/topology-targets.md): labels and components by
# nearest neighbour, distances linearly (the sparse radius by nearest: linear would mix it with its zeros);
# ``sdf`` and ``radius`` are also multiplied by the transform's scale.
INTERPOLATION: dict[str, str] = {
    "image": "linear",
    "label": "nearest",
    "tube": "nearest",
    "thin": "nearest",
    "sdf": "linear",
    "radius": "nearest",
    "components": "nearest",
}


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
    return _pad_to(array[(slice(None),) * lead + _inside(start, size, shape)], start, size, shape)


def _inside(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """The part of the box (``start``, ``size``) that lies inside an array of ``shape``."""
    return tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, shape, strict=True))


def _pad_to(
    region: np.ndarray,
    start: Sequence[int],
    size: Sequence[int],
    shape: Sequence[int],
    mode: str = "constant",
) -> np.ndarray:
    """Pad a region read at the clipped box of (``start``, ``size``) back to ``size``: with zeros, or as
    ``np.pad``'s ``mode`` says (``"edge"``: the sdf, whose zero would be a boundary)."""
    lead = region.ndim - len(size)
    pad = [(0, 0)] * lead + [
        (max(-s, 0), max(s + n - d, 0)) for s, n, d in zip(start, size, shape, strict=True)
    ]
    return np.pad(region, pad, mode=mode) if any(p != (0, 0) for p in pad) else region


def _by_class(locations: np.ndarray) -> dict[int, np.ndarray]:
    """Rows of a (N, 1 + ndim) location array grouped by class (column 0): class -> (n, ndim)."""
    return {int(c): locations[locations[:, 0] == c, 1:] for c in np.unique(locations[:, 0])}


def _channel_values(stats: Sequence[dict[str, Any]] | None, key: str, what: str) -> list[float]:
    values = [s.get(key) for s in stats or []]
    if not values or any(v is None for v in values):
        raise ValueError(f"normalization needs the {what} statistic '{key}', which the store does not hold")
    return values


class SkeletonDataset(Dataset):
    """Cases (or random patches of them) with image, label and Skeleton Recall tube.

    Item ``i`` is case ``i`` (``self.case_ids[i]``): the whole case, or one random
    patch of it when ``patch_size`` is given. Use a sampler with replacement
    (``RandomSampler(ds, replacement=True, num_samples=steps * batch)``) to draw
    many patches per epoch.

    Parameters
    ----------
    dataset : path or None
        Dataset folder, as given to ``skelprep build`` (nnU-Net raw, generic,
        or globs via ``masks``/``images``). None reads the store alone (see
        :meth:`from_store`).
    store : path or URL, optional
        The built store; default ``<dataset>/skeletons.zarr``.
    patch_size : int or sequence of int, optional
        Patch shape (one int is used for every axis). Patches are zero-padded at
        the borders, so every item has exactly this shape and the default
        collate stacks them.
    foreground_prob : float
        Probability that a patch is centred on a foreground voxel (of a class
        chosen uniformly among the case's classes, as nnU-Net oversamples
        foreground); otherwise the centre is uniform over the case.
    foreground : {"tube", "label"}
        Which voxels count as foreground for those centres: the tube (default)
        or the label. Stores built with images keep sampled coordinates of both.
    normalization : {"zscore", "ct", "none"} or callable
        ``"zscore"`` (default): per channel with the case's mean and std.
        ``"ct"``: nnU-Net's CT scheme: clip to the dataset's foreground 0.5 /
        99.5 percentiles, then z-score with the dataset's foreground mean and
        std (needs a store built with images). ``"none"``: the raw values as
        float32. A callable gets ``(image, stats)``, the raw patch
        ``(C, *patch)`` and ``{"case": [per channel], "dataset": [per channel]}``
        (either None when the store has none), and returns the normalized patch.
    include_thin : bool
        Also return the thin skeleton as ``"thin"``.
    targets : sequence of str
        Stored targets beside the tube to return with the patch, by name:
        ``"sdf"`` (float32 ``(K, *spatial)``, one channel per class the case
        records in ``attrs["targets"]["sdf"]``), ``"radius"`` (float32
        ``(1, *spatial)``), ``"components"`` (uint32 ``(1, *spatial)``); every case
        must hold them (``skelprep build --targets``). A patch over the border pads
        ``sdf`` with its edge values, the others with 0. Resample each under
        spatial augmentation as :data:`INTERPOLATION` says.
    transform : callable, optional
        Applied to the item dict last (MONAI / TorchIO dict transforms, or any
        ``dict -> dict``).
    case_ids : sequence of str, optional
        Use only these cases (e.g. a train/validation split).
    check_fingerprints : bool
        With a dataset folder: compare each mask's (and stored image's) SHA-256
        with the store's fingerprints on the case's first use (once per case
        and process) and refuse stale cases.
    masks, images : str, optional
        Glob patterns, as for :func:`skelprep.layout.discover`.

    Raises
    ------
    StoreError
        The store is missing or not a skelprep store, or a case is not built
        or incomplete (at construction); a case's source changed since it was
        built (stale, on first use).
    ValueError
        A bad argument, a case without image, or image and mask shapes differ.

    Warns
    -----
    UserWarning
        Once, when cases carry no images in the store: their items read the
        whole source files (rebuild with ``skelprep build --with-images``).

    Notes
    -----
    Items are dicts of channel-first tensors: ``image`` float32 ``(C, *spatial)``,
    ``label`` ``(1, *spatial)``, ``tube`` ``(1, *spatial)``, optionally ``thin``, in
    the store's integer dtype (uint8; uint16 for labels above 255), the ``targets``
    asked for (as stored: float32 distances, uint32 components), plus
    ``case_id`` (str), ``spacing`` (float64 ``(ndim,)``) and ``offset`` (int64
    ``(ndim,)``: the patch's first voxel in the case, negative where the patch
    overhangs the border). Padding is zero after normalization.
    Labels stay narrow, as nnU-Net's loader keeps its int16 seg: an int64 copy
    of a 128³ label and tube costs more than reading them, and skelprep's losses
    cast on the device (``target.long()``).

    Randomness comes from a per-process numpy generator seeded from
    ``torch.initial_seed()``, which DataLoader sets differently in every worker
    (and ``torch.manual_seed`` sets in the main process).

    Examples
    --------
    >>> from torch.utils.data import DataLoader, RandomSampler
    >>> ds = SkeletonDataset.from_store("examples/road_cracks/skeletons.zarr", patch_size=256)
    >>> loader = DataLoader(ds, batch_size=2, num_workers=2,
    ...                     sampler=RandomSampler(ds, replacement=True, num_samples=100))
    >>> batch = next(iter(loader))
    >>> batch["image"].shape, batch["tube"].shape
    (torch.Size([2, 3, 256, 256]), torch.Size([2, 1, 256, 256]))
    """

    def __init__(
        self,
        dataset: str | os.PathLike | None,
        store: str | os.PathLike | None = None,
        *,
        patch_size: int | Sequence[int] | None = None,
        foreground_prob: float = 0.33,
        foreground: str = "tube",
        normalization: Normalization = "zscore",
        include_thin: bool = False,
        targets: Sequence[str] = (),
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        case_ids: Sequence[str] | None = None,
        check_fingerprints: bool = True,
        masks: str | None = None,
        images: str | None = None,
    ) -> None:
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"foreground_prob must lie in [0, 1], got {foreground_prob}")
        if foreground not in ("tube", "label"):
            raise ValueError(f"foreground must be 'tube' or 'label', got {foreground!r}")
        if not callable(normalization) and normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS} or a callable, got {normalization!r}"
            )
        if dataset is None and store is None:
            raise ValueError("give a dataset folder, a store, or both")
        unknown = [n for n in targets if n not in EXTRA_TARGETS]
        if unknown:
            raise ValueError(
                f"targets: unknown stored target {unknown[0]!r}; the targets beside the tube are "
                f"{', '.join(EXTRA_TARGETS)} (include_thin for thin)"
            )
        self.dataset = as_path(dataset) if dataset is not None else None  # a URL stays a URL
        self.store_path = os.fspath(store) if store is not None else default_store_path(self.dataset)
        opened = open_store(self.store_path)
        sources = self._sources(opened, case_ids, masks, images)
        if not sources:
            raise ValueError(f"{self.dataset or self.store_path}: no usable cases")
        self._case_ids: list[str] = list(sources)
        self._sources_by_id: dict[str, Case | None] = sources
        self.foreground_prob = float(foreground_prob)
        self.foreground = foreground
        self.normalization = normalization
        self.include_thin = include_thin
        self.targets = tuple(targets)
        self.transform = transform
        self.check_fingerprints = check_fingerprints and self.dataset is not None
        # Check the store once now, so that a missing build fails before training starts;
        # the handle itself is dropped and reopened lazily in each process.
        attrs = self._check_store(opened)
        for case_id, meta in attrs.items():
            lacking = [n for n in self.targets if n not in (meta.get("targets") or {})]
            if lacking:
                raise StoreError(
                    f"{self.store_path}: case '{case_id}' holds no target '{lacking[0]}' (a build with "
                    f"targets {','.join(['tube', 'thin', *self.targets])} adds it)"
                )
        self.dataset_statistics = opened.attrs.get("intensity_statistics")
        self._streamed = {cid for cid, a in attrs.items() if "image" in (a.get("checksums") or {})}
        self._check_sources()
        if self.normalization == "ct":  # fail now, not in a worker at the first item
            for key in ("fg_p00_5", "fg_p99_5", "fg_mean", "fg_std"):
                _channel_values(self.dataset_statistics, key, "dataset")
        self._shapes = {cid: tuple(a["shape"]) for cid, a in attrs.items()}
        ndims = {len(s) for s in self._shapes.values()}
        if len(ndims) != 1:
            raise ValueError(f"{self.dataset or self.store_path}: cases mix 2D and 3D masks")
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

    @classmethod
    def from_store(cls, store: str | os.PathLike, **kwargs: Any) -> SkeletonDataset:
        """A dataset read from the store alone: no dataset folder, no source files.

        Every case must have been built with images (``skelprep build
        --with-images``). Takes the same keyword arguments as the constructor
        (``check_fingerprints``, ``masks`` and ``images`` do not apply).

        Examples
        --------
        >>> ds = SkeletonDataset.from_store("examples/octa3d/skeletons.zarr", patch_size=32)
        >>> len(ds), ds.streamed, tuple(ds[0]["image"].shape)
        (4, True, (1, 32, 32, 32))
        """
        for key in ("masks", "images"):
            if kwargs.get(key) is not None:
                raise ValueError(f"from_store reads no dataset folder: '{key}' does not apply")
        kwargs.pop("check_fingerprints", None)
        return cls(None, store, check_fingerprints=False, **kwargs)

    def _sources(
        self, store: SkeletonStore, case_ids: Sequence[str] | None, masks: str | None, images: str | None
    ) -> dict[str, Case | None]:
        """Case id -> its source files (None when reading the store alone), in item order."""
        if self.dataset is not None:
            found: dict[str, Case | None] = {
                c.case_id: c for c in discover(self.dataset, masks=masks, images=images).cases
            }
        else:
            found = dict.fromkeys(store.case_ids)
        if case_ids is None:
            return found
        unknown = [c for c in case_ids if c not in found]
        if unknown:
            raise ValueError(f"{self.dataset or self.store_path}: unknown case id(s): {', '.join(unknown)}")
        return {c: found[c] for c in case_ids}

    def _check_sources(self) -> None:
        """Cases without stored images need their source image files: say so once, loudly."""
        legacy = [cid for cid in self._case_ids if cid not in self._streamed]
        if not legacy:
            return
        if self.dataset is None:
            raise ValueError(
                f"{self.store_path}: case '{legacy[0]}' carries no images; from_store needs a store built with "
                "images"
            )
        for cid in legacy:
            case = self._sources_by_id[cid]
            if case is not None and case.image_problem is not None:
                raise ValueError(str(case.image_problem))
            if case is None or not case.images:
                raise ValueError(f"{self.dataset}: case '{cid}' has no image")
        if self.normalization == "ct":
            raise ValueError(
                f"{self.store_path}: normalization 'ct' needs the dataset statistics of a store built with "
                "images"
            )
        if self.store_path in _WARNED:
            return
        _WARNED.add(self.store_path)
        warnings.warn(
            f"{self.store_path}: {len(legacy)} case(s) carry no images in the store, so every item reads and "
            "decompresses the whole image and mask files (seconds per item on CT-size volumes); rebuild the store with "
            "images (skelprep build --with-images, or build(..., with_images=True)) to stream patches from it",
            UserWarning,
            stacklevel=3,
        )

    # -- per-process state ----------------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid: int | None = None
        self._store: SkeletonStore | None = None
        self._rng: np.random.Generator | None = None
        self._verified: set[str] = set()
        self._coords: dict[str, dict[int, np.ndarray]] = {}
        self._opened: dict[str, CaseTargets] = {}  # opening a case's group and arrays costs ~14 ms
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Open Zarr handles and generators stay behind: each process makes its own.
        state = self.__dict__.copy()
        for key in ("_pid", "_store", "_rng", "_pool"):
            state[key] = None
        state["_coords"], state["_opened"], state["_verified"] = {}, {}, set()
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
        for case_id in self._case_ids:
            meta = store.case_attrs(case_id)
            state = case_state(meta)
            if not state.ok:
                raise StoreError(
                    f"{self.store_path}: case '{case_id}' is {state.state} ({state.reason}; run 'skelprep build')"
                )
            attrs[case_id] = meta
        return attrs

    def _targets(self, case_id: str) -> CaseTargets:
        store, _ = self._process()
        targets = self._opened.get(case_id)
        if targets is None:
            try:
                targets = self._opened[case_id] = store[case_id]
            except KeyError:  # complete when the dataset was made: a build is rewriting (or pruning) it
                raise StoreError(
                    f"{self.store_path}: case '{case_id}' is being rebuilt; read it again when the build is done"
                ) from None
        case = self._sources_by_id[case_id]
        if self.check_fingerprints and case is not None and case_id not in self._verified:
            images = [file_sha256(p) for p in case.images] if targets.has_images else None
            state = case_state(targets.attrs, fingerprint=file_sha256(case.mask), image_fingerprints=images)
            if not state.ok:
                raise StoreError(
                    f"{self.store_path}: case '{case_id}' is stale ({state.reason}: {case.mask} or its images "
                    "changed since it was built; rerun 'skelprep build')"
                )
            self._verified.add(case_id)
        return targets

    # -- sampling -------------------------------------------------------------------------------

    def _class_coords(self, targets: CaseTargets, rng: np.random.Generator) -> dict[int, np.ndarray]:
        """A sample of foreground coordinates per class (read once per case and process)."""
        cached = self._coords.get(targets.case_id)
        if cached is None:
            if targets.has_images:
                cached = _by_class(targets.read(f"{self.foreground}_locations"))
            else:
                counts = (targets.attrs.get("label_counts") or {}).get("tube")
                if self.foreground == "tube" and counts == {}:  # the recorded counts say nothing is there
                    cached = {}
                else:
                    source = self._sources_by_id[targets.case_id]
                    array = targets.tube[...] if self.foreground == "tube" else read_mask(source.mask).array
                    cached = _by_class(class_locations(array, rng, _MAX_COORDS))
            self._coords[targets.case_id] = cached
        return cached

    def _patch_start(
        self, targets: CaseTargets, shape: tuple[int, ...], rng: np.random.Generator
    ) -> np.ndarray:
        assert self.patch_size is not None
        size = np.asarray(self.patch_size)
        centre = None
        if rng.random() < self.foreground_prob:
            coords = self._class_coords(targets, rng)
            if coords:
                cls = list(coords)[rng.integers(len(coords))]
                centre = coords[cls][rng.integers(len(coords[cls]))]
        if centre is None:
            centre = np.array([rng.integers(0, d) for d in shape])
        return centre - size // 2

    # -- normalization --------------------------------------------------------------------------

    def _normalize(self, image: np.ndarray, targets: CaseTargets) -> np.ndarray:
        """Normalize a raw image (or patch) with the stored statistics (whole-image ones when none)."""
        case_stats = (targets.attrs.get("images") or {}).get("channels")
        scheme = self.normalization
        if callable(scheme):
            return np.asarray(
                scheme(image, {"case": case_stats, "dataset": self.dataset_statistics}), np.float32
            )
        if scheme == "none":
            return image.astype(np.float32)
        if scheme == "ct":
            data = self.dataset_statistics
            return ct_normalize(
                image,
                _channel_values(data, "fg_p00_5", "dataset"),
                _channel_values(data, "fg_p99_5", "dataset"),
                _channel_values(data, "fg_mean", "dataset"),
                _channel_values(data, "fg_std", "dataset"),
            )
        if case_stats is None:  # a targets-only store: the whole image is at hand
            return normalize_image(image)
        return zscore(
            image, _channel_values(case_stats, "mean", "case"), _channel_values(case_stats, "std", "case")
        )

    # -- items ----------------------------------------------------------------------------------

    @property
    def streamed(self) -> bool:
        """Whether every item is read from the store alone (all cases carry their images there)."""
        return len(self._streamed) == len(self._case_ids)

    @property
    def case_ids(self) -> list[str]:
        """Case ids in item order."""
        return list(self._case_ids)

    @property
    def cases(self) -> list[Case]:
        """The cases' source files, in item order (empty when reading the store alone)."""
        return [c for c in (self._sources_by_id[cid] for cid in self._case_ids) if c is not None]

    def __len__(self) -> int:
        return len(self._case_ids)

    def _read_sources(self, case: Case, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(image, label) read whole from the source files (targets-only stores)."""
        mask = read_mask(case.mask).array
        if mask.shape != shape:
            raise ValueError(f"case '{case.case_id}': mask shape {mask.shape} differs from stored {shape}")
        channels = [read_image(path).array for path in case.images]
        image = np.concatenate(channels, axis=0) if len(channels) > 1 else channels[0]
        if image.shape[1:] != shape:
            raise ValueError(
                f"case '{case.case_id}': image shape {image.shape[1:]} differs from mask shape {shape}"
            )
        return image, mask

    def _region(
        self, targets: CaseTargets, start: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(normalized float32 image, label, stored targets) of the patch at ``start``, or the case."""
        names = ("tube", "thin") if self.include_thin else ("tube",)
        names += self.targets
        shape = targets.shape
        if start is None:
            box, size, start = (slice(None),) * len(shape), shape, (0,) * len(shape)
        else:
            size = self.patch_size
            box = _inside(start, size, shape)  # slicing a zarr array decodes only the chunks it touches

        def labels(array) -> np.ndarray:  # a CheckedArray's zarr array: the item is confirmed once
            return _pad_to(array.array[box], start, size, shape)

        def stored(name: str) -> np.ndarray:
            array = targets.array(name).array
            lead = (slice(None),) * (array.ndim - len(shape))
            return _pad_to(array[lead + box], start, size, shape, "edge" if name == "sdf" else "constant")

        if not targets.has_images:
            image, label = self._read_sources(self._sources_by_id[targets.case_id], shape)
            image = _crop_pad(self._normalize(image, targets), start, size)
            return (
                image,
                _crop_pad(label, start, size).astype(targets.tube.array.dtype),
                {n: stored(n) for n in names},
            )

        def image() -> np.ndarray:
            raw = targets.image.array[(slice(None), *box)]
            return _pad_to(self._normalize(raw, targets), start, size, shape)

        # Reading, decoding, normalizing and casting run side by side (zarr, zstd and numpy release
        # the GIL), which saves about a third of a 128^3 item of a CT-size case. Small patches are
        # read in turn: there the threads cost more than they overlap.
        if math.prod(size) < _THREADED_VOXELS:
            return image(), labels(targets.label), {name: stored(name) for name in names}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(names) + 2, thread_name_prefix="skelprep-read")
        image_job = self._pool.submit(image)
        label_job = self._pool.submit(labels, targets.label)
        jobs = {name: self._pool.submit(stored, name) for name in names}
        return image_job.result(), label_job.result(), {name: job.result() for name, job in jobs.items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id = self._case_ids[index]
        _, rng = self._process()
        targets = self._targets(case_id)
        try:
            start = None if self.patch_size is None else self._patch_start(targets, targets.shape, rng)
            # the item's reads, confirmed once: the case as opened, or StoreError "being rebuilt"
            image, label, stored = targets.checked(lambda: self._region(targets, start))
        except StoreError:  # the case changed since it was opened: the next item opens it again
            self._opened.pop(case_id, None)
            self._coords.pop(case_id, None)
            self._verified.discard(case_id)
            raise
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "label": torch.from_numpy(label)[None],
        }
        for name, array in stored.items():
            item[name] = (
                torch.from_numpy(array) if array.ndim > len(targets.shape) else torch.from_numpy(array)[None]
            )
        item["case_id"] = case_id
        item["spacing"] = torch.tensor(targets.spacing, dtype=torch.float64)
        offset = np.zeros(len(targets.shape), np.int64) if start is None else start
        item["offset"] = torch.as_tensor(np.asarray(offset, dtype=np.int64))
        if self.transform is not None:
            item = self.transform(item)
        return item

    def __repr__(self) -> str:
        source = os.fspath(self.dataset) if self.dataset is not None else None
        return (
            f"SkeletonDataset({source!r}, store={self.store_path!r}, cases={len(self)}, "
            f"patch_size={self.patch_size}, streamed={len(self._streamed)})"
        )
