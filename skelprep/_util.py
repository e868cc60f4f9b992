"""Small helpers shared across skelprep's modules (private: no public API here)."""

from __future__ import annotations

import datetime as _dt

__all__ = ["printable", "first_line", "plain_path_problem", "utc_now"]


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a file name cannot break a one-line message.

    >>> printable("a\\nb")
    'a\\\\nb'
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def plain_path_problem(path: str) -> str | None:
    """Why ``path`` is not a relative path of plain names joined by ``/``, or None.

    Such a path stays below the folder it is joined to, whatever the platform: no
    absolute or empty part, no ``.`` or ``..``, no ``\\`` (a separator on Windows).

    >>> plain_path_problem("left/img_07"), plain_path_problem("a/../b"), plain_path_problem("/a")
    (None, "a '..' part", 'an absolute path')
    """
    if not path:
        return "empty"
    if path.startswith("/"):
        return "an absolute path"
    if "\\" in path:
        return "a backslash"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"a '{part}' part" if part else "an empty part"
    return None


def first_line(what: object, *, with_type: bool = False) -> str:
    """The first line of an exception's (or any object's) text; its type name when it has none.

    >>> first_line(ValueError("bad value\\nmore detail"))
    'bad value'
    >>> first_line(ValueError("bad value"), with_type=True)
    'ValueError: bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    lines = str(what).strip().splitlines()
    if not lines:
        return type(what).__name__
    return f"{type(what).__name__}: {lines[0]}" if with_type else lines[0]


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds, as recorded in store attributes."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
