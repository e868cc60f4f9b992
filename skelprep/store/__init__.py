"""The Zarr store of a dataset's targets: its format (:mod:`.format`), reading (:mod:`.read`), writing
(:mod:`.write`), and one builder per store (:mod:`.lock`, :mod:`.lease`).

The authoritative description is ``docs/store-format.md``. Reading needs nothing but
zarr: ``zarr.open_group(out)["case_001/labels/tube/0"][...]``. zarr is imported where a
store is opened, not when this package is.
"""

from skelprep.store.format import *  # noqa: F403 - the names in format.__all__ and read.__all__
from skelprep.store.format import __all__ as _format_names
from skelprep.store.read import *  # noqa: F403
from skelprep.store.read import __all__ as _read_names

__all__ = [*_format_names, *_read_names]
