"""skelprep: precompute Skeleton Recall targets (tubed skeletons) offline, as Zarr sidecars.

The core functions are pure numpy; I/O, Dask and torch live at the edges and are
imported only when used (``import skelprep`` imports neither torch nor dask).
"""

from skelprep.skeleton import (
    SkeletonTargets,
    skeleton_targets,
    skeletonize_mask,
    thin_skeleton,
    tube_from_thin,
    tubed_skeleton,
)

__version__ = "0.1.0"

__all__ = [
    "SkeletonTargets",
    "skeleton_targets",
    "skeletonize_mask",
    "thin_skeleton",
    "tube_from_thin",
    "tubed_skeleton",
    "open_store",
    "__version__",
]


def __getattr__(name: str):
    # The store pulls in zarr; keep ``import skelprep`` light for the pure functions.
    if name == "open_store":
        from skelprep.store import open_store

        return open_store
    raise AttributeError(f"module 'skelprep' has no attribute {name!r}")
