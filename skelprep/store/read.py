"""Reading a store: listing its cases, opening them, and the reader's protocol against a build that rewrites them.

Everything goes through zarr's public API (``zarr.open``, ``zarr.open_group``);
folders are listed with ``os`` or fsspec to find the nodes. Cases are listed from
their group documents alone (:meth:`SkeletonStore._walk`): a damaged array
document fails only its own case (:class:`StoreError` naming it, mended by
``skelprep build --repair``), never the listing of the others.

Reading a case while a build may rewrite it (``docs/store-format.md``): its
attributes are read first (they must say complete), then its arrays, then its
attributes again; every write of a case records a new ``generation`` token, so the
data read are the case as first read exactly when the second read finds the same
token, still complete (:meth:`SkeletonStore.confirm`). Otherwise the read raises
:class:`StoreError` ("being rebuilt"); a file gone during the read is the same
rewrite. :class:`CheckedArray` checks every read so.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from skelprep._fs import filesystem, is_url, options_for
from skelprep._util import first_line
from skelprep.store.format import (
    ATTRS_KEY,
    FORMAT_VERSION,
    IMAGE_ARRAY_NAMES,
    TARGET_NAMES,
    StoreError,
    array_checksum,
    array_path,
    case_state,
    checked_root_meta,
)

if TYPE_CHECKING:
    import numpy as np
    import zarr

__all__ = (
    "CaseTargets CheckedArray SkeletonStore open_store open_root damaged_root read_regions read_checked "
    "verify_case_data as_store case_group has_arrays stored_array read_array"
).split()

_MAX_DEPTH = 32  # case ids nest a few folders deep (``left/img_07``); the walk stops here (a symlink loop)


def store_key(*parts: str) -> str:
    """The zarr key of path parts, empty parts (the store's root) left out.

    >>> store_key("", "case_001", "tube")
    'case_001/tube'
    """
    return "/".join(p for p in parts if p)


def open_root(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """The store's root group, without consolidated metadata (it may be stale); URLs with :mod:`skelprep._fs` options."""
    import zarr

    path = os.fspath(path)
    try:
        return zarr.open_group(path, mode=mode, use_consolidated=False, storage_options=options_for(path))
    except FileNotFoundError as exc:
        if mode == "r":
            raise StoreError(f"{path}: no skelprep store here (run 'skelprep build' first)") from exc
        raise StoreError(f"{path}: cannot create the store ({first_line(exc, with_type=True)})") from exc
    except Exception as exc:  # zarr raises several types for "not a group"; fsspec for bad URLs
        raise StoreError(f"{path}: cannot open store ({first_line(exc, with_type=True)})") from exc


def _node(zstore: Any, key: str, mode: str = "r") -> tuple[str | None, Any]:
    """(kind, node) at ``key``: ("group"|"array", node), ("damaged", None), or (None, None) where there is none."""
    import zarr
    from zarr.errors import NodeNotFoundError

    try:
        node = zarr.open(store=zstore, path=key, mode=mode)
    except (NodeNotFoundError, KeyError, FileNotFoundError, NotADirectoryError):
        return None, None
    except Exception:  # metadata that does not parse
        return "damaged", None
    return ("array" if isinstance(node, zarr.Array) else "group"), node


def _meta(node: Any) -> dict[str, Any] | None:
    meta = node.attrs.get(ATTRS_KEY)
    return dict(meta) if isinstance(meta, dict) else None


class SkeletonStore(Mapping[str, "CaseTargets"]):
    """A built store: a read-only mapping from case id to :class:`CaseTargets` (complete cases only).

    Use :func:`open_store`. ``root`` is the root group; None for a store whose root
    document is damaged (:meth:`of_cases`): its cases are then opened on their own.
    """

    def __init__(self, root: zarr.Group | None, path: str | os.PathLike, *, attributes: Any = None) -> None:
        self._root = root
        self.path = os.fspath(path)
        meta = root.attrs.get(ATTRS_KEY) if root is not None else (attributes or {}).get(ATTRS_KEY)
        if meta is None:
            raise StoreError(f"{self.path}: not a skelprep store (no 'skelprep' attributes)")
        self.attrs: dict[str, Any] = dict(checked_root_meta(self.path, meta))
        if root is not None:
            self._zstore, self._prefix = root.store, root.store_path.path
        else:
            from zarr.storage import LocalStore

            self._zstore, self._prefix = LocalStore(self.path, read_only=True), ""
        self._case_ids: list[str] | None = None

    @classmethod
    def of_cases(cls, path: str | os.PathLike) -> SkeletonStore:
        """The cases of a local store whose root metadata is damaged (:func:`damaged_root`), from their groups.

        ``attrs`` hold only the format version and ``with_images`` (the rest was in the lost root).
        """
        store = cls(None, path, attributes={ATTRS_KEY: {"format_version": FORMAT_VERSION}})
        store.attrs["with_images"] = any(
            "image" in ((store.case_attrs(c) or {}).get("checksums") or {}) for c in store.case_ids
        )
        return store

    def __repr__(self) -> str:
        return f"SkeletonStore({self.path!r}, cases={len(self)})"

    @property
    def root(self) -> zarr.Group:
        if self._root is None:
            raise StoreError(f"{self.path}: the store's root metadata is damaged")
        return self._root

    @property
    def dataset_path(self) -> str | None:
        """Where the store's dataset lies now (a local path or a URL); None where the store does not say.

        The root's ``dataset`` is relative to the store (``..`` for the default
        store), a URL, an absolute path (``--absolute-paths``), or null.
        """
        recorded = self.attrs.get("dataset")
        if not isinstance(recorded, str) or not recorded:
            return None
        if is_url(recorded) or os.path.isabs(recorded):
            return recorded
        return _joined(self.path if is_url(self.path) else os.path.abspath(self.path), recorded)

    def resolve(self, recorded: str | None) -> str | None:
        """A recorded dataset file path (``source``, ``images.sources``) as it lies now; None if unknown."""
        if not isinstance(recorded, str) or not recorded:
            return None
        if is_url(recorded) or os.path.isabs(recorded):
            return recorded
        dataset = self.dataset_path
        return None if dataset is None else _joined(dataset, recorded)

    def source_path(self, case_id: str) -> str | None:
        """The mask file a case was built from, as it lies now (see :meth:`resolve`); None if unknown."""
        return self.resolve((self.case_attrs(case_id) or {}).get("source"))

    def _open(self, key: str) -> tuple[str | None, Any]:
        return _node(self._zstore, store_key(self._prefix, key))

    def case_attrs(self, case_id: str) -> dict[str, Any] | None:
        """The case's attributes, complete or not; None if the group is absent or unreadable."""
        kind, node = self._open(case_id)
        return _meta(node) if kind == "group" else None

    def _names(self, folder: str) -> list[str]:
        """The names directly below a folder of the store (files and folders; empty where there is none)."""
        if not is_url(self.path):
            try:
                return sorted(os.listdir(os.path.join(self.path, folder)))
            except OSError:
                return []
        fs, root = filesystem(self.path)
        fs.invalidate_cache()
        try:
            return sorted(
                posixpath.basename(p.rstrip("/")) for p in fs.ls(store_key(root, folder), detail=False)
            )
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _walk(self) -> tuple[list[str], list[str]]:
        """(complete, incomplete) case ids, from the group documents alone (arrays are never opened).

        Incomplete are case groups without ``complete: true``, nodes whose metadata
        does not parse, and folders of arrays without group metadata (a build
        killed before it wrote the case's metadata).
        """
        complete: list[str] = []
        incomplete: set[str] = set()
        level: list[tuple[str, bool]] = [("", False)]  # (folder, whether it lacks group metadata)
        for _ in range(_MAX_DEPTH):
            below: list[tuple[str, bool]] = []
            for folder, bare in level:
                for name in self._names(folder):
                    if name == "zarr.json" or name.endswith(".partial"):
                        continue
                    child = store_key(folder, name)
                    kind, node = self._open(child)
                    meta = _meta(node) if kind == "group" else None
                    if kind is None:  # a folder without metadata (or a file): look inside
                        below.append((child, True))
                    elif kind == "array":
                        if bare:  # arrays in a folder without group metadata: a case a kill cut short
                            incomplete.add(folder)
                    elif kind == "damaged":
                        incomplete.add(child)
                    elif meta is not None and "source" in meta:
                        (complete.append(child) if meta.get("complete") is True else incomplete.add(child))
                    else:  # a group above nested case ids
                        below.append((child, False))
            level = below
            if not level:
                break
        return sorted(complete), sorted(incomplete)

    def _scan(self) -> tuple[list[str], list[str]]:
        try:
            return self._walk()
        except Exception as exc:  # the object store failed a listing
            raise StoreError(
                f"{self.path}: cannot list the store ({first_line(exc, with_type=True)})"
            ) from exc

    @property
    def case_ids(self) -> list[str]:
        """Ids of the complete cases, sorted."""
        if self._case_ids is None:
            self._case_ids = self._scan()[0]
        return list(self._case_ids)

    @property
    def incomplete_case_ids(self) -> list[str]:
        """Ids of case groups whose writing did not finish (and case folders without group metadata)."""
        return self._scan()[1]

    def _rebuilt(self, case_id: str) -> StoreError:
        return StoreError(
            f"{self.path}: case '{case_id}' is being rebuilt; read it again when the build is done"
        )

    def absent(self, case_id: str) -> Exception:
        """KeyError for a case without group metadata, or StoreError ("being rebuilt") where this store listed it."""
        return self._rebuilt(case_id) if case_id in (self._case_ids or ()) else KeyError(case_id)

    def confirm(self, case_id: str, attrs: Mapping[str, Any]) -> None:
        """The reader's last step: StoreError unless the case is still the write ``attrs`` were read from."""
        now = self.case_attrs(case_id)
        if now is None or now.get("complete") is not True or not _same_write(now, attrs):
            raise self._rebuilt(case_id)

    def checked(self, case_id: str, attrs: Mapping[str, Any], read: Callable[[], Any]) -> Any:
        """``read()`` of a case's arrays, then :meth:`confirm`."""
        return _checked(functools.partial(self.confirm, case_id, attrs), read)

    def group(self, case_id: str) -> zarr.Group:
        """The zarr group of a case; KeyError if there is none."""
        kind, node = self._open(case_id)
        if kind != "group":
            raise KeyError(case_id)
        return node

    def __getitem__(self, case_id: str) -> CaseTargets:
        meta = self.case_attrs(case_id)
        if meta is None:
            raise self.absent(case_id)
        if meta.get("complete") is not True:
            raise StoreError(f"{self.path}: case '{case_id}' is incomplete (its build did not finish)")
        confirm = functools.partial(self.confirm, case_id, meta)
        names = [*TARGET_NAMES, *(n for n in IMAGE_ARRAY_NAMES if n in meta.get("checksums", {}))]
        arrays: dict[str, Any] = {}
        group = None
        try:
            group = self.group(case_id)
            for name in names:
                arrays[name] = CheckedArray(group[array_path(meta, name)], confirm)
        except Exception as exc:
            confirm()  # a build replaced the case while it was opened
            what = "its group" if group is None else f"array '{names[len(arrays)]}'"
            problem = (
                "is missing"
                if isinstance(exc, KeyError)
                else f"cannot be read ({first_line(exc, with_type=True)})"
            )
            raise StoreError(
                f"{self.path}: case '{case_id}' is damaged: {what} {problem}; a repairing build (skelprep build --repair) rebuilds it"
            ) from exc
        return CaseTargets(
            case_id,
            arrays["tube"],
            arrays["thin"],
            meta,
            arrays.get("image"),
            arrays.get("label"),
            group,
            confirm,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __contains__(self, case_id: object) -> bool:
        meta = self.case_attrs(case_id) if isinstance(case_id, str) else None
        return bool(meta and meta.get("complete") is True)


def _joined(base: str, relative: str) -> str:
    """``relative`` (``/``-separated, ``..`` allowed) below a local folder or a URL, normalized lexically.

    >>> _joined("/data/ds/skeletons.zarr", ".."), _joined("s3://bkt/raw/ds", "../other/a.png")
    ('/data/ds', 's3://bkt/raw/other/a.png')
    """
    if is_url(base):
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"
    return os.path.normpath(os.path.join(base, *relative.split("/")))


def damaged_root(path: str | os.PathLike) -> str | None:
    """Why a local store's root ``zarr.json`` cannot be read although skelprep cases lie below it; else None.

    None also for a URL and for a folder that holds no skelprep case (no store of
    ours). A build rebuilds such a root from the case groups.
    """
    path = os.fspath(path)
    if is_url(path) or not os.path.isdir(path):
        return None
    try:
        open_root(path).attrs.get(ATTRS_KEY)
        return None
    except StoreError:
        pass
    try:
        with open(os.path.join(path, "zarr.json"), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        why = "missing"
    except OSError as exc:
        why = f"unreadable ({first_line(exc, with_type=True)})"
    else:
        try:
            json.loads(raw)
            why = "not a zarr v3 group document"
        except ValueError as exc:
            why = f"not valid JSON ({first_line(exc)})"
    if not any(SkeletonStore(None, path, attributes={ATTRS_KEY: {"format_version": FORMAT_VERSION}})._walk()):
        return None
    return f"the root metadata zarr.json is {why}"


def _same_write(now: Mapping[str, Any], then: Mapping[str, Any]) -> bool:
    """Whether two reads of a case's attributes see one write (its ``generation``; compared whole without one)."""
    if now.get("generation") is not None or then.get("generation") is not None:
        return now.get("generation") == then.get("generation")
    return json.dumps(now, sort_keys=True) == json.dumps(then, sort_keys=True)


def _checked(confirm: Callable[[], None] | None, read: Callable[[], Any]) -> Any:
    """``read()``, then ``confirm()``; an exception of the read is confirmed first (a rewrite explains it)."""
    if confirm is None:
        return read()
    try:
        data = read()
    except Exception:
        confirm()
        raise
    confirm()
    return data


class CheckedArray:
    """A stored array of a case, read as the case was opened or not at all.

    ``a[selection]`` gives a numpy array (only the chunks it needs are read), then
    confirms that no build rewrote the case meanwhile (StoreError "being rebuilt"
    otherwise). Other attributes are the zarr array's; ``array`` is the zarr array
    itself, whose reads are not checked.
    """

    __slots__ = ("array", "confirm")

    def __init__(self, array: zarr.Array, confirm: Callable[[], None] | None) -> None:
        self.array = array
        self.confirm = confirm

    def __getitem__(self, selection: Any) -> Any:
        return _checked(self.confirm, lambda: self.array[selection])

    def __getattr__(self, name: str) -> Any:
        if name in CheckedArray.__slots__:  # not set yet (copy, unpickling): no recursion into the array
            raise AttributeError(name)
        return getattr(self.array, name)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        import numpy as np

        return np.asarray(self[...], dtype=dtype)

    def __len__(self) -> int:
        return len(self.array)


@dataclass(frozen=True)
class CaseTargets:
    """The stored arrays of one case.

    ``tube``, ``thin`` (and ``image``, ``label`` of a case built ``--with-images``;
    any other stored array, e.g. ``sdf``, by :meth:`array`) are :class:`CheckedArray`: ``case.tube[10:74, 0:64, 0:64]`` reads only the
    chunks it needs, and a read while a build rewrites the case raises StoreError.
    ``attrs``: the case's attributes; ``group``: its zarr group; ``confirm`` raises
    StoreError when a build rewrote the case since it was opened.
    """

    case_id: str
    tube: Any
    thin: Any
    attrs: dict[str, Any]
    image: Any = None
    label: Any = None
    group: zarr.Group | None = None
    confirm: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    _opened: dict[str, CheckedArray] = field(default_factory=dict, repr=False, compare=False)

    def array(self, name: str) -> Any:
        """A stored array of the case by name, as a :class:`CheckedArray` (``case.array("sdf")[:, 0:64, 0:64]``
        reads only the chunks it needs); KeyError if the case holds none of that name."""
        known = {"tube": self.tube, "thin": self.thin, "image": self.image, "label": self.label}
        if known.get(name) is not None:
            return known[name]
        opened = self._opened.get(name)
        if opened is None:
            if self.group is None or name not in (self.attrs.get("checksums") or {}):
                raise KeyError(name)
            opened = self._opened[name] = CheckedArray(self.group[array_path(self.attrs, name)], self.confirm)
        return opened

    def checked(self, read: Callable[[], Any]) -> Any:
        """``read()`` (reads through the arrays' unchecked ``array``), confirmed once: StoreError if rewritten."""
        return _checked(self.confirm, read)

    @property
    def has_images(self) -> bool:
        return self.image is not None and self.label is not None

    def read(self, name: str) -> np.ndarray:
        """A whole array of the case by name (e.g. ``"tube_locations"``)."""
        if self.group is None:
            raise KeyError(name)
        group, path = self.group, array_path(self.attrs, name)
        return self.checked(lambda: group[path][...])

    def array_names(self) -> list[str]:
        """Names of the case's arrays that carry a checksum (every array a build wrote)."""
        return list(self.attrs.get("checksums") or TARGET_NAMES)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(self.attrs.get("spacing") or (1.0,) * len(self.attrs["shape"]))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.attrs["shape"])


def open_store(path: str | os.PathLike) -> SkeletonStore:
    """Open a built store (``<dataset>/skeletons.zarr`` by default, or any URL zarr opens) for reading.

    >>> store = open_store("examples/road_cracks/skeletons.zarr")
    >>> store.case_ids
    ['crack_000', 'crack_001', 'crack_002']
    >>> patch = store["crack_000"].tube[0:256, 0:256]
    >>> patch.shape, patch.dtype
    ((256, 256), dtype('uint8'))
    """
    try:
        return SkeletonStore(open_root(path, mode="r"), path)
    except StoreError:
        damage = damaged_root(path)
        if damage is None:
            raise
        raise StoreError(
            f"{path}: {damage}; its cases are intact: 'skelprep build DATASET --out {path}' rebuilds it from them"
        ) from None


_POOL: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked DataLoader worker starts its own


def read_regions(arrays: Sequence[Any], selection: Any) -> list[np.ndarray]:
    """The same region of several arrays of a case, read concurrently (decoding releases the GIL).

    >>> import zarr
    >>> g = zarr.group()
    >>> a = g.create_array("a", shape=(4, 4), dtype="u1"); a[...] = 1
    >>> b = g.create_array("b", shape=(4, 4), dtype="u1"); b[...] = 2
    >>> [r.tolist() for r in read_regions([a, b], (slice(0, 1), slice(0, 2)))]
    [[[1, 1]], [[2, 2]]]
    """
    import numpy as np

    plain = [a.array if isinstance(a, CheckedArray) else a for a in arrays]
    confirms = list(
        {id(a.confirm): a.confirm for a in arrays if isinstance(a, CheckedArray) and a.confirm}.values()
    )

    def read_all() -> list[np.ndarray]:
        if len(plain) == 1:
            return [np.asarray(plain[0][selection])]
        pool = _POOL.setdefault(os.getpid(), ThreadPoolExecutor(4, thread_name_prefix="skelprep-read"))
        return [np.asarray(r) for r in pool.map(lambda a: a[selection], plain)]

    def confirm_all() -> None:
        for confirm in confirms:
            confirm()

    return _checked(confirm_all if confirms else None, read_all)


def read_checked(case: CaseTargets, name: str) -> tuple[np.ndarray | None, str]:
    """(data, problem) of one stored array: ``problem`` is empty when it reads, has the recorded shape and
    matches its recorded checksum; ``data`` is None when it cannot be read."""
    expected = case.attrs.get("checksums", {}).get(name)
    try:
        data = (
            case.group[array_path(case.attrs, name)][...]
            if case.group is not None
            else getattr(case, name)[...]
        )
    except KeyError:
        return None, f"{name}: missing"
    except Exception as exc:  # the CRC-32C codec raises on altered chunk bytes
        return None, f"{name}: unreadable data ({type(exc).__name__}: {exc})"
    spatial = data.shape[1:] if name == "image" else data.shape
    if name in TARGET_NAMES + IMAGE_ARRAY_NAMES and list(spatial) != list(case.attrs.get("shape", [])):
        return data, f"{name}: shape {data.shape} differs from recorded {case.attrs.get('shape')}"
    if expected != array_checksum(data):
        return data, f"{name}: data checksum mismatch (chunks altered or missing)"
    return data, ""


def verify_case_data(case: CaseTargets) -> list[str]:
    """Problems with a case's stored data (checksum or CRC failures, wrong shape) over every checksummed array."""
    problems = (read_checked(case, name)[1] for name in case.array_names())
    return [p for p in problems if p]


# -- by name, for the framework adapters (MONAI, TorchIO) ---------------------------------------------


@functools.lru_cache(maxsize=16)
def _cached_store(path: str) -> SkeletonStore:
    return open_store(path)


def as_store(store: str | os.PathLike | SkeletonStore, *, cached: bool = False) -> SkeletonStore:
    """An open store: ``store`` itself, or the store at that path (opened once per process if ``cached``)."""
    if isinstance(store, SkeletonStore):
        return store
    return _cached_store(os.fspath(store)) if cached else open_store(store)


def case_group(store: SkeletonStore, case_id: str) -> tuple[zarr.Group, dict[str, Any]]:
    """(group, attributes) of a complete case; KeyError if there is none, StoreError if it is incomplete."""
    try:
        group = store.group(case_id)
    except KeyError:
        raise store.absent(case_id) from None
    meta = _meta(group)
    if meta is None:
        raise store.absent(case_id)
    state = case_state(meta)
    if not state.ok:  # the store's one rule: here only "incomplete" can remain
        raise StoreError(f"{store.path}: case '{case_id}' is {state.state} ({state.reason})")
    return group, meta


def has_arrays(store: SkeletonStore, case_id: str, names: Iterable[str]) -> bool:
    """Whether the complete case ``case_id`` holds every array in ``names``."""
    try:
        group, meta = case_group(store, case_id)
    except (KeyError, StoreError):
        return False
    return all(array_path(meta, name) in group for name in names)


def stored_array(store: SkeletonStore, case_id: str, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(array, case attributes) of one stored array of a complete case, read under the reader's protocol."""
    group, attrs = case_group(store, case_id)
    return store.checked(case_id, attrs, lambda: read_array(group, name, store.path)), attrs


def read_array(group: zarr.Group, name: str, store_path: str = "") -> np.ndarray:
    """One array of a case group (from :func:`case_group`); StoreError if it has no such array."""
    try:
        array = group[array_path(_meta(group) or {}, name)]
    except KeyError:
        hint = " (build with --with-images)" if name in IMAGE_ARRAY_NAMES else ""
        raise StoreError(f"{store_path}: case '{group.basename}' has no array '{name}'{hint}") from None
    return array[...]
