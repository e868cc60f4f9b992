"""Build a store: plan what is stale, compute it on Dask, report per-case outcomes.

One task per case (:mod:`skelprep.runner` runs them in process or on Dask).
Each task reads the mask, computes the targets and writes its own case group,
so only small outcome records travel back to the client. The client holds the
store's lock (:mod:`skelprep.store.lock`) for the whole build, plans from
fingerprints with the store's one "is this case current" rule (so an unchanged
dataset costs one hash per mask, and per image with ``--with-images``, and no
cluster), writes through one :class:`~skelprep.store.write.StoreWriter`, and consolidates the metadata
at the end.

With ``with_images`` (store format 2) each case group also gets the image
(channel-first, source dtype), the label, per-channel intensity statistics and
per-class location samples (:mod:`skelprep.stats`); the root gets the
dataset-level statistics. A case whose targets are current but whose images
are missing or changed reuses its stored targets (no skeletonization). Once a
store carries images, every later build into it writes them too.

A full disk ends the build with one :class:`BuildError` line naming the store
and how many cases it holds; complete cases are kept.

The store owns only what it created: before the lock is taken or anything is
written, a build refuses a store path that is no folder of its own (``.``, ``/``),
a local URL typo (``s3:/bucket``), an existing folder that is not empty and not a
skelprep store, and one that is, holds or lies among the dataset's inputs
(:func:`_check_out`).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from skelprep import __version__
from skelprep._fs import AnyPath, RemotePath, is_url, set_storage_options, storage_options, url_typo
from skelprep._util import utc_now
from skelprep.io import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    Header,
    InputError,
    Volume,
    file_sha256,
    image_header,
    image_shape,
    local_file,
    read_bytes,
    read_image,
    read_mask,
    split_suffix,
)
from skelprep.layout import Case, DatasetLayout, discover
from skelprep.runner import (
    BuildError,
    CaseOutcome,
    check_memory_limit,
    failure_line,
    format_size,
    guarded,
    memory_budget,
    run_cases,
)
from skelprep.store import (
    ATTRS_KEY,
    EXTRA_TARGETS,
    TARGET_NAMES,
    SkeletonStore,
    StoreError,
    damaged_root,
    default_store_path,
    label_counts,
    open_root,
    read_checked,
    verify_case_data,
)
from skelprep.store.lock import PARTIAL_SUFFIX, HeldLock, lease_lost, remove_partial_files, store_lock
from skelprep.verify import check_case, known_sdf_classes, target_expectations

# numpy (60-80 ms), skelprep.stats and the core are imported where a case is computed, zarr where the
# store is opened: ``import skelprep.build`` (and the CLI's --help) stays light.
if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BuildParams",
    "CaseOutcome",
    "BuildReport",
    "CaseJob",
    "build",
    "build_case",
    "extra_target_names",
    "BuildError",
]

# Bumped when the computation changes its output: stored cases then count as stale.
RECIPE_VERSION = 1
# skelprep.skeleton.MODES; the core (scipy, numba: 0.37 s) is imported only where a case is computed.
MODES: tuple[str, ...] = ("joint", "per-class")
_NO_POOL = contextlib.nullcontext(None)
# CaseOutcome.detail of a case that failed because the disk is full (the build then stops with one line).
_DISK_FULL = "disk full"


@dataclass(frozen=True)
class BuildParams:
    """Parameters of the target computation (see :func:`skelprep.skeleton.skeleton_targets`)."""

    radius: int = 2
    mode: str = "joint"
    ignore_label: int | None = None
    slice_axis: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {self.radius}")
        if self.slice_axis is not None and self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.ignore_label is not None and self.ignore_label <= 0:
            raise ValueError(f"ignore_label must be a positive label, got {self.ignore_label}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters, as recorded in the store (with the recipe version)."""
        return dict(self._recorded)

    @functools.cached_property
    def _recorded(self) -> dict[str, Any]:
        return {**asdict(self), "recipe_version": RECIPE_VERSION}


@dataclass
class BuildReport:
    """Outcome of :func:`build`."""

    store: str
    outcomes: list[CaseOutcome] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file -> why discovery left it out
    seconds: float = 0.0
    plan_phases: dict[str, float] = field(default_factory=dict)  # client side: plan, run, finalize

    def _with(self, status: Literal["built", "up-to-date", "failed"]) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def built(self) -> list[CaseOutcome]:
        return self._with("built")

    @property
    def up_to_date(self) -> list[CaseOutcome]:
        return self._with("up-to-date")

    @property
    def failed(self) -> list[CaseOutcome]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "seconds": round(self.seconds, 3),
            "built": [o.case_id for o in self.built],
            "up_to_date": [o.case_id for o in self.up_to_date],
            "failed": {o.case_id: o.reason for o in self.failed},
            "pruned": self.pruned,
            "skipped": self.skipped,
            "fallback_components": sum(o.fallback_components for o in self.built),
            "phases": self.phases,
        }

    @property
    def phases(self) -> dict[str, float]:
        """Seconds per phase: ``plan`` (client), then summed over the built cases (``read``, ``core``, ...)."""
        total: dict[str, float] = dict(self.plan_phases)
        for outcome in self.built:
            for name, seconds in outcome.phases.items():
                total[name] = total.get(name, 0.0) + seconds
        return {k: round(v, 4) for k, v in total.items()}


def _versions() -> dict[str, str]:
    """Versions of what computes and stores the targets (from package metadata: no imports)."""
    from importlib.metadata import version

    return {
        "skelprep": __version__,
        **{name: version(name) for name in ("numpy", "scipy", "scikit-image", "zarr")},
    }


@dataclass(frozen=True)
class CaseJob:
    """One case to build, as sent to a worker.

    ``source`` is the mask's path as recorded in the store (relative to the
    dataset root, see :func:`_recorded_path`), computed on the client;
    ``images`` likewise for the image files. ``with_images`` writes the image arrays;
    ``reuse_targets`` takes the stored targets instead of recomputing them
    (their mask and parameters are current, only the images need writing).
    ``label_names``: the dataset's (value, name) pairs, for viewers; ``patch_size``:
    the patch the store's chunks are laid out for (None: the default). ``targets``:
    the targets of :data:`~skelprep.store.EXTRA_TARGETS` to store beside the tube
    (with ``reuse_targets``, those stored with the same parameters are reused);
    ``sdf_classes``: the classes of the ``sdf`` target as the plan knows them
    (:func:`~skelprep.verify.known_sdf_classes`; empty: ``1..`` the case's highest label).
    """

    case: Case
    source: str
    repair: bool = False
    with_images: bool = False
    images: tuple[str, ...] = ()
    reuse_targets: bool = False
    label_names: tuple[tuple[int, str], ...] = ()
    patch_size: tuple[int, ...] | None = None
    targets: tuple[str, ...] = ()
    sdf_classes: tuple[int, ...] = ()


def _case_attrs(
    job: CaseJob, fingerprint: str, params: BuildParams, vol: Volume, fallback: int
) -> dict[str, Any]:
    import numpy as np

    return {
        "source": job.source,
        "fingerprint": fingerprint,
        "params": params.as_dict(),
        "axes": vol.axes,
        "spacing": [float(s) for s in vol.spacing],
        "affine": None if vol.affine is None else np.asarray(vol.affine).tolist(),
        "label_remap": {str(k): v for k, v in vol.label_remap.items()},
        "mask_label_counts": label_counts(vol.array),
        "fallback_components": fallback,
        "built": utc_now(),
    }


# Peak bytes per voxel that skeleton_targets allocates (tracemalloc, 2D and 3D masks, outputs
# included): 14-22 on vessel-like, random and solid masks, 34-38 where a solid block needs the
# fallback skeleton (its erosions). The estimate takes the worst.
_SKELETON_BYTES_PER_VOXEL = 40
# Without a memory limit, a case that needs less is not checked: the check reads /proc/meminfo,
# a cost on every small case, and no machine that runs a build has less than this free.
_ALWAYS_FITS = 256 << 20


def _memory_need(file_bytes: int, mask: Header, images: list[Header]) -> int:
    """Bytes a case needs at its peak, about: the file's bytes, its decoded samples, the label map
    (uint8, or uint16 above 255), the skeleton's working arrays, and the images it stores."""
    voxels = math.prod(mask.shape)
    label_bytes = 1 if mask.dtype.itemsize == 1 else 2
    return (
        file_bytes
        + mask.nbytes
        + voxels * (label_bytes + _SKELETON_BYTES_PER_VOXEL)
        + sum(image.nbytes for image in images)
    )


def _memory_problem(job: CaseJob, file_bytes: int, mask: Header, memory_limit: str | None) -> str | None:
    """Why the case cannot be built in the memory it has (from headers: nothing is decoded yet), or None."""
    images = [image_header(path) for path in job.case.images] if job.with_images else []
    need = _memory_need(file_bytes, mask, images)
    if need < _ALWAYS_FITS and memory_limit is None:
        return None
    budget = memory_budget(memory_limit)
    if budget is None or need <= budget[0]:
        return None
    shape = "x".join(str(n) for n in mask.shape + ((mask.samples,) if mask.samples > 1 else ()))
    return f"needs about {format_size(need)} to build ({shape} {mask.dtype}), more than {budget[1]}"


def _check_images(case: Case, mask_shape: tuple[int, ...]) -> None:
    """Every image of the case has the mask's spatial shape (read from headers only)."""
    for image in case.images:
        shape = image_shape(image)
        if shape != mask_shape:
            raise InputError(
                image, f"image shape {shape} differs from the shape {mask_shape} of its mask {case.mask}"
            )


def _stored_case_intact(out: str, case_id: str) -> bool:
    """The stored case is complete and its arrays match their checksums (a damaged one is not)."""
    store = SkeletonStore(open_root(out, mode="r"), out)
    try:
        return case_id in store and not verify_case_data(store[case_id])
    except StoreError:  # an array or its metadata is missing or unreadable
        return False


def stored_targets(out: str, case_id: str):
    """The stored targets of a case, if they are complete and pass their checksums; else None."""
    store = SkeletonStore(open_root(out, mode="r"), out)
    try:
        case = store[case_id]
    except (KeyError, StoreError):  # absent, incomplete or damaged: computed anew
        return None
    (tube, tube_problem), (thin, thin_problem) = read_checked(case, "tube"), read_checked(case, "thin")
    if tube_problem or thin_problem:
        return None
    from skelprep.skeleton import SkeletonTargets

    return SkeletonTargets(
        thin=thin, tube=tube, fallback_components=int(case.attrs.get("fallback_components", 0))
    )


def _read_images(job: CaseJob, mask_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str], list[Path]]:
    """(channel-first image, file fingerprints, the file of each channel) of a case.

    Raises
    ------
    InputError
        No image files, a file missing or unreadable, of another shape than the
        mask, or of a rejected dtype: the message names the file.
    """
    import numpy as np

    case = job.case
    if not case.images:
        raise InputError(case.mask, "no image files for this case (a build with images needs them)")
    channels, fingerprints, files = [], [], []
    for path in case.images:
        with local_file(path) as local:  # a URL's image is downloaded once, hashed and read
            fingerprints.append(file_sha256(local))
            array = read_image(local).array
        if array.shape[1:] != mask_shape:
            raise InputError(
                path,
                f"image shape {array.shape[1:]} differs from the shape {mask_shape} of its mask {case.mask}",
            )
        channels.append(array)
        files.extend([path] * array.shape[0])
    image = channels[0] if len(channels) == 1 else np.concatenate(channels, axis=0)  # result dtype of all
    return image, fingerprints, files


def _image_part(
    job: CaseJob, mask: np.ndarray, fingerprint: str, params: BuildParams
) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
    """(image, its case attributes, the sampling arrays but the tube's) of a case built with images."""
    from skelprep.stats import (
        StatisticsError,
        channel_statistics,
        class_locations,
        foreground_sample,
        seed_from_fingerprint,
    )

    image, image_fingerprints, files = _read_images(job, mask.shape)
    foreground = mask > 0
    if params.ignore_label is not None:
        foreground &= mask != params.ignore_label
    try:
        channels = channel_statistics(image, foreground)
    except StatisticsError as exc:
        raise InputError(files[exc.channel], f"image {exc}") from None
    small = {
        "label_locations": class_locations(mask, seed_from_fingerprint(fingerprint, 1)),
        "foreground_intensities": foreground_sample(image, foreground, seed_from_fingerprint(fingerprint, 3)),
    }
    attrs = {
        "sources": list(job.images),
        "fingerprints": image_fingerprints,
        "dtype": image.dtype.name,
        "channels": channels,
    }
    return image, attrs, small


def build_case(
    job: CaseJob,
    *,
    out: str,
    params: BuildParams,
    options: dict[str, Any] | None = None,
    memory_limit: str | None = None,
) -> CaseOutcome:
    """Compute and write one case; never raises (a failure is an outcome).

    Runs in a Dask worker: it opens the store itself, so only the job and this
    outcome are sent over the wire. With ``job.repair``, a stored case whose
    data pass their checksums is left alone (outcome ``up-to-date``) and only a
    damaged one is rebuilt. ``options`` are the client's storage options
    (:mod:`skelprep._fs`), set in the worker before any URL is opened. A full
    disk fails the case with ``detail`` "disk full", after removing what it had
    written of the case. A case whose headers declare more than ``memory_limit``
    (per worker), or without one more than the memory available, fails before
    any pixel data are decoded.
    """
    if options is not None:
        set_storage_options(options)
    case = job.case

    def work() -> CaseOutcome:
        if (lost := _lease_lost(out, case.case_id)) is not None:
            return lost
        if job.repair and _stored_case_intact(out, case.case_id):
            return CaseOutcome(case.case_id, "up-to-date")
        start = time.perf_counter()
        with local_file(case.mask) as mask:  # a URL's mask is downloaded once, hashed and read
            raw, fingerprint = read_bytes(mask)  # one read for the fingerprint and the decode
            vol = read_mask(
                mask,
                raw=raw,
                before_decode=functools.partial(_memory_problem, job, len(raw), memory_limit=memory_limit),
            )
        del raw
        read_at = time.perf_counter()
        if not job.with_images:
            _check_images(case, vol.array.shape)
        with (
            ThreadPoolExecutor(1, thread_name_prefix="skelprep-image")
            if job.with_images
            else _NO_POOL as pool
        ):
            # The image is read and summarized while the skeleton is computed: zlib, numpy and the
            # numba kernels (nogil) release the GIL, so the two overlap on a second core. On a
            # 512x512x300 CT case this hid 1.6 s of the 2.2 s the image part takes. (No thread
            # without images: its start and join cost 0.2 ms, a tenth of a 512x512 case.)
            images = pool.submit(_image_part, job, vol.array, fingerprint, params) if pool else None
            targets = stored_targets(out, case.case_id) if job.reuse_targets else None
            if targets is None:
                from skelprep.skeleton import (
                    skeleton_targets,
                )  # scipy and numba: only where a case is computed

                targets = skeleton_targets(
                    vol.array,
                    radius=params.radius,
                    mode=params.mode,
                    ignore_label=params.ignore_label,
                    slice_axis=params.slice_axis,
                )
            core_at = time.perf_counter()
            attrs = _case_attrs(job, fingerprint, params, vol, targets.fallback_components)
            image, small = None, None
            if images is not None:
                from skelprep.stats import class_locations, seed_from_fingerprint

                image, attrs["images"], small = images.result()
                small["tube_locations"] = class_locations(targets.tube, seed_from_fingerprint(fingerprint, 2))
        phases = {"read": read_at - start, "core": core_at - read_at, "attrs": time.perf_counter() - core_at}
        names = dict(job.label_names)
        classes = {int(v): names.get(int(v), f"label {v}") for v in attrs["mask_label_counts"]}
        arrays, target_attrs = target_arrays(targets, list(classes), classes)
        attrs.update(target_attrs)
        if image is not None:
            arrays["image"] = (image, None)
        arrays["label"] = (vol.array, {"classes": classes})
        arrays.update((name, (data, None)) for name, data in (small or {}).items())
        if job.targets:
            extra, attrs["targets"] = _extra_targets(job, out, vol, targets.thin, params, list(classes))
            arrays.update(extra)
        return store_case(
            out,
            case.case_id,
            arrays,
            attrs,
            patch=job.patch_size,
            phases=phases,
            fallback_components=targets.fallback_components,
        )

    return guarded(case.case_id, case.mask, work)


def _lease_lost(out: str, case_id: str) -> CaseOutcome | None:
    """A failed outcome once this process's lease on the store is lost: no case write starts then."""
    why = lease_lost(out)
    return None if why is None else CaseOutcome(case_id, "failed", failure_line(out, why))


def store_case(
    out: str,
    case_id: str,
    arrays: dict[str, Any],
    attrs: dict[str, Any],
    *,
    patch: tuple[int, ...] | None = None,
    phases: dict[str, float] | None = None,
    fallback_components: int = 0,
) -> CaseOutcome:
    """Write one computed case into the store (:meth:`StoreWriter.write_case`) and say how it went.

    Every case source's task ends here, so each gets the build's safeguards: no
    write starts once the store's lease is lost, and a full disk removes what was
    written of the case and fails it with ``detail`` "disk full" (the build then
    stops with one line, keeping its complete cases).
    """
    from skelprep.store.write import StoreWriter

    if (lost := _lease_lost(out, case_id)) is not None:
        return lost
    phases = dict(phases or {})
    try:
        phases.update(StoreWriter.attach(out).write_case(case_id, arrays, attrs, patch=patch))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        _remove_partial_case(out, case_id)
        reason = failure_line(out, f"no space left on device while writing '{case_id}'")
        return CaseOutcome(case_id, "failed", reason, detail=_DISK_FULL)
    return CaseOutcome(case_id, "built", fallback_components=fallback_components, phases=phases)


def target_arrays(
    targets: Any, labels: Any = None, classes: dict[int, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``write_case`` arrays, case attributes ``dtype`` and ``label_counts``) of computed targets.

    Stored as uint8, or uint16 when a label exceeds 255; ``labels``: the labels the
    targets can hold (the mask's), if known: counting them is then cheaper;
    ``classes``: their names, for viewers.
    """
    import numpy as np

    data = {name: getattr(targets, name) for name in TARGET_NAMES}
    high = max((int(a.max()) if a.size else 0) for a in data.values())
    dtype = np.dtype(np.uint8 if high <= 255 else np.uint16)
    labels = None if labels is None else list(labels)
    arrays = {name: (np.asarray(a, dtype=dtype), {"classes": classes or {}}) for name, a in data.items()}
    counts = {name: label_counts(a, labels) for name, a in data.items()}
    return arrays, {"dtype": dtype.name, "label_counts": counts}


def _extra_targets(
    job: CaseJob, out: str, vol: Volume, thin: np.ndarray, params: BuildParams, labels: list[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``write_case`` arrays, the case's ``targets`` attribute) of the job's targets beside the tube.

    The sdf's classes are the job's ``sdf_classes`` (``--classes``, else the dataset's named labels), else
    ``1..`` the case's highest label (of ``labels``, the mask's) but the ignore label. With ``params.slice_axis`` each target is computed per slice, as the tube is, with the slices'
    in-plane spacing. With ``job.reuse_targets``, stored targets are reused (:func:`extra_targets`).
    """
    ignore, axis = params.ignore_label, params.slice_axis
    present = [v for v in labels if v != ignore]
    classes = list(job.sdf_classes) or list(range(1, max(present, default=1) + 1))
    spacing = vol.spacing
    if axis is not None:
        spacing = tuple(s for k, s in enumerate(spacing) if k != axis)
    return extra_targets(
        out,
        job.case.case_id,
        job.targets,
        vol.array,
        thin,
        spacing=spacing,
        classes=classes,
        ignore_label=ignore,
        reuse=job.reuse_targets,
        slice_axis=axis,
    )


def extra_targets(
    out: str,
    case_id: str,
    names: Sequence[str],
    label: np.ndarray,
    thin: np.ndarray,
    *,
    spacing: Sequence[float] | None,
    classes: Sequence[int],
    ignore_label: int | None,
    reuse: bool,
    slice_axis: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``write_case`` arrays, the case's ``targets`` attribute) of the targets ``names`` beside the tube.

    Computed by :func:`skelprep.targets.build_targets` from the case's ``label`` and ``thin``. With
    ``reuse``, a stored target of the case whose parameters
    (:func:`~skelprep.targets.target_params`) equal these and whose data pass their checksum is taken
    as stored; only the others are computed.
    """
    from skelprep.targets import build_targets, target_params

    ndim = label.ndim
    wanted = {
        n: target_params(n, ndim, spacing=spacing, classes=classes, slice_axis=slice_axis) for n in names
    }
    found: dict[str, tuple[Any, dict[str, Any]]] = {}
    if reuse:
        try:
            case = SkeletonStore(open_root(out, mode="r"), out)[case_id]
        except (KeyError, StoreError):  # absent, incomplete or damaged: computed anew
            case = None
        records = (case.attrs.get("targets") or {}) if case is not None else {}
        for name, want in wanted.items():
            if (records.get(name) or {}).get("params") == want:
                data, problem = read_checked(case, name)
                if not problem:
                    found[name] = (data, records[name])
    todo = [n for n in names if n not in found]
    found.update(
        build_targets(
            todo,
            label,
            thin,
            spacing=spacing,
            classes=classes,
            ignore_label=ignore_label,
            slice_axis=slice_axis,
        )
    )
    return {n: (found[n][0], None) for n in names}, {n: found[n][1] for n in names}


def checked_classes(classes: Sequence[int], ignore_label: int | None) -> tuple[int, ...]:
    """``classes`` of the sdf as a tuple of distinct positive ints; BuildError naming the bad one."""
    out: list[int] = []
    for value in classes:
        if isinstance(value, bool) or not hasattr(value, "__index__") or value < 1:  # ints, numpy's too
            raise BuildError(f"sdf class {value!r} is no positive label", param="classes")
        if value == ignore_label:
            raise BuildError(f"sdf class {value} is the ignore label", param="classes")
        if value in out:
            raise BuildError(f"sdf class {value} is named twice", param="classes")
        out.append(int(value))
    if not out:
        raise BuildError("no sdf classes named", param="classes")
    return tuple(out)


def extra_target_names(names: Sequence[str] | None) -> tuple[str, ...]:
    """The targets of ``names`` beside the tube and thin skeleton, in :data:`EXTRA_TARGETS` order;
    BuildError on a name that is no target."""
    known = (*TARGET_NAMES, *EXTRA_TARGETS)
    for name in names or ():
        if name not in known:
            raise BuildError(f"unknown target {name!r}; the targets are {', '.join(known)}", param="targets")
    return tuple(n for n in EXTRA_TARGETS if n in (names or ()))


def _remove_partial_case(out: str, case_id: str) -> None:
    """Delete a case whose writing the full disk interrupted (frees its space; it was not complete)."""
    from skelprep.store.write import StoreWriter

    try:
        StoreWriter.attach(out).delete_case(case_id)
    except Exception:  # noqa: S110 - the disk is full: the next build replaces the incomplete group anyway
        pass


def _source(case: Case, layout: DatasetLayout, absolute: bool = False) -> str:
    """The mask's path as recorded (:func:`_recorded_path`)."""
    return _recorded_path(case.mask, layout.root, absolute)


def _image_sources(case: Case, layout: DatasetLayout, absolute: bool = False) -> tuple[str, ...]:
    """The case's image paths as recorded (:func:`_recorded_path`)."""
    return tuple(_recorded_path(path, layout.root, absolute) for path in case.images)


def _recorded_path(path: AnyPath, root: AnyPath, absolute: bool) -> str:
    """A dataset file's path as the store records it: relative to the dataset root, ``/``-separated.

    A local file outside the root is recorded with ``..`` parts (``../other/a.png``):
    a store shared with its dataset then tells nothing of the builder's folders.
    A URL below a dataset URL is recorded relative to it, any other URL whole (a
    URL names no local file system). ``absolute`` records local files by their
    absolute path, URLs whole.
    """
    if isinstance(path, RemotePath):
        if not absolute and isinstance(root, RemotePath):
            with contextlib.suppress(ValueError):
                return path.relative_to(root).as_posix()
        return str(path)
    if absolute:
        return Path(os.path.abspath(path)).as_posix()
    return Path(os.path.relpath(path, root)).as_posix()


def _dataset_statistics(store: SkeletonStore) -> list[dict[str, Any]] | None:
    """Intensity statistics over every complete case that carries images (None if none does or they differ)."""
    from skelprep.stats import dataset_statistics

    cases, samples = [], []
    for case_id in store.case_ids:
        meta = store.case_attrs(case_id) or {}
        channels = (meta.get("images") or {}).get("channels")
        if channels:
            cases.append(channels)
            samples.append(store[case_id].read("foreground_intensities"))
    try:
        return dataset_statistics(cases, samples) or None
    except ValueError:  # cases with different channel counts share no statistics
        return None


def _disk_full(out: str, report: BuildReport, store: SkeletonStore) -> BuildError:
    written = len(report.built)
    return BuildError(
        f"{out}: no space left on device; this build wrote {written} case(s) before the disk filled, and the "
        f"store keeps its {len(store.case_ids)} complete case(s); free space (or build into a store on a "
        "larger disk) and rerun the build to finish the rest",
        param="out",
    )


def _dataset_attrs(root: AnyPath, out: str, absolute: bool) -> dict[str, Any]:
    """Where the store records its dataset: ``dataset`` and ``dataset_name`` (see docs/store-format.md).

    ``dataset`` is the dataset URL, or a local dataset's path relative to a local
    store (``..`` for the default store), or with ``absolute`` its absolute path;
    null for a local dataset in a store at a URL (a local path there would only
    tell the builder's folders). ``dataset_name`` is the dataset folder's name.
    """
    if isinstance(root, RemotePath):
        return {"dataset": str(root), "dataset_name": root.name}
    folder = os.path.abspath(root)
    if absolute:
        where = folder
    elif is_url(out):
        where = None
    else:
        where = Path(os.path.relpath(folder, os.path.abspath(out))).as_posix()
    return {"dataset": where, "dataset_name": os.path.basename(folder)}


def _root_attrs(
    layout: DatasetLayout,
    params: BuildParams,
    with_images: bool,
    out: str,
    absolute: bool = False,
    patch_size: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """What a build records in the store's root attributes (and ``versions``, when it writes)."""
    return {
        "with_images": with_images,
        "patch_size": None if patch_size is None else list(patch_size),
        "params": params.as_dict(),
        **_dataset_attrs(layout.root, out, absolute),
        "layout": layout.kind,
        "label_names": {str(k): v for k, v in layout.label_names.items()},
    }


def _open_for_build(out: str, attrs: dict[str, Any], held: Any):
    from skelprep.store.write import StoreWriter

    try:
        return StoreWriter.open(out, attrs, held)
    except StoreError as exc:
        raise BuildError(str(exc)) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise BuildError(
                f"{out}: no space left on device before any case was written; free space (or build into a "
                "store on a larger disk) and rerun the build",
                param="out",
            ) from None
        raise


def _existing_store(out: str) -> SkeletonStore | None:
    """The store as it is, opened for reading; None if there is none (or not one of ours).

    One whose root document is damaged is read from its case groups (:meth:`SkeletonStore.of_cases`).
    """
    if damaged_root(out) is not None:
        return SkeletonStore.of_cases(out)
    try:
        return SkeletonStore(open_root(out, mode="r"), out)
    except StoreError:  # absent or foreign: StoreWriter.open creates it or says why not
        return None


# What a first build killed before its root document leaves in a new store's folder.
_ROOT_PARTIAL = re.compile(r"zarr\.json" + PARTIAL_SUFFIX)


def _resolved(path: str | os.PathLike | RemotePath) -> str:
    """A path as compared for overlap: a local one resolved (symlinks, ``..``), a URL as spelled."""
    text = str(path)
    if is_url(text) and not text.startswith("file://"):
        return text.rstrip("/")
    return os.path.realpath(text.removeprefix("file://"))


def _within(path: str, folder: str) -> bool:
    """Whether resolved ``path`` is ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _check_out(out: str, layout: DatasetLayout, masks: str | None, images: str | None) -> None:
    """Refuse a store path where a build would write or delete what is not its own store's.

    Raises
    ------
    BuildError
        ``out`` names no folder of its own (``.``, ``/``, empty), is a local path
        that starts like a URL with one slash, is an existing folder that is
        neither empty nor a skelprep store, or is, holds or lies among the
        dataset's inputs (the dataset folder, its label or image folder; below a
        glob's folder, a name the glob would match).
    """
    typo = url_typo(out)
    if typo is not None:
        raise BuildError(
            f"{out}: looks like a URL with one slash; write {typo} (or ./{out} for a local folder)"
        )
    local = not is_url(out) or out.startswith("file://")
    path = out.removeprefix("file://")
    if local and os.path.basename(os.path.normpath(path)) in ("", ".", ".."):
        raise BuildError(
            f"'{out}': a store is a folder of its own; name one (e.g. {os.path.join(path, 'skeletons.zarr')})"
        )
    here, root = _resolved(out), _resolved(layout.root)
    inputs = [(layout.root, None, ()), (layout.mask_dir, masks, MASK_SUFFIXES)]
    inputs.append((layout.image_dir, images, IMAGE_SUFFIXES))
    for spelled, pattern, suffixes in inputs:
        if spelled is None:
            continue
        folder = _resolved(spelled)
        if _within(folder, here):  # the store's deletions would reach the inputs
            raise BuildError(
                f"{out}: holds the dataset's inputs ({spelled}); choose a store path outside them"
            )
        # Below a label or image folder the next build would find the store as an input. A glob's
        # folder may be the dataset's own, where the default store lives: there only a name the
        # glob matches is refused (``--masks '*.png' --out ds/s.png``).
        if _within(here, folder) and (folder != root or _matched_by(here, pattern, suffixes)):
            raise BuildError(
                f"{out}: lies among the dataset's input files ({spelled}); choose a store path outside them"
            )
    if local:
        _check_own_folder(out, here)


def _matched_by(path: str, pattern: str | None, suffixes: tuple[str, ...]) -> bool:
    """Whether a glob's last part (and the suffix filter) takes the name of ``path``: at any depth, to be safe."""
    name = os.path.basename(path)
    if pattern is None or not split_suffix(name, suffixes)[1]:
        return False
    return fnmatch.fnmatchcase(name, os.path.basename(pattern))


def _check_own_folder(out: str, folder: str) -> None:
    """Refuse an existing local folder that is neither empty nor a skelprep store (its files are not ours).

    A root ``zarr.json`` that is no readable document, or skelprep attributes of the
    wrong kind, are left to the store layer, which says why it cannot be opened, and
    so is a folder of skelprep cases whose root ``zarr.json`` is gone: that is a
    torn store, not someone's folder.
    """
    try:
        entries = [e for e in os.listdir(folder) if not _ROOT_PARTIAL.fullmatch(e)]
    except OSError:  # absent (a new store), a file, unreadable: the store layer says what it is
        return
    if entries in ([], ["zarr.json"]):  # empty, or an empty group: the store layer may adopt it
        return
    if "zarr.json" in entries:
        try:
            if ATTRS_KEY in open_root(folder).attrs:
                return
        except StoreError:  # no readable group: the store layer says what is wrong
            return
    elif damaged_root(folder) is not None:  # skelprep cases under a lost root: rebuilt from them
        return
    raise BuildError(
        f"{out}: exists and is not a skelprep store; choose another store path (a new or empty folder)"
    )


def _recorded(store: SkeletonStore, attrs: dict[str, Any]) -> bool:
    """The store's root attributes already say what this build would record, its complete cases included."""
    return (
        all(store.attrs.get(k) == v for k, v in attrs.items()) and store.attrs.get("cases") == store.case_ids
    )


@dataclass(frozen=True)
class BuildPlan:
    """What one build writes, whatever its source of cases (a dataset's files, nnU-Net's preprocessed segs).

    ``attrs``: the root attributes the build records; ``jobs``: one per case to
    (re)build, each run by ``task`` (picklable, returns a :class:`CaseOutcome`,
    never raises; it ends in :func:`store_case`); ``job_id`` and ``job_source``: a
    job's case id and input file; ``keep``: the case ids the store keeps, every
    other stored case is deleted (None: none is); ``shard``: ``(I, N)`` where the
    jobs are shard I of N, written beside the other shards' builders
    (:mod:`skelprep.shard`; never with ``keep``).
    """

    attrs: dict[str, Any]
    jobs: list[Any]
    task: Callable[[Any], CaseOutcome]
    job_id: Callable[[Any], str]
    job_source: Callable[[Any], str]
    keep: frozenset[str] | None = None
    shard: tuple[int, int] | None = None


@contextlib.contextmanager
def locked_store(
    out: str, shard: tuple[int, int] | None = None
) -> Iterator[tuple[HeldLock, SkeletonStore | None]]:
    """Hold the store's lock for one build; yield it and the store as it is then (None if there is none).

    What a killed build left in the store is removed first. A builder of ``shard``
    (I, N) holds the store's lock shared and its shard's exclusively, and walks
    nothing: the other shards are writing (:func:`skelprep.shard.shard_lock`).

    Raises
    ------
    BuildError
        Another build holds the store (or this shard), or its lock cannot be written.
    """
    with contextlib.ExitStack() as stack:
        if shard is not None:
            from skelprep.shard import shard_lock

            held = stack.enter_context(shard_lock(out, shard))
        else:
            try:
                held = stack.enter_context(store_lock(out))
            except StoreError as exc:
                raise BuildError(str(exc)) from exc
            remove_partial_files(out, held)  # walks only if the last build may have been killed
        yield held, _existing_store(out)


def _unwanted(store: SkeletonStore | None, keep: frozenset[str] | None) -> list[str]:
    """The stored (or incompletely stored) cases a plan deletes."""
    if store is None or keep is None:
        return []
    return sorted((set(store.case_ids) | set(store.incomplete_case_ids)) - keep)


def run_plan(
    plan: BuildPlan,
    report: BuildReport,
    out: str,
    held: HeldLock,
    store: SkeletonStore | None,
    **run_options: Any,
) -> None:
    """Run a plan under the held lock: record the build in the root, run the jobs, prune, finalize.

    A plan with nothing to do on a store that records it already writes nothing.
    ``store``: the store as it was planned from (None if there was none);
    ``run_options``: :func:`~skelprep.runner.run_cases`' ``workers``, ``scheduler``,
    ``memory_limit`` and ``progress``.

    Raises
    ------
    BuildError
        The store cannot be opened for writing, its lease was lost, or the disk
        filled (complete cases are kept).
    """
    planned = time.perf_counter()
    if plan.shard is not None:
        _shard_write_phase(plan, report, out, held, planned, **run_options)
    elif plan.jobs or _unwanted(store, plan.keep) or store is None or not _recorded(store, plan.attrs):
        _write_phase(plan, report, out, held, planned, **run_options)
    else:  # the store, its case list and consolidated metadata stay as they are
        report.plan_phases["run"] = report.plan_phases["finalize"] = 0.0
    # A failed case may be a worker killed mid-write (memory limit): its .partial files stay
    # until the next build walks the store. A built one's writes are done (an earlier attempt's
    # leftovers went with its folder: write_case deletes the case first).
    if not {plan.job_id(j) for j in plan.jobs} & {o.case_id for o in report.failed}:
        held.ended_cleanly()


def _write_phase(
    plan: BuildPlan, report: BuildReport, out: str, held: HeldLock, planned: float, **run_options: Any
) -> None:
    writer = _open_for_build(out, {**plan.attrs, "versions": _versions()}, held)
    _run_jobs(plan, report, out, writer, **run_options)
    for case_id in _unwanted(SkeletonStore(writer.root, out), plan.keep):
        writer.delete_case(case_id)
        report.pruned.append(case_id)
    ran = time.perf_counter()
    report.plan_phases["run"] = ran - planned
    _check_lease(out, held.lease)  # once more after pruning, before the root is written
    _finalize(plan, report, out, writer)
    report.plan_phases["finalize"] = time.perf_counter() - ran


def _run_jobs(plan: BuildPlan, report: BuildReport, out: str, writer: Any, **run_options: Any) -> None:
    """Run the plan's jobs (the runner picks how); a lost lease or a full disk then ends the build in one line."""
    if plan.jobs:
        report.outcomes.extend(
            run_cases(
                plan.task,
                plan.jobs,
                case_id=plan.job_id,
                source=plan.job_source,
                stop=writer.lease_lost,  # Dask workers do not see the lease: the client does
                **run_options,
            )
        )
    _check_lease(out, writer.held.lease)
    if any(o.detail == _DISK_FULL for o in report.outcomes):
        raise _disk_full(out, report, SkeletonStore(writer.root, out))


def _finalize(plan: BuildPlan, report: BuildReport, out: str, writer: Any) -> None:
    """The dataset statistics (stores with images), the case list and consolidated metadata."""
    try:
        extra = {}
        if plan.attrs.get("with_images"):
            extra["intensity_statistics"] = _dataset_statistics(SkeletonStore(writer.root, out))
        writer.finalize(**extra)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(out, report, SkeletonStore(writer.root, out)) from None
        raise


def _shard_write_phase(
    plan: BuildPlan, report: BuildReport, out: str, held: HeldLock, planned: float, **run_options: Any
) -> None:
    """A shard builder's writes (see :mod:`skelprep.shard`): record its start, run its jobs, record its end.

    Each root update holds the root-update lock and reads the root as it is then; the
    builder that completes the last shard consolidates the store's metadata.
    """
    from skelprep.shard import root_update, shard_record, shards_running

    shard, attrs = plan.shard, plan.attrs
    assert shard is not None
    with root_update(out):
        meta = _root_meta_now(out)
        others = shards_running(out, besides=shard)
        counts = sorted({n for _, n in others} - {shard[1]})
        if counts:
            raise BuildError(
                f"{out}: builders of {counts[0]} shards are running on this store; a shard of {shard[1]} would "
                f"overlap their cases (use shards of {counts[0]}, or wait for them to finish)",
                param="shard",
            )
        if others and meta is not None and any(meta.get(k) != v for k, v in attrs.items()):
            changed = ", ".join(sorted(k for k, v in attrs.items() if meta.get(k) != v))
            raise BuildError(
                f"{out}: other shards are being built with other {changed}; build every shard with the same "
                "options (or wait for them to finish)"
            )
        record = shard_record(meta, shard, done=False)
        writer = _open_for_build(out, {**attrs, "versions": _versions(), "shards": record}, held)
    _run_jobs(plan, report, out, writer, **run_options)
    ran = time.perf_counter()
    report.plan_phases["run"] = ran - planned
    with root_update(out):
        record = shard_record(_root_meta_now(out), shard, done=report.ok)
        writer = _open_for_build(out, {"shards": record}, held)  # the root as the other shards left it
        if len(record["done"]) == record["count"]:  # the last shard: the store is complete
            _finalize(plan, report, out, writer)
        else:
            cases = SkeletonStore(writer.root, out).case_ids
            writer.root.attrs.update({ATTRS_KEY: {**writer.meta, "cases": cases, "updated": utc_now()}})
    report.plan_phases["finalize"] = time.perf_counter() - ran


def _root_meta_now(out: str) -> dict[str, Any] | None:
    """The skelprep attributes of a store's root as stored now (None: no store yet, or not one of ours)."""
    try:
        meta = open_root(out, mode="r").attrs.get(ATTRS_KEY)
    except StoreError:
        return None
    return dict(meta) if isinstance(meta, dict) else None


def _check_lease(out: str, lease: Any) -> None:
    """Go on only while the S3 lease is provably ours; another build may be writing once it is not."""
    if lease is not None and not lease.confirm():
        raise BuildError(
            f"{out}: {lease.lost}; this build stopped writing and leaves the store unfinalized: rerun "
            "'skelprep build' (once any other build on it is done)"
        )


def build(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    params: BuildParams | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    force: bool = False,
    prune: bool = False,
    masks: str | None = None,
    images: str | None = None,
    memory_limit: str | None = None,
    progress: bool = False,
    repair: bool = False,
    with_images: bool = False,
    absolute_paths: bool = False,
    patch_size: tuple[int, ...] | None = None,
    shard: tuple[int, int] | None = None,
    targets: Sequence[str] | None = None,
    classes: Sequence[int] | None = None,
) -> BuildReport:
    """Build (or bring up to date) the store of a dataset.

    Parameters
    ----------
    dataset : path or URL
        Dataset folder (nnU-Net raw, generic ``labels/``+``images/``, or any folder with ``masks``),
        local or a URL (``s3://bucket/raw/Dataset101_X``; see :mod:`skelprep._fs` for credentials).
    out : path or URL, optional
        The store; ``<dataset>/skeletons.zarr`` by default.
    params : BuildParams, optional
        Target parameters. An ``ignore_label`` of None takes the dataset's
        (nnU-Net's ``ignore`` label), if any.
    workers : int, optional
        Local worker processes (default: the number of CPUs).
    scheduler : str, optional
        Address of a running Dask scheduler; its workers must see ``dataset`` and ``out``.
    force : bool
        Rebuild every case, even up-to-date ones.
    prune : bool
        Delete stored cases whose mask is no longer in the dataset.
    masks, images : str, optional
        Glob patterns (see :func:`skelprep.layout.discover`).
    memory_limit : str, optional
        Per-worker memory limit (e.g. ``"4GB"``); a case that exceeds it fails alone.
    progress : bool
        Show a progress bar on stderr.
    repair : bool
        Also read every up-to-date case and rebuild those whose data fail their
        checksums (altered or missing chunks), as ``verify`` reports them.
    with_images : bool
        Also store each case's image, label and sampling statistics (format 2);
        a store that already carries images keeps doing so without it.
    absolute_paths : bool
        Record the dataset and the paths of the files of the cases this build
        writes as absolute paths instead of relative to the dataset (and the
        dataset relative to the store). Not a target parameter: cases that are
        up to date keep the paths they were recorded with (``force`` rewrites
        them all); the root's ``dataset`` follows every build.
    patch_size : tuple of int, optional
        The patch a training reads (voxels per axis): chunks of the cases this build
        writes are laid out for it (default 512² in 2D, 128³ in 3D). Recorded in the
        root; later builds without it keep the store's.
    shard : (int, int), optional
        ``(I, N)``: build only the cases of shard I of N (:mod:`skelprep.shard`),
        beside the builders of the other shards; not with ``prune``, and only
        into a store on a file system.
    targets : sequence of str, optional
        The targets to store: ``tube`` and ``thin`` (always), and any of ``sdf``,
        ``radius``, ``components`` (:mod:`skelprep.targets`). Recorded in the root;
        later builds keep the store's. A case that lacks one gets it added: its
        other targets are reused, only the missing one is computed.
    classes : sequence of int, optional
        The classes of the ``sdf`` target, one channel each, in every case (default:
        the labels of the dataset's ``dataset.json``, else ``1..`` each case's highest
        label). Recorded in the root; later builds keep the store's. A case whose sdf
        was built for other classes gets it recomputed, its other targets reused.

    Returns
    -------
    BuildReport

    Raises
    ------
    LayoutError
        The dataset as a whole cannot be used (nothing is built).
    BuildError
        The store is locked by another build or unusable, or an option is invalid.
    """
    start = time.perf_counter()
    check_memory_limit(memory_limit, scheduler)
    layout = discover(dataset, masks=masks, images=images)
    params = params or BuildParams()
    if params.ignore_label is None and layout.ignore_label is not None:
        params = BuildParams(params.radius, params.mode, layout.ignore_label, params.slice_axis)
    param_dict = params.as_dict()
    extras = extra_target_names(targets)
    sdf_classes = None if classes is None else checked_classes(classes, params.ignore_label)
    out = os.fspath(out) if out is not None else default_store_path(dataset)
    if patch_size is not None and (not patch_size or min(patch_size) < 1):
        raise BuildError(
            f"patch size {patch_size}: every edge must be a positive number of voxels", param="patch_size"
        )
    _check_out(out, layout, masks, images)
    cases, problems = layout.cases, layout.problems
    if shard is not None:
        from skelprep.shard import shard_index

        if prune:
            raise BuildError(
                "pruning deletes stored cases of every shard; prune in a build without shards", param="prune"
            )
        cases = [c for c in cases if shard_index(c.case_id, shard[1]) == shard[0]]
        problems = [p for p in problems if shard_index(p.case_id, shard[1]) == shard[0]]
    report = BuildReport(store=out, skipped={str(s.path): s.reason for s in layout.skipped})
    report.outcomes.extend(CaseOutcome(p.case_id, "failed", str(p)) for p in problems)
    options = dict(workers=workers, scheduler=scheduler, memory_limit=memory_limit, progress=progress)
    with locked_store(out, shard) as (held, store):
        with_images = with_images or (store is not None and bool(store.attrs.get("with_images")))
        if with_images and cases and not any(c.images or c.image_problem for c in cases):
            raise BuildError(
                f"{layout.root}: a build with images, but no image files found (imagesTr/, images/ or an "
                "images glob)",
                param="images",
            )
        jobs = []
        label_names = tuple((int(k), str(v)) for k, v in layout.label_names.items() if int(k) != 0)
        if patch_size is None and store is not None and store.attrs.get("patch_size"):
            patch_size = store.attrs["patch_size"]  # sticky: later builds chunk for the same patches
        patch_size = None if patch_size is None else tuple(int(n) for n in patch_size)
        if store is not None:  # sticky: a target once stored is kept by later builds, and its classes
            extras = extra_target_names([*extras, *(store.attrs.get("targets") or ())])
            if sdf_classes is None and store.attrs.get("sdf_classes"):
                sdf_classes = tuple(int(c) for c in store.attrs["sdf_classes"])
        known = known_sdf_classes(sdf_classes, (v for v, _ in label_names), params.ignore_label)
        expected = target_expectations(extras, slice_axis=params.slice_axis, classes=known)
        for case in cases:
            if with_images and case.image_problem is not None:  # a stored case stays as it is
                report.outcomes.append(CaseOutcome(case.case_id, "failed", str(case.image_problem)))
                continue
            check = (
                check_case(store, case, param_dict, with_images=with_images, targets=expected)
                if store is not None
                else None
            )
            current = check is not None and check.state == "ok" and not force
            if current and not repair:
                report.outcomes.append(CaseOutcome(case.case_id, "up-to-date"))
            elif check is not None and check.state == "failed-input":
                report.outcomes.append(CaseOutcome(case.case_id, "failed", check.reason))
            else:
                job = CaseJob(
                    case,
                    _source(case, layout, absolute_paths),
                    repair=current,  # with --repair: rebuilt only if damaged
                    with_images=with_images,
                    images=_image_sources(case, layout, absolute_paths),
                    reuse_targets=check is not None
                    and (check.images_only or check.targets_only)
                    and not force,
                    label_names=label_names,
                    patch_size=patch_size,
                    targets=extras,
                    sdf_classes=tuple(known),
                )
                jobs.append(job)
        report.plan_phases["plan"] = time.perf_counter() - start
        wanted = frozenset(c.case_id for c in layout.cases) | {p.case_id for p in layout.problems}
        task = functools.partial(
            build_case, out=out, params=params, options=storage_options(), memory_limit=memory_limit
        )
        attrs = _root_attrs(layout, params, with_images, out, absolute_paths, patch_size)
        if shard is None and store is not None and store.attrs.get("shards") is not None:
            attrs["shards"] = None  # built in shards: this whole-store build completes the root
        if extras:  # a store of the tube and thin skeleton only records no target list
            attrs["targets"] = list(extras)
        if sdf_classes is not None:
            attrs["sdf_classes"] = list(sdf_classes)
        plan = BuildPlan(
            attrs,
            jobs,
            task,
            job_id=lambda job: job.case.case_id,
            job_source=lambda job: job.case.mask,
            keep=wanted if prune else None,
            shard=shard,
        )
        run_plan(plan, report, out, held, store, **options)
    report.outcomes.sort(key=lambda o: o.case_id)
    report.seconds = time.perf_counter() - start
    return report
