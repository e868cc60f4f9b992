"""The Zarr store of a dataset's targets: its format (:mod:`.format`), reading (:mod:`.read`), writing
(:mod:`.write`), and one builder per store (:mod:`.lock`, :mod:`.lease`).

The authoritative description is ``docs/store-format.md``. Reading needs nothing but
zarr: ``zarr.open_group(out)["case_001/tube"][...]``. zarr is imported where a
store is opened, not when this package is.
"""

from skelprep.store.format import (
    ARRAY_NAMES,
    ATTRS_KEY,
    DEFAULT_STORE_NAME,
    FORMAT_VERSION,
    IMAGE_ARRAY_NAMES,
    READABLE_VERSIONS,
    TARGET_NAMES,
    CaseState,
    StoreError,
    array_checksum,
    case_state,
    checked_root_meta,
    chunk_shape,
    default_store_path,
    label_counts,
)
from skelprep.store.read import (
    CaseTargets,
    CheckedArray,
    SkeletonStore,
    as_store,
    case_group,
    damaged_root,
    has_arrays,
    open_root,
    open_store,
    read_array,
    read_checked,
    read_regions,
    stored_array,
    verify_case_data,
)

__all__ = [
    "ARRAY_NAMES",
    "ATTRS_KEY",
    "DEFAULT_STORE_NAME",
    "FORMAT_VERSION",
    "IMAGE_ARRAY_NAMES",
    "READABLE_VERSIONS",
    "TARGET_NAMES",
    "CaseState",
    "CaseTargets",
    "CheckedArray",
    "SkeletonStore",
    "StoreError",
    "array_checksum",
    "as_store",
    "case_group",
    "case_state",
    "checked_root_meta",
    "chunk_shape",
    "damaged_root",
    "default_store_path",
    "has_arrays",
    "label_counts",
    "open_root",
    "open_store",
    "read_array",
    "read_checked",
    "read_regions",
    "stored_array",
    "verify_case_data",
]
