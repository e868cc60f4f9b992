"""Where bytes come from: local paths or fsspec URLs (``s3://``, ``gs://``, ``file://``, ...).

The one seam between skelprep and storage. A plain path stays a :class:`pathlib.Path`
and is handled exactly as before (``os`` calls, no fsspec). A URL becomes a
:class:`RemotePath`, a small picklable value with the part of the ``Path`` API that
discovery and reading use (``/``, ``name``, ``relative_to``, ``exists()`` ...),
which never collapses the ``//`` of its scheme.

Storage options (endpoint, keys, ...) come from the standard environment of the
filesystem library (for S3: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE`` ...) plus the options set here with :func:`set_storage_options`
(the CLI's ``--storage-option KEY=VALUE``). They apply to every URL: the dataset
and the store. They are process state, so a build sends them to its workers with
each task (:func:`skelprep.build.build_case` takes them).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "RemotePath",
    "AnyPath",
    "is_url",
    "url_typo",
    "as_path",
    "join",
    "set_storage_options",
    "storage_options",
    "options_for",
    "filesystem",
    "parse_storage_option",
    "walk",
    "glob",
    "fetch",
]

_OPTIONS: dict[str, Any] = {}
# A scheme and one slash (``s3:/bucket/x``): a URL with a slash lost, which as a local path would
# quietly become the folders ``./s3:/bucket/x``. Two letters at least: ``C:/data`` is a drive.
_ONE_SLASH_URL = re.compile(r"[a-z][a-z0-9+.-]+:/(?!/)", re.IGNORECASE)


def is_url(path: str | os.PathLike | RemotePath) -> bool:
    """Whether ``path`` names a location through fsspec (has a ``scheme://``); ``file://`` counts.

    >>> is_url("s3://bucket/raw"), is_url("data/raw"), is_url(Path("s3:/x"))
    (True, False, False)
    """
    return isinstance(path, RemotePath) or (isinstance(path, str) and "://" in path)


def url_typo(path: str | os.PathLike | RemotePath) -> str | None:
    """The URL meant by a local path that starts like one with a single slash, or None.

    >>> url_typo("s3:/bucket/x.zarr"), url_typo("./s3:/x"), url_typo("s3://bucket"), url_typo("data/raw")
    ('s3://bucket/x.zarr', None, None, None)
    """
    if isinstance(path, RemotePath):
        return None
    text = os.fspath(path)
    match = _ONE_SLASH_URL.match(text)
    return f"{text[: match.end()]}/{text[match.end() :]}" if match else None


def parse_storage_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` as (key, value); a VALUE that is JSON (``true``, ``3``, ``{...}``) is decoded.

    >>> parse_storage_option("endpoint_url=http://127.0.0.1:9000")
    ('endpoint_url', 'http://127.0.0.1:9000')
    >>> parse_storage_option("anon=true")
    ('anon', True)
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        decoded = json.loads(value)
    except ValueError:
        decoded = value
    return key.strip(), decoded


def set_storage_options(options: Mapping[str, Any] | None) -> None:
    """Set the storage options used for every URL in this process (replaces the previous ones)."""
    _OPTIONS.clear()
    _OPTIONS.update(options or {})


def storage_options() -> dict[str, Any]:
    """The storage options set in this process (a copy)."""
    return dict(_OPTIONS)


def options_for(path: str | os.PathLike | RemotePath) -> dict[str, Any] | None:
    """Storage options for opening ``path`` with zarr: None for a local path (zarr refuses them)."""
    return storage_options() if is_url(path) and not str(path).startswith("file://") else None


def filesystem(url: str | RemotePath) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a URL, with this process's storage options."""
    from fsspec.core import url_to_fs

    url = str(url)
    return url_to_fs(url, **(options_for(url) or {}))


@dataclass(frozen=True, order=True)
class RemotePath:
    """A file or folder named by a URL, with the part of the ``Path`` API discovery uses.

    >>> p = RemotePath("s3://bucket/raw/Dataset101_X") / "labelsTr" / "case_1.nii.gz"
    >>> str(p), p.name
    ('s3://bucket/raw/Dataset101_X/labelsTr/case_1.nii.gz', 'case_1.nii.gz')
    >>> p.relative_to(RemotePath("s3://bucket/raw/Dataset101_X")).as_posix()
    'labelsTr/case_1.nii.gz'
    """

    url: str

    def __post_init__(self) -> None:
        scheme, _, rest = self.url.partition("://")
        object.__setattr__(self, "url", f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else self.url)

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, other: str | os.PathLike) -> RemotePath:
        tail = PurePosixPath(os.fspath(other)).as_posix().lstrip("/")
        return RemotePath(f"{self.url.rstrip('/')}/{tail}")

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        head = self.url.rstrip("/").rsplit("/", 1)[0]
        return RemotePath(head) if "://" in head else self

    def relative_to(self, other: RemotePath | str) -> PurePosixPath:
        base = str(other).rstrip("/") + "/"
        if not self.url.startswith(base):
            raise ValueError(f"{self.url} is not below {other}")
        return PurePosixPath(self.url[len(base) :])

    def as_posix(self) -> str:
        return self.url

    def exists(self) -> bool:
        fs, path = filesystem(self.url)
        return bool(fs.exists(path))

    def is_dir(self) -> bool:
        fs, path = filesystem(self.url)
        return bool(fs.isdir(path))

    def is_file(self) -> bool:
        fs, path = filesystem(self.url)
        return bool(fs.isfile(path))

    def read_bytes(self) -> bytes:
        fs, path = filesystem(self.url)
        return fs.cat_file(path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


AnyPath = Path | RemotePath


def as_path(path: str | os.PathLike | RemotePath) -> AnyPath:
    """A :class:`RemotePath` for a URL, a :class:`pathlib.Path` for anything else (as before)."""
    if isinstance(path, RemotePath):
        return path
    return RemotePath(path) if is_url(path) else Path(path)


def join(base: str | os.PathLike | RemotePath, relative: str) -> str:
    """``relative`` below ``base``, as a string; an absolute path or a URL is returned unchanged.

    >>> join("s3://bucket/raw", "labelsTr/a.png"), join("/data", "/abs/a.png")
    ('s3://bucket/raw/labelsTr/a.png', '/abs/a.png')
    """
    if is_url(relative) or os.path.isabs(relative):
        return relative
    if is_url(base):
        return str(RemotePath(str(base)) / relative)
    return os.path.join(os.fspath(base), relative)


def _below(root: RemotePath, root_path: str, path: str) -> RemotePath:
    """``path`` (as the filesystem spells it) as a URL below ``root``, spelled as the user spelled it."""
    base = root_path.rstrip("/")
    path = path.rstrip("/")
    if path == base:
        return root
    if not path.startswith(base + "/"):
        raise ValueError(f"{path} is not below {root}")
    return root / path[len(base) + 1 :]


def walk(folder: RemotePath) -> Iterator[tuple[RemotePath, list[str], list[str]]]:
    """``os.walk`` over a URL folder: (folder, sub-folder names, file names), top-down.

    Pruning ``dirnames`` in place skips those folders, as with ``os.walk``.
    """
    fs, root_path = filesystem(folder.url)
    for dirpath, dirnames, filenames in fs.walk(root_path):
        yield _below(folder, root_path, dirpath), dirnames, filenames


def glob(root: RemotePath, pattern: str) -> list[RemotePath]:
    """Entries below ``root`` matching the relative glob ``pattern`` (``**`` matches across folders)."""
    fs, root_path = filesystem(root.url)
    return [_below(root, root_path, p) for p in fs.glob(f"{root_path.rstrip('/')}/{pattern}")]


def fetch(path: RemotePath, folder: str | os.PathLike) -> Path:
    """Copy a URL's file into a local ``folder`` under its own name (readers go by the suffix).

    Raises the filesystem's own errors (``FileNotFoundError``, ``PermissionError``,
    ``OSError``); :mod:`skelprep.io` turns them into one line.
    """
    fs, remote = filesystem(path.url)
    local = Path(folder) / (posixpath.basename(remote.rstrip("/")) or "file")
    fs.get_file(remote, os.fspath(local))
    return local
