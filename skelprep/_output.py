"""What the command line prints: one escaped line per message, the build summary, and the exit codes;
and the ``--targets`` option that both builds take.

Shared by ``skelprep`` and ``skelprep nnunet``; imports click only.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from skelprep._util import printable

EXIT_OK, EXIT_FAILED = 0, 1


def say(text: str, err: bool = False) -> None:
    """One line of output: control characters in file names and case ids are escaped, never printed raw."""
    click.echo(printable(text), err=err)


def fail(message: str, code: int = EXIT_FAILED) -> None:
    say(f"skelprep: error: {message}", err=True)
    sys.exit(code)


def workers_options(command: Any) -> Any:
    """The ``--workers N`` and ``--scheduler ADDRESS`` options of ``skelprep build`` and ``skelprep nnunet build``."""
    command = click.option(
        "--scheduler", metavar="ADDRESS", help="Use a running Dask scheduler (e.g. tcp://host:8786)."
    )(command)
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        help="Local workers [default: CPU count]: threads of this process, or with --memory-limit Dask worker "
        "processes. With 1 (or one case to build) the cases run one after another.",
    )(command)


def targets_option(command: Any) -> Any:
    """The ``--targets NAME[,NAME...]`` option of ``skelprep build`` and ``skelprep nnunet build``."""
    return click.option(
        "--targets",
        metavar="NAME[,NAME...]",
        default="tube,thin",
        show_default=True,
        help="The targets to store: tube and thin always, and any of sdf (signed distance per class), radius "
        "(distance to the background along the thin skeleton), components (connected components). Sticky: "
        "a store keeps its targets in later builds; adding one to a built store computes only that one.",
    )(command)


def with_option(exc: Exception) -> str:
    """The error's one line; where the library names the parameter that would fix it, our option for it."""
    param = getattr(exc, "param", None)
    return str(exc) if param is None else f"{exc} (option --{param.replace('_', '-')})"


def target_names(text: str) -> list[str]:
    """The names of a ``--targets`` value; a name that is no target exits 2 (a usage error) with one line."""
    from skelprep.build import BuildError, extra_target_names

    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        extra_target_names(names)
    except BuildError as exc:
        fail(with_option(exc), 2)  # bad usage: the exit code of click's own usage errors
    return names


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def exit_with_report(ctx: click.Context, report: Any, as_json: bool) -> None:
    """Print a build report (summary on stdout, one line per failed case or skipped file on stderr).

    Exits 0 or 1; skipped files (not masks) do not fail the build.
    """
    if as_json:
        echo_json(report.as_dict())
    else:
        fallback = sum(o.fallback_components for o in report.built)
        skipped = f", {len(report.skipped)} skipped" if report.skipped else ""
        say(
            f"{len(report.built)} built, {len(report.up_to_date)} up to date, {len(report.failed)} failed"
            f"{skipped} in {report.seconds:.1f} s -> {report.store}"
        )
        if fallback:
            click.echo(f"{fallback} component(s) needed the empty-skeleton fallback")
        if report.pruned:
            say(f"pruned {len(report.pruned)}: {', '.join(report.pruned)}")
        for path, reason in report.skipped.items():
            say(f"skipped: {path}: {reason}", err=True)
        for outcome in report.failed:
            say(f"failed: {outcome.reason}", err=True)
            if ctx.meta.get("skelprep.debug") and outcome.detail:
                click.echo(outcome.detail, err=True)
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
