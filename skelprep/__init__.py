"""skelprep: precompute Skeleton Recall targets (tubed skeletons) offline, as Zarr sidecars.

The core functions are pure numpy; I/O, Dask and torch live at the edges and are
imported only when used (``import skelprep`` imports neither torch nor dask).
The names below are loaded on first use: ``skelprep --help`` and an up-to-date
``skelprep build`` never pay for scipy and numba (most of the start of a command).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "SkeletonTargets",
    "skeleton_targets",
    "skeletonize_mask",
    "thin_skeleton",
    "tube_from_thin",
    "tubed_skeleton",
    "signed_distance",
    "skeleton_radius",
    "components",
    "open_store",
    "__version__",
]

_LAZY = {
    "SkeletonTargets": "skelprep.skeleton",
    "skeleton_targets": "skelprep.skeleton",
    "skeletonize_mask": "skelprep.skeleton",
    "thin_skeleton": "skelprep.skeleton",
    "tube_from_thin": "skelprep.skeleton",
    "tubed_skeleton": "skelprep.skeleton",
    "signed_distance": "skelprep.targets",
    "skeleton_radius": "skelprep.targets",
    "components": "skelprep.targets",
    "open_store": "skelprep.store",  # pulls in zarr
}

if TYPE_CHECKING:
    from skelprep.skeleton import (
        SkeletonTargets,
        skeleton_targets,
        skeletonize_mask,
        thin_skeleton,
        tube_from_thin,
        tubed_skeleton,
    )
    from skelprep.store import open_store
    from skelprep.targets import components, signed_distance, skeleton_radius


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'skelprep' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
