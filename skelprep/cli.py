"""Command-line interface: ``skelprep build | info | verify | preview | eval``.

Errors become one line on stderr (``skelprep: error: <file>: <reason>``) and an
exit code: 0 all well, 1 a case failed or a check did not pass, 2 bad usage.
``skelprep --debug ...`` shows tracebacks instead. Progress goes to stderr,
results to stdout; ``--json`` prints a machine-readable result.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from skelprep import __version__
from skelprep._output import (
    EXIT_FAILED,
    EXIT_OK,
    echo_json,
    exit_with_report,
    fail,
    say,
    target_names,
    targets_option,
    with_option,
    workers_options,
)
from skelprep._util import printable


def _reader_gone() -> None:
    """stdout's reader closed the pipe (``skelprep verify | head -1``): exit quietly, as ``cat`` does.

    Later writes (the interpreter's flush at exit) go to /dev/null instead of raising again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (a test runner's buffer)
        pass
    sys.exit(EXIT_FAILED)


class _Cli(click.Group):
    """Turns exceptions into one-line messages unless --debug is given."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("interrupted; cases already written are kept, rerun to finish", 130)
        except BrokenPipeError:
            _reader_gone()
        except Exception as exc:
            if ctx.meta.get("skelprep.debug"):
                raise
            from skelprep.build import BuildError
            from skelprep.io import InputError
            from skelprep.layout import LayoutError
            from skelprep.store import StoreError

            if isinstance(exc, (BuildError, InputError, LayoutError, StoreError)):
                fail(with_option(exc))
            from skelprep._util import first_line

            fail(f"{first_line(exc, with_type=True)} (run 'skelprep --debug ...' for details)")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="skelprep")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Precompute Skeleton Recall targets (tubed skeletons) as Zarr sidecars."""
    ctx.meta["skelprep.debug"] = debug


class _DatasetPath(click.ParamType):
    """A dataset folder: a local path (a ``Path``, checked as before) or a URL, kept as a string."""

    name = "path or URL"
    _local = click.Path(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "://" in value:
            return value
        return self._local.convert(value, param, ctx)


def _set_storage_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    from skelprep._fs import parse_storage_option, set_storage_options

    try:
        set_storage_options(dict(parse_storage_option(v) for v in values))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


_storage_option = click.option(
    "--storage-option",
    multiple=True,
    metavar="KEY=VALUE",
    expose_value=False,
    callback=_set_storage_options,
    help="fsspec storage option for URLs of dataset and store (e.g. endpoint_url=http://host:9000); "
    "repeatable. Credentials also come from the usual environment (AWS_ENDPOINT_URL, AWS_PROFILE, ...).",
)


@cli.command()
@click.argument("dataset", type=_DatasetPath())
@click.option("--out", help="Store path or URL [default: DATASET/skeletons.zarr].")
@_storage_option
@workers_options
@click.option(
    "--cluster",
    type=click.Choice(["slurm", "pbs", "sge", "lsf"]),
    help="Run the build on worker jobs of this batch queue (dask-jobqueue, configured by jobqueue.<name> in "
    "~/.config/dask/jobqueue.yaml); --workers N submits N jobs [default: 1]. The jobs are cancelled at the end.",
)
@click.option(
    "--start-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="With --cluster: how long to wait for the first job to start.",
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Build only shard I of N (0 <= I < N): the cases whose id hashes to I, for one task of a job "
    "array (--shard $SLURM_ARRAY_TASK_ID/N). Shards of one store run side by side; the last one to finish "
    "completes the store's root metadata.",
)
@click.option("--mode", type=click.Choice(["joint", "per-class"]), default="joint", show_default=True)
@click.option(
    "--radius", type=click.IntRange(min=0), default=2, show_default=True, help="L1 radius of the tube."
)
@click.option("--ignore-label", type=click.IntRange(min=1), help="Label excluded from skeletons and tubes.")
@click.option(
    "--slice-axis", type=click.IntRange(0, 2), help="Per-slice 2D skeletons along this axis (3D data)."
)
@click.option("--masks", metavar="GLOB", help="Mask files, relative to DATASET (** allowed).")
@click.option("--images", metavar="GLOB", help="Image files, matched to masks by case id.")
@click.option(
    "--with-images",
    is_flag=True,
    help="Also store each case's image and label beside the targets, with intensity statistics and sampling "
    "locations, so training streams patches from the store alone. Sticky: a store with "
    "images keeps them in later builds.",
)
@click.option("--force", is_flag=True, help="Rebuild every case.")
@click.option("--prune", is_flag=True, help="Delete stored cases whose mask is gone.")
@click.option(
    "--repair",
    is_flag=True,
    help="Also read every up-to-date case and rebuild those whose data fail their checksums (what verify calls corrupt).",
)
@click.option(
    "--memory-limit",
    metavar="SIZE",
    help="Per-worker memory limit, e.g. 4GB; a case that exceeds it fails alone, the others are built.",
)
@click.option(
    "--absolute-paths",
    is_flag=True,
    help="Record the dataset and the files of the cases built as absolute paths [default: relative to the "
    "dataset, so a shared store tells nothing of this machine's folders]. Up-to-date cases keep theirs "
    "(--force rewrites them).",
)
@click.option(
    "--patch-size",
    metavar="N[,N...]",
    help="The patch a training reads, voxels per axis (e.g. 128,128,128 or 512,512): the cases written are "
    "chunked for it [default: 128³ in 3D, 512² in 2D].",
)
@targets_option
@click.option(
    "--classes",
    metavar="C[,C...]",
    help="The classes of the sdf target, one channel each in every case (e.g. 1,2,3) [default: the labels of "
    "the dataset.json, else 1.. each case's highest label]. Sticky: later builds keep the store's.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def build(
    ctx: click.Context,
    dataset: Path,
    out: str | None,
    workers: int | None,
    scheduler: str | None,
    cluster: str | None,
    start_timeout: float,
    shard: str | None,
    mode: str,
    radius: int,
    ignore_label: int | None,
    slice_axis: int | None,
    masks: str | None,
    images: str | None,
    with_images: bool,
    force: bool,
    prune: bool,
    repair: bool,
    memory_limit: str | None,
    absolute_paths: bool,
    patch_size: str | None,
    targets: str,
    classes: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Compute tubed skeletons for every mask of DATASET and store them as Zarr.

    Cases that cannot be built (unreadable or invalid masks, images of another
    shape, ...) are listed as 'failed: <file>: <reason>' on stderr while the
    others are built; the exit code is then 1. A second build on the same store
    refuses while one runs. Inputs are only read.
    """
    from skelprep.build import BuildParams
    from skelprep.build import build as run_build

    names = target_names(targets)

    if workers is not None and scheduler is not None:
        raise click.UsageError("--workers and --scheduler exclude each other")
    if memory_limit is not None and scheduler is not None:
        raise click.UsageError(
            "--memory-limit and --scheduler exclude each other (limit the cluster's workers)"
        )
    if cluster is not None and scheduler is not None:
        raise click.UsageError("--cluster and --scheduler exclude each other")
    if cluster is not None and memory_limit is not None:
        raise click.UsageError(
            f"--memory-limit and --cluster exclude each other (set jobqueue.{cluster}.memory instead)"
        )
    patch = None if patch_size is None else _int_list(patch_size, "--patch-size")
    shard_of = _parse_shard(shard, prune)
    sdf_classes = None if classes is None else _int_list(classes, "--classes")
    with contextlib.ExitStack() as stack:
        if cluster is not None:
            from skelprep.cluster import jobqueue_cluster

            scheduler = stack.enter_context(
                jobqueue_cluster(cluster, workers or 1, start_timeout=start_timeout)
            )
            workers = None
        report = run_build(
            dataset,
            out,
            params=BuildParams(radius=radius, mode=mode, ignore_label=ignore_label, slice_axis=slice_axis),
            workers=workers,
            scheduler=scheduler,
            force=force,
            shard=shard_of,
            prune=prune,
            masks=masks,
            images=images,
            memory_limit=memory_limit,
            progress=not no_progress and not as_json,
            repair=repair,
            with_images=with_images,
            absolute_paths=absolute_paths,
            patch_size=patch,
            targets=names,
            classes=sdf_classes,
        )
    exit_with_report(ctx, report, as_json)


def _int_list(text: str, option: str) -> tuple[int, ...]:
    """``"1,2,3"`` as (1, 2, 3); a usage error for anything else."""
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is no list of integers", param_hint=option) from None


def _parse_shard(text: str | None, prune: bool) -> tuple[int, int] | None:
    """``"I/N"`` as (I, N); a usage error for anything else, and for --prune (it would reach other shards)."""
    if text is None:
        return None
    from skelprep.shard import parse_shard

    try:
        shard = parse_shard(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None
    if prune:
        raise click.UsageError(
            "--prune deletes stored cases of every shard; run 'skelprep build --prune' (no --shard) once "
            "the shards are done"
        )
    return shard


@cli.command()
@click.argument("store")
@_storage_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(store: str, as_json: bool) -> None:
    """Show the cases, parameters and label counts of a built STORE (or of DATASET/skeletons.zarr)."""
    from skelprep.store import StoreError, default_store_path, open_store

    try:
        opened = open_store(store)
    except StoreError:
        # A dataset folder names its default store: show that one.
        default = default_store_path(store)
        if "://" in store or not Path(default).is_dir():
            raise
        click.echo(f"note: {store} is no store; showing its default store {default}", err=True)
        store, opened = default, open_store(default)
    cases = {}
    for case_id in opened.case_ids:
        meta = opened.case_attrs(case_id) or {}
        cases[case_id] = {
            k: meta.get(k)
            for k in ("shape", "dtype", "spacing", "axes", "label_counts", "fallback_components", "source")
        }
        images = meta.get("images") or {}
        cases[case_id]["images"] = (
            {
                "channels": len(images.get("channels", [])),
                "dtype": images.get("dtype"),
                "sources": images.get("sources"),
            }
            if images
            else None
        )
    incomplete = opened.incomplete_case_ids
    if as_json:
        echo_json(
            {
                "store": store,
                "dataset_path": opened.dataset_path,
                "attrs": opened.attrs,
                "cases": cases,
                "incomplete": incomplete,
            }
        )
        return
    attrs = opened.attrs
    say(f"store     {store}")
    click.echo(
        f"format    {attrs.get('format_version')}   built by skelprep {attrs.get('versions', {}).get('skelprep')}"
    )
    dataset = opened.dataset_path or f"{attrs.get('dataset_name') or '?'} (its location is not recorded)"
    say(f"dataset   {dataset} ({attrs.get('layout')})")
    click.echo("params    " + ", ".join(f"{k}={v}" for k, v in (attrs.get("params") or {}).items()))
    click.echo(f"cases     {len(cases)} complete, {len(incomplete)} incomplete")
    if (shards := _shards_line(attrs, store)) is not None:
        click.echo(f"shards    {shards}")
    with_images = sum(1 for meta in cases.values() if meta["images"])
    if attrs.get("layout") == "nnunet-preprocessed":  # skelprep nnunet build: targets only, by design
        advice = " (an nnU-Net sidecar: the trainer reads images from nnU-Net's preprocessed folder)"
    elif with_images < len(cases):
        advice = " (add them with 'skelprep build DATASET --with-images')"
    else:
        advice = ""
    click.echo(f"images    {with_images} of {len(cases)} cases carry image and label arrays{advice}")
    width = max((len(printable(c)) for c in cases), default=4)
    click.echo(f"{'case':<{width}}  {'shape':<16} {'image':<22} {'tube voxels per class':<30} fallback")
    for case_id, meta in cases.items():
        counts = (meta.get("label_counts") or {}).get("tube", {})
        per_class = " ".join(f"{k}:{v}" for k, v in counts.items()) or "-"
        shape = "x".join(str(s) for s in meta.get("shape") or [])
        image = meta["images"]
        image_text = f"{image['channels']}x{shape} {image['dtype']}" if image else "-"
        say(
            f"{printable(case_id):<{width}}  {shape:<16} {image_text:<22} {per_class:<30} "
            f"{meta.get('fallback_components', 0)}"
        )
    for case_id in incomplete:
        say(f"{printable(case_id):<{width}}  incomplete (rerun 'skelprep build')")


def _shards_line(attrs: dict[str, Any], store: str) -> str | None:
    """Which shards of a store built with --shard are done (and which run now); None if not sharded."""
    record = attrs.get("shards")
    if not isinstance(record, dict):
        return None
    from skelprep.shard import shards_running

    count, done = record.get("count"), record.get("done") or []
    left = [i for i in range(count or 0) if i not in done]
    text = f"{len(done)} of {count} done" + (f" (not done: {', '.join(map(str, left))})" if left else "")
    running = shards_running(store)
    if running:
        text += "; running: " + ", ".join(f"{i}/{n}" for i, n in running)
    return text


@cli.command()
@click.argument("dataset", type=_DatasetPath())
@click.option("--out", help="Store path or URL [default: DATASET/skeletons.zarr].")
@_storage_option
@click.option("--masks", metavar="GLOB")
@click.option("--images", metavar="GLOB")
@click.option("--no-data", is_flag=True, help="Skip reading the stored arrays (no corruption check).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def verify(
    dataset: Path, out: str | None, masks: str | None, images: str | None, no_data: bool, as_json: bool
) -> None:
    """Check that the store of DATASET is complete, current and intact (exit 1 if not).

    States: missing, incomplete, stale (mask changed), params-changed (rebuild
    with 'skelprep build'); corrupt (chunks altered or removed, an array or its
    metadata gone: 'skelprep build --repair'); corrupt-root (the store's root
    metadata, rebuilt from the cases by 'skelprep build --repair'); orphan (mask
    gone: 'skelprep build --prune'); failed-input (fix the file).
    """
    from skelprep.shard import shards_running
    from skelprep.store import StoreError, default_store_path, open_store
    from skelprep.store.lock import store_is_busy
    from skelprep.verify import verify as run_verify

    store_path = out or default_store_path(dataset)
    if store_is_busy(store_path) or shards_running(store_path):
        click.echo(
            "note: a build is running on this store; the cases it is writing show as missing or incomplete",
            err=True,
        )
    checks = run_verify(dataset, out, masks=masks, images=images, check_data=not no_data)
    try:
        shards = _shards_line(open_store(store_path).attrs, store_path)
    except StoreError:  # no store or a damaged root: the checks say so
        shards = None
    bad = [c for c in checks if c.state != "ok"]
    if as_json:
        echo_json(
            {
                "ok": not bad,
                "cases": {c.case_id: {"state": c.state, "reason": c.reason} for c in checks},
                "shards": shards,
            }
        )
    else:
        if shards is not None:
            click.echo(f"shards: {shards}")
        for check in bad:
            say(f"{check.state:<15} {check.case_id}: {check.reason}")
        click.echo(f"{len(checks) - len(bad)} ok, {len(bad)} with problems")
        states = {c.state for c in bad}
        target = shlex.quote(str(dataset)) + (f" --out {shlex.quote(out)}" if out else "")
        if states & {"missing", "incomplete", "stale", "params-changed"}:
            click.echo(f"to fix: 'skelprep build {target}' builds what is missing or out of date")
        if "corrupt" in states:
            click.echo(f"to fix: 'skelprep build {target} --repair' rebuilds the corrupt cases")
        if "corrupt-root" in states:
            click.echo(
                f"to fix: 'skelprep build {target} --repair' rebuilds the root metadata from the cases "
                "(and the corrupt cases)"
            )
        if "orphan" in states:
            click.echo(f"to fix: 'skelprep build {target} --prune' deletes the orphans")
    sys.exit(EXIT_FAILED if bad else EXIT_OK)


@cli.command()
@click.argument("store")
@click.argument("case")
@_storage_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write [default: CASE.png in the current folder, '/' in CASE as '_'].",
)
@click.option(
    "--axis", type=click.IntRange(0, 2), default=0, show_default=True, help="3D: projection and slice axis."
)
@click.option(
    "--slice",
    "slice_index",
    type=click.IntRange(min=0),
    help="3D: the slice along --axis shown beside the projection [default: the middle one].",
)
def preview(store: str, case: str, output: Path | None, axis: int, slice_index: int | None) -> None:
    """Write a PNG of CASE: the image (stores built --with-images) under the mask tinted per class, the tube
    in class colours, the thin skeleton in white, and a legend with the class names.

    3D cases show the maximum projection along --axis beside one slice normal to it.
    """
    import numpy as np
    from PIL import Image

    from skelprep.io import InputError, read_mask
    from skelprep.preview import render_preview, with_legend
    from skelprep.store import open_store

    opened = open_store(store)
    if case not in opened:
        known = ", ".join(opened.case_ids[:5]) + (" ..." if len(opened) > 5 else "")
        fail(f"{store}: no complete case '{case}' (cases: {known or 'none'})")
    targets = opened[case]
    tube, thin = targets.tube[...], targets.thin[...]
    image = targets.image[...] if targets.image is not None else None
    mask = targets.label[...] if targets.label is not None else None
    if mask is None:
        mask_path = opened.source_path(case)
        if mask_path is None:
            say(
                f"note: the store does not say where the mask {targets.attrs.get('source')!r} lies; "
                "showing the skeleton only",
                err=True,
            )
        else:
            try:
                mask = read_mask(mask_path).array
            except InputError:
                say(f"note: mask {mask_path} not readable; showing the skeleton only", err=True)
    if mask is not None and mask.shape != tube.shape:
        say(f"note: mask shape {mask.shape} differs from the stored {tube.shape}; not shown", err=True)
        mask = None
    if tube.ndim == 3:
        if slice_index is None:
            slice_index = tube.shape[axis] // 2
        elif slice_index >= tube.shape[axis]:
            raise click.BadParameter(
                f"{slice_index} is outside 0..{tube.shape[axis] - 1} along axis {axis}", param_hint="--slice"
            )
        views = [
            render_preview(tube, thin, mask, image=image, axis=axis, slice_index=s)
            for s in (None, slice_index)
        ]
        # small cases are enlarged, pixels kept square and sharp
        scale = max(1, 384 // max(views[0].shape[:2]))
        views = [np.repeat(np.repeat(v, scale, axis=0), scale, axis=1) for v in views]
        gap = np.full((views[0].shape[0], 4, 3), 255, np.uint8)
        picture = np.concatenate([views[0], gap, views[1]], axis=1)
        title = f"left: maximum projection along axis {axis} (skeleton only); right: slice {slice_index}"
    else:
        picture = render_preview(tube, thin, mask, image=image)
        scale = max(1, 512 // max(picture.shape[:2]))
        picture = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
        title = ""
    labels = sorted(
        {int(v) for v in np.unique(tube) if v > 0}
        | ({int(v) for v in np.unique(mask) if v > 0} if mask is not None else set())
    )
    names = {int(k): v for k, v in (opened.attrs.get("label_names") or {}).items() if str(k).isdigit()}
    picture = with_legend(picture, labels, names, title)
    if output is None:
        output = Path(case.replace("/", "_") + ".png")
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(output)
    click.echo(f"wrote {output}")


# --- skelprep eval -------------------------------------------------------------------------------
@cli.command("eval")
@click.argument("pred_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("gt_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--store", help="Store of the ground truth [default: the label folder's ../skeletons.zarr if present]."
)
@_storage_option
@click.option("--classes", help="Comma-separated classes to score in every case [default: those present].")
@click.option(
    "--skeleton",
    "skeleton_method",
    type=click.Choice(["skelprep", "skimage"]),
    default="skelprep",
    show_default=True,
    help="skelprep: every component keeps a skeleton (fallback where Lee deletes one); skimage: plain "
    "scikit-image skeletonize, as challenge scorers use it (leaderboard-comparable).",
)
@click.option(
    "--keep-singleton-axes",
    is_flag=True,
    help="Score one-slice NIfTI masks (X, Y, 1) as 3D, thinned with Lee as 3D scorers do [default: squeezed "
    "to 2D, thinned with Zhang, as skelprep builds them].",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON."
)
def eval_(
    pred_dir: Path,
    gt_dir: Path,
    store: str | None,
    classes: str | None,
    skeleton_method: str,
    keep_singleton_axes: bool,
    json_path: Path | None,
) -> None:
    """Score the label maps of PRED_DIR against GT_DIR: Dice, clDice, Betti errors (exit 1 if a case failed).

    GT_DIR is a folder of label maps or a dataset folder as 'skelprep build' takes it (nnU-Net raw with
    labelsTr/, or labels/): then its label folder is the ground truth.

    Reports per case the class mean and the merged binary values (all labels >= 1 as one foreground), and
    per class the mean over the cases that have it. A class absent from both masks, and a blank case (no
    foreground in either), score as perfect and are counted; --json states these conventions.
    """
    from skelprep.evaluate import evaluate_folders
    from skelprep.metrics import METRIC_NAMES

    try:
        wanted = None if classes is None else [int(c) for c in classes.split(",") if c.strip()]
    except ValueError:
        wanted = []
    if wanted is not None and (not wanted or min(wanted) < 1):
        raise click.BadParameter(f"expected labels >= 1 like 1,2, got {classes!r}", param_hint="--classes")
    report = evaluate_folders(
        pred_dir,
        gt_dir,
        store=store,
        classes=wanted,
        skeleton_method=skeleton_method,
        keep_singleton_axes=keep_singleton_axes,
    )
    heads = ("dice", "clDice", "Tprec", "Tsens", "b0 err", "b1 err")
    width = max([len(printable(c.case_id)) for c in report.cases] + [len("merged binary"), 9])

    def row(name: str, values: dict[str, float], note: str = "") -> None:
        # Ratios in [0, 1] with 4 decimals; Betti errors are counts (means of counts: 2 decimals).
        cells = " ".join(
            f"{values.get(k, float('nan')):>8.{2 if k.startswith('betti') else 4}f}" for k in METRIC_NAMES
        )
        say(f"{printable(name):<{width}}  {cells}  {note}".rstrip())

    def table(title: str, key: str, mean: dict[str, float]) -> None:
        # The last column says where the ground-truth skeleton came from and which conventions applied.
        notes = "gt skeleton; notes" if key == "mean" else "notes"
        click.echo(f"{title:<{width}}  " + " ".join(f"{h:>8}" for h in heads) + f"  {notes}")
        for case in report.cases:
            notes = [case.gt_skeleton] if key == "mean" else []
            notes += ["blank"] if case.scores["blank"] else []
            empty = case.scores["empty_classes"]
            notes += [f"empty classes {','.join(map(str, empty))}"] if empty and key == "mean" else []
            row(case.case_id, case.scores[key], "; ".join(notes))
        row("mean", mean)

    if report.cases:
        table("class mean", "mean", report.mean)
        click.echo()
        table("merged binary", "binary", report.binary_mean)
        click.echo()
        click.echo(f"{'per class':<{width}}  " + " ".join(f"{h:>8}" for h in heads) + "  cases")
        for c, values in report.class_mean.items():
            row(f"class {c}", values, str(report.class_cases[c]))
    counts = report.counts()
    # Thinning follows each scored case's dimensionality: Zhang for 2D, Lee for 3D.
    dims = [len(c.shape) for c in report.cases]
    thinning = ", ".join(
        f"{name} for {n}D ({dims.count(n)} case{'s' if dims.count(n) != 1 else ''})"
        for n, name in ((2, "Zhang"), (3, "Lee"))
        if n in dims
    )
    click.echo(
        f"{counts['scored']} scored, {counts['failed']} failed; {counts['blank_cases']} blank case(s) and "
        f"{counts['empty_class_scores']} empty class score(s) counted as perfect; skeleton {skeleton_method}"
        + (f": {thinning}" if thinning else "")
        + f"; one-slice NIfTI {'kept 3D' if keep_singleton_axes else 'squeezed to 2D'}"
    )
    for reason in report.failed.values():
        say(f"failed: {reason}", err=True)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {json_path}")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


# --- end of skelprep eval -----------------------------------------------------------------------


# --- skelprep nnunet: the group imports click only; nnunetv2 is imported when a command runs.
from skelprep.nnunet.cli import nnunet as _nnunet  # noqa: E402

cli.add_command(_nnunet)


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="skelprep")
    except BrokenPipeError:  # raised outside a command (click's own output)
        _reader_gone()
    finally:
        # The interpreter's exit collects garbage over every object still alive: 0.26 s once
        # numba's kernels are loaded (a quarter of a 14-mask build). Frozen objects are skipped;
        # atexit handlers and stream flushes still run.
        gc.freeze()


if __name__ == "__main__":
    main()
