"""Discover the cases of a dataset folder: nnU-Net v2 raw, generic labels/images, or globs.

Discovery never reads pixel data. Problems that concern one case (two masks
with the same case id, an id the store cannot hold) do not stop discovery: they
are listed in :attr:`DatasetLayout.problems` so that a build reports them beside
the good cases. A case whose images are missing or ambiguous is still a case
(its targets need only the mask): its :attr:`Case.image_problem` names the file,
and only what needs the images (a build with images) fails it.
Problems with the dataset as a whole raise :class:`LayoutError`. Files in a
label folder that cannot be masks (``notes.txt``, ``x.jpg``) are skipped and
listed in :attr:`DatasetLayout.skipped`, so that a build names them.

A case id names a group of the store, so it is checked here, for every layout
and every URL scheme: a relative path of plain names joined by ``/`` (no ``.``,
``..``, empty or absolute part, no backslash), no name reserved by Zarr, not the
folder of other cases, and not equal to another id but for case (or Unicode
normalization): on a case-insensitive file system the two would share a group.
An id that breaks a rule is a :class:`CaseProblem`; the store never sees it.

The dataset may be a local folder or a URL (``s3://bucket/raw/Dataset101_X``,
see :mod:`skelprep._fs`): then its paths are :class:`skelprep._fs.RemotePath`
values, listed through fsspec, and messages name the URL.
"""

from __future__ import annotations

import glob
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from skelprep import _fs
from skelprep._fs import AnyPath, RemotePath, as_path
from skelprep._util import first_line, plain_path_problem, printable
from skelprep.io import IMAGE_SUFFIXES, MASK_SUFFIXES, split_suffix

__all__ = [
    "Case",
    "CaseProblem",
    "DatasetLayout",
    "LayoutError",
    "SkippedFile",
    "discover",
    "masks_by_case_id",
]
_CHANNEL = re.compile(r"_(\d{4})$")


class LayoutError(ValueError):
    """The dataset folder as a whole cannot be used.

    ``param`` names the argument of :func:`discover` that would fix it (``"masks"``), or is None;
    a front end can then point at its own option for that argument.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Case:
    """One training case.

    Attributes
    ----------
    case_id : str
        The mask's path relative to its label folder, without extension
        (``"case_001"``, ``"left/img_07"``); also its group name in the store.
    mask : Path or RemotePath
        The mask file (a :class:`skelprep._fs.RemotePath` in a dataset named by a URL).
    images : tuple of Path or RemotePath
        Image files in channel order (may be empty).
    image_problem : CaseProblem or None
        Why the case's images cannot be used (a missing channel file, two files
        for one channel), naming the file; ``images`` is then empty. The targets
        need only the mask: what needs the images fails the case with this.
    """

    case_id: str
    mask: AnyPath
    images: tuple[AnyPath, ...] = ()
    image_problem: CaseProblem | None = None


@dataclass(frozen=True)
class CaseProblem:
    """A case that discovery found but cannot be built, and why."""

    case_id: str
    path: AnyPath
    reason: str

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.reason}")  # one line, whatever the file is called


@dataclass(frozen=True)
class SkippedFile:
    """A file in a label folder that discovery left out, and why."""

    path: AnyPath
    reason: str

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class DatasetLayout:
    """What :func:`discover` found in a dataset folder (``skipped``: label-folder files that are no masks)."""

    root: AnyPath
    kind: str  # "nnunet", "generic" or "glob"
    cases: tuple[Case, ...]
    problems: tuple[CaseProblem, ...] = ()
    ignore_label: int | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    mask_dir: AnyPath | None = None
    image_dir: AnyPath | None = None  # the folder of the image files (a glob's fixed leading folders)
    skipped: tuple[SkippedFile, ...] = ()


def _walk(folder: AnyPath):
    """``os.walk`` for a local folder (symlinked folders not followed), fsspec's walk for a URL."""
    if isinstance(folder, RemotePath):
        return _fs.walk(folder)
    return ((Path(d), dn, fn) for d, dn, fn in os.walk(folder))


def _walk_files(
    folder: AnyPath, suffixes: tuple[str, ...], others: list[AnyPath] | None = None
) -> list[AnyPath]:
    """Entries below ``folder`` named with one of ``suffixes``, sorted; hidden entries and stores skipped.

    Everything so named is returned, not only regular files: a folder called
    ``x.png``, a FIFO or a broken symlink is surely a broken case, and the build
    reports it rather than skipping it silently. ``others`` receives the visible
    files named otherwise, from the same walk.
    """
    found = []
    for dirpath, dirnames, filenames in _walk(folder):
        visible = [d for d in dirnames if not d.startswith(".") and not d.endswith(".zarr")]
        found.extend(dirpath / d for d in visible if split_suffix(d, suffixes)[1])
        dirnames[:] = sorted(d for d in visible if not split_suffix(d, suffixes)[1])
        for name in filenames:
            if name.startswith("."):
                continue
            if split_suffix(name, suffixes)[1]:
                found.append(dirpath / name)
            elif others is not None:
                others.append(dirpath / name)
    if others is not None:
        others.sort()
    return sorted(found)


def _skipped(files: list[AnyPath], reason: str) -> tuple[SkippedFile, ...]:
    return tuple(SkippedFile(path, reason) for path in files)


def _case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a group of the store, or None."""
    problem = plain_path_problem(case_id)
    if problem is not None:
        # joined to the store's folder, such an id would name a place outside it
        return f"case id '{case_id}' is not a relative path of plain names ({problem}); rename the mask"
    for part in case_id.split("/"):
        if part == "zarr.json" or part.startswith("__"):
            # zarr.json is the store's metadata file; "__" names are reserved by Zarr v3
            return f"case id '{case_id}' cannot name a Zarr group ('{part}' is reserved); rename the mask"
    return None


def _case_id(path: AnyPath, base: AnyPath) -> str:
    if isinstance(path, Path) and isinstance(base, Path):
        # A local path's str is normalized, so a prefix ending in "/" is relative_to's lexical test,
        # without relative_to parsing the base again for every mask (about 13x the cost).
        text, prefix = str(path), str(base).rstrip("/") + "/"
        if text.startswith(prefix):
            return split_suffix(text[len(prefix) :], MASK_SUFFIXES)[0]
    return split_suffix(path.relative_to(base).as_posix(), MASK_SUFFIXES)[0]


def _folded(case_id: str) -> str:
    """The id as a case-insensitive, normalization-insensitive file system (macOS, Windows) sees it."""
    return unicodedata.normalize("NFC", case_id).casefold()


def _collect_masks(masks: list[AnyPath], base: AnyPath) -> tuple[dict[str, AnyPath], list[CaseProblem]]:
    by_id: dict[str, list[AnyPath]] = {}
    for mask in masks:
        by_id.setdefault(_case_id(mask, base), []).append(mask)
    unique, problems = {}, []
    for case_id, paths in by_id.items():
        reserved = _case_id_problem(case_id)
        if reserved:
            problems.append(CaseProblem(case_id, paths[0], reserved))
        elif len(paths) == 1:
            unique[case_id] = paths[0]
        else:
            names = ", ".join(p.name for p in paths)
            problems.append(CaseProblem(case_id, paths[0], f"duplicate case id '{case_id}' ({names})"))
    twins: dict[str, list[str]] = {}
    for case_id in unique:
        twins.setdefault(_folded(case_id), []).append(case_id)
    for group in (g for g in twins.values() if len(g) > 1):
        for case_id in sorted(group):
            others = ", ".join(f"'{other}'" for other in sorted(group) if other != case_id)
            reason = f"case id '{case_id}' differs only by case from {others}; rename one of the masks"
            problems.append(CaseProblem(case_id, unique.pop(case_id), reason))
    # A case group cannot also be the folder of other cases: writing "a" would delete "a/b"
    # (compared folded: on a case-insensitive file system "A" is the folder of "a/b" too).
    folders = {_folded(case_id.rsplit("/", 1)[0]) for case_id in by_id if "/" in case_id}
    folders |= {f.rsplit("/", i)[0] for f in list(folders) for i in range(1, f.count("/") + 1)}
    for case_id in sorted(c for c in unique if _folded(c) in folders):
        problems.append(
            CaseProblem(
                case_id,
                unique.pop(case_id),
                f"case id '{case_id}' is also the folder of other cases; rename the mask",
            )
        )
    return unique, problems


def masks_by_case_id(folder: str | os.PathLike) -> tuple[dict[str, Path], tuple[CaseProblem, ...]]:
    """Mask files below ``folder`` by case id, found and checked as :func:`discover` finds a label folder's.

    The same walk (hidden entries and ``.zarr`` stores skipped) and the same
    case-id rules (duplicates, reserved names, an id that is also a folder of
    other cases): a case that breaks one is a :class:`CaseProblem`, not an entry.
    """
    folder = Path(folder)
    masks, problems = _collect_masks(_walk_files(folder, MASK_SUFFIXES), folder)
    return masks, tuple(problems)


def _index_images(images: list[AnyPath], base: AnyPath) -> dict[str, list[tuple[int, AnyPath]]]:
    """Image files by case id, with their channel index (``_0000`` suffix, or 0)."""
    index: dict[str, list[tuple[int, AnyPath]]] = {}
    for image in images:
        stem = split_suffix(image.relative_to(base).as_posix(), IMAGE_SUFFIXES)[0]
        match = _CHANNEL.search(stem)
        channel = int(match.group(1)) if match else 0
        case_id = stem[: match.start()] if match else stem
        index.setdefault(case_id, []).append((channel, image))
    return index


def _pair(
    masks: dict[str, AnyPath],
    image_index: dict[str, list[tuple[int, AnyPath]]] | None,
    n_channels: int | None,
    image_dir: AnyPath | None,
    ending: str = "",
) -> list[Case]:
    """The cases of ``masks``, each with its images in channel order or the problem that keeps them out.

    A case whose images are missing or ambiguous is still a case: its targets need
    only the mask. Its ``images`` stay empty and ``image_problem`` names the file
    (``ending`` spells a missing nnU-Net channel; a generic one may have any suffix).
    """
    cases = []
    for case_id, mask in sorted(masks.items()):
        if image_index is None or image_dir is None:
            cases.append(Case(case_id, mask))
            continue
        found = sorted(image_index.get(case_id, []))
        problem = _image_problem(case_id, mask, found, n_channels, image_dir, ending)
        if problem is None:
            cases.append(Case(case_id, mask, tuple(p for _, p in found)))
        else:
            cases.append(Case(case_id, mask, image_problem=problem))
    return cases


def _image_problem(
    case_id: str,
    mask: AnyPath,
    found: list[tuple[int, AnyPath]],
    n_channels: int | None,
    image_dir: AnyPath,
    ending: str,
) -> CaseProblem | None:
    """Why the image files ``found`` (channel, path; sorted) of a case cannot be used, or None."""
    seen: dict[int, AnyPath] = {}
    for channel, path in found:
        if channel in seen:
            return CaseProblem(
                case_id,
                path,
                f"a second image for channel {channel} of case '{case_id}' (also {seen[channel]})",
            )
        seen[channel] = path
    if n_channels is not None:
        for channel, path in found:
            if channel >= n_channels:
                return CaseProblem(
                    case_id,
                    path,
                    f"image channel {channel} of case '{case_id}', but dataset.json names {n_channels} channels",
                )
        missing = [c for c in range(n_channels) if c not in seen]
        if missing:
            what = f"image channel {missing[0]}" if found else "no image file"
            path = image_dir / f"{case_id}_{missing[0]:04d}{ending}"
            return CaseProblem(case_id, path, f"missing: {what} of case '{case_id}' (mask {mask})")
    if not found:  # the image may have any suffix, and a _0000 channel suffix or none
        path = image_dir / f"{case_id}.*"
        return CaseProblem(case_id, path, f"missing: no image file of case '{case_id}' (mask {mask})")
    return None


def _label_entries(meta_path: AnyPath, labels: dict) -> tuple[dict[int, str], int | None]:
    """(label names by value, the ignore label or None) of dataset.json's ``labels``.

    A value is a label (an integer >= 0) or a region (a list of labels, which names
    no single label). Anything else is refused: JSON's ``true`` would pass for 1.
    """
    names: dict[int, str] = {}
    for name, value in labels.items():
        # type() and not isinstance(): bool is an int subclass
        is_label = type(value) is int and value >= 0
        is_region = isinstance(value, list) and all(type(v) is int and v > 0 for v in value)
        if not (is_label or is_region):
            raise LayoutError(
                f"{meta_path}: invalid dataset.json (label '{name}' is {json.dumps(value)}; "
                "expected a label value >= 0 or a list of them for a region)"
            )
        if is_label:
            names[value] = name
    ignore = labels.get("ignore")
    if ignore is not None and not (type(ignore) is int and ignore > 0):
        raise LayoutError(
            f"{meta_path}: invalid dataset.json (the 'ignore' label is {json.dumps(ignore)}; it must be a "
            "positive label value, 0 is the background)"
        )
    return names, ignore


def _discover_nnunet(root: AnyPath) -> DatasetLayout:
    meta_path = root / "dataset.json"
    if not meta_path.is_file():  # a FIFO would block read_text(); a folder gives a vague error
        raise LayoutError(f"{meta_path}: invalid dataset.json (not a regular file)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{meta_path}: invalid dataset.json ({exc})") from exc
    if not isinstance(meta, dict):
        raise LayoutError(f"{meta_path}: invalid dataset.json (not a JSON object)")
    if not isinstance(meta.get("labels", {}), dict):
        raise LayoutError(f"{meta_path}: invalid dataset.json ('labels' must map names to values)")
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise LayoutError(f"{meta_path}: 'file_ending' missing or invalid")
    if ending.lower() not in MASK_SUFFIXES:
        raise LayoutError(f"{meta_path}: unsupported file_ending '{ending}'")
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise LayoutError(f"{labels_dir}: labels folder named by the nnU-Net layout is missing")
    label_names, ignore_label = _label_entries(meta_path, meta.get("labels") or {})
    channels = meta.get("channel_names") or meta.get("modality")
    n_channels = len(channels) if isinstance(channels, dict) else None
    others: list[AnyPath] = []
    mask_files = _walk_files(labels_dir, (ending,), others)
    if not mask_files:
        raise LayoutError(f"{labels_dir}: no '{ending}' masks found (file_ending of {meta_path})")
    masks, problems = _collect_masks(mask_files, labels_dir)
    images_dir = root / "imagesTr"
    image_index = (
        _index_images(_walk_files(images_dir, (ending,)), images_dir) if images_dir.is_dir() else None
    )
    if image_index is not None and n_channels is not None:
        # nnU-Net's natural images (RGB PNG) hold all channels in one file.
        if ending.lower() in (".png", ".jpg") and all(len(v) == 1 for v in image_index.values()):
            n_channels = 1
    cases = _pair(masks, image_index, n_channels, images_dir, ending)
    return DatasetLayout(
        root,
        "nnunet",
        tuple(cases),
        tuple(problems),
        ignore_label,
        label_names,
        labels_dir,
        images_dir if image_index is not None else None,
        _skipped(others, f"not a '{ending}' mask (the file_ending of dataset.json)"),
    )


def _discover_generic(root: AnyPath) -> DatasetLayout:
    for name in ("labels", "masks", "labelsTr"):
        labels_dir = root / name
        if labels_dir.is_dir():
            break
    else:
        raise LayoutError(
            f"{root}: no dataset.json, labels/ or masks/ folder found; name the mask files with a masks glob",
            param="masks",
        )
    others: list[AnyPath] = []
    mask_files = _walk_files(labels_dir, MASK_SUFFIXES, others)
    if not mask_files:
        raise LayoutError(f"{labels_dir}: no masks found ({', '.join(MASK_SUFFIXES)})")
    masks, problems = _collect_masks(mask_files, labels_dir)
    images_dir = next((root / n for n in ("images", "imagesTr") if (root / n).is_dir()), None)
    image_index = _index_images(_walk_files(images_dir, IMAGE_SUFFIXES), images_dir) if images_dir else None
    cases = _pair(masks, image_index, None, images_dir)
    return DatasetLayout(
        root,
        "generic",
        tuple(cases),
        tuple(problems),
        mask_dir=labels_dir,
        image_dir=images_dir,
        skipped=_skipped(others, f"not a mask file ({', '.join(MASK_SUFFIXES)})"),
    )


def _glob_base(root: AnyPath, pattern: str) -> AnyPath:
    """The folder above the first wildcard of ``pattern``: case ids are relative to it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return (root / Path(*fixed)) if fixed else root


def _glob_files(root: AnyPath, pattern: str, suffixes: tuple[str, ...]) -> list[AnyPath]:
    if isinstance(root, RemotePath):  # the pattern is relative (checked by discover)
        return sorted(p for p in _fs.glob(root, pattern) if split_suffix(p.name, suffixes)[1])
    full = pattern if os.path.isabs(pattern) else str(root / pattern)
    base = str(_glob_base(root, pattern))
    base = "" if base == "." else base.rstrip("/") + "/"  # glob spells matches below "." without "./"
    links: dict[str, bool] = {}  # per folder: the matches of a glob share a few
    # Not only regular files: a matching folder, FIFO or broken symlink is reported by the build.
    return sorted(
        Path(p)
        for p in glob.glob(full, recursive=True)
        if split_suffix(p, suffixes)[1] and not _through_link(os.path.dirname(p), base, links)
    )


def _through_link(folder: str, base: str, links: dict[str, bool]) -> bool:
    """Whether ``folder`` (a match's) is reached from the glob's ``base`` through a symlinked folder.

    Python's glob follows symlinked folders (``**`` through ``ln -s . loop`` repeats
    every mask below it), where the walk of a labels folder does not: such matches are
    dropped, so a glob finds what the walk would. The base itself was named by the user.
    Matching the glob's result is simpler than walking with a pattern matcher of our own,
    and keeps glob's meaning of every pattern (``..`` parts included).
    """
    if len(folder) <= len(base) or not folder.startswith(base):  # ``base`` ends in "/" (or is "")
        return False
    if folder not in links:
        links[folder] = os.path.islink(folder) or _through_link(os.path.dirname(folder), base, links)
    return links[folder]


def _discover_globs(root: AnyPath, masks: str, images: str | None) -> DatasetLayout:
    mask_files = _glob_files(root, masks, MASK_SUFFIXES)
    if not mask_files:
        raise LayoutError(f"{root}: no mask files match '{masks}'")
    mask_base = _glob_base(root, masks)
    found, problems = _collect_masks(mask_files, mask_base)
    image_index = None
    image_base = None if images is None else _glob_base(root, images)
    if images is not None:
        image_index = _index_images(_glob_files(root, images, IMAGE_SUFFIXES), image_base)
    cases = _pair(found, image_index, None, image_base)
    return DatasetLayout(
        root,
        "glob",
        tuple(cases),
        tuple(problems),
        mask_dir=mask_base,
        image_dir=image_base,
    )


def _check_remote_root(root: RemotePath, masks: str | None, images: str | None) -> None:
    """A URL dataset is a folder there; its globs stay below it. One line on any failure."""
    for pattern in (masks, images):
        if pattern is not None and (os.path.isabs(pattern) or _fs.is_url(pattern)):
            raise LayoutError(f"{root}: glob '{pattern}' must be relative to the dataset URL")
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except (
        Exception
    ) as exc:  # no bucket, no credentials, unknown protocol: fsspec and botocore raise many types
        raise LayoutError(f"{root}: cannot list the dataset ({first_line(exc, with_type=True)})") from exc
    if not exists:
        raise LayoutError(f"{root}: dataset folder not found")
    if not is_dir:
        raise LayoutError(f"{root}: not a folder")


def discover(
    dataset: str | os.PathLike | RemotePath, masks: str | None = None, images: str | None = None
) -> DatasetLayout:
    """Find the cases of a dataset folder.

    Parameters
    ----------
    dataset : path or URL
        The dataset folder (``s3://bucket/raw/Dataset101_X`` and any fsspec URL too).
    masks, images : str, optional
        Glob patterns relative to ``dataset`` (``**`` allowed). Case ids are the
        mask paths relative to the pattern's fixed leading folders; images are
        matched to masks by that id (with an optional ``_0000`` channel suffix).

    Returns
    -------
    DatasetLayout

    Notes
    -----
    Without globs: a folder with ``dataset.json`` is read as nnU-Net v2 raw
    (``labelsTr/``, ``imagesTr/`` with ``_0000`` channel suffixes, ``file_ending``;
    a label named ``ignore`` becomes the ignore label); otherwise a ``labels/``
    (or ``masks/``) folder with optional ``images/`` is used.
    """
    typo = _fs.url_typo(dataset)
    if typo is not None:
        raise LayoutError(
            f"{dataset}: looks like a URL with one slash; write {typo} (or ./{dataset} for a folder)"
        )
    root = as_path(dataset)
    if isinstance(root, RemotePath):
        _check_remote_root(root, masks, images)
    elif not root.exists():
        raise LayoutError(f"{root}: dataset folder not found")
    elif not root.is_dir():
        raise LayoutError(f"{root}: not a folder")
    if masks is not None:
        return _discover_globs(root, masks, images)
    if images is not None:
        raise LayoutError(f"{root}: an images glob needs a masks glob", param="masks")
    if (root / "dataset.json").exists():
        return _discover_nnunet(root)
    return _discover_generic(root)
