"""``skelprep nnunet ...``: build the sidecar of a preprocessed configuration; show the trainer folder.

This module imports click only: ``skelprep --help`` lists the group without importing nnU-Net, and each
command imports nnunetv2 when it runs (one line naming what to install if it is missing).
"""

from __future__ import annotations

from pathlib import Path

import click

from skelprep._output import exit_with_report, fail, target_names, targets_option, workers_options

INSTALL_HINT = (
    "the nnU-Net commands need nnunetv2 >= 2.8 and blosc2 (skelprep's nnunet extra): "
    "pip install 'nnunetv2>=2.8' blosc2"
)
# nnUNet_extTrainer (trainers outside the nnunetv2 package) first shipped in nnunetv2 2.8.0.
MIN_NNUNET = (2, 8)


def _nnunet_version() -> tuple[int, ...] | None:
    from importlib import metadata  # a slow import: not for every skelprep command

    try:
        version = metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _require_nnunet() -> None:
    """Exit with one line naming the extra unless nnunetv2 (>= 2.8) and blosc2 import."""
    try:
        import blosc2  # noqa: F401
        import nnunetv2  # noqa: F401
    except ImportError as exc:
        fail(f"{INSTALL_HINT} ({exc})")
    version = _nnunet_version()
    if version is not None and version < MIN_NNUNET:
        fail(f"{INSTALL_HINT} (found nnunetv2 {'.'.join(map(str, version))})")


@click.group("nnunet")
def nnunet() -> None:
    """nnU-Net v2: Skeleton Recall targets for preprocessed data, and the nnUNetTrainerSkeletonRecall trainer.

    \b
    nnUNetv2_plan_and_preprocess -d 9 -c 2d 3d_fullres
    skelprep nnunet build 9 -c 3d_fullres
    export nnUNet_extTrainer=$(skelprep nnunet trainer-dir)
    nnUNetv2_train 9 3d_fullres 0 -tr nnUNetTrainerSkeletonRecall
    """


@nnunet.command("build")
@click.argument("dataset")
@click.option("-c", "--configuration", required=True, help="nnU-Net configuration (2d, 3d_fullres, ...).")
@click.option(
    "-p", "--plans", "plans_identifier", default="nnUNetPlans", show_default=True, help="Plans name."
)
@workers_options
@click.option("--memory-limit", metavar="SIZE", help="Per-worker memory limit, e.g. 4GB.")
@click.option("--force", is_flag=True, help="Rebuild every case.")
@targets_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def build(
    ctx: click.Context,
    dataset: str,
    configuration: str,
    plans_identifier: str,
    workers: int | None,
    scheduler: str | None,
    memory_limit: str | None,
    force: bool,
    targets: str,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Precompute thin skeletons and tubes for every preprocessed case of DATASET (id or name).

    Reads $nnUNet_preprocessed/DatasetXXX/<data_identifier>/<id>_seg.b2nd as nnU-Net finds it and writes
    $nnUNet_preprocessed/DatasetXXX/skelprep/<data_identifier>/ (outside the folder nnU-Net owns). Cases
    whose preprocessed segmentation and parameters are unchanged are skipped; a failed case is listed as
    'failed: <file>: <reason>' and the others are built (exit code 1). The targets beside the tube are those
    of 'skelprep build --targets', on the preprocessed seg with the plans' spacing (2D configurations: per
    slice).
    """
    names = target_names(targets)
    if workers is not None and scheduler is not None:
        raise click.UsageError("--workers and --scheduler exclude each other")
    if memory_limit is not None and scheduler is not None:
        raise click.UsageError(
            "--memory-limit and --scheduler exclude each other (limit the cluster's workers)"
        )
    _require_nnunet()
    from skelprep.nnunet.preprocessed import NnUNetError
    from skelprep.nnunet.sidecar import build_sidecar

    try:
        report = build_sidecar(
            dataset,
            configuration,
            plans_identifier=plans_identifier,
            workers=workers,
            scheduler=scheduler,
            memory_limit=memory_limit,
            force=force,
            targets=names,
            progress=not no_progress and not as_json,
        )
    except NnUNetError as exc:
        fail(str(exc))
    exit_with_report(ctx, report, as_json)


@nnunet.command("trainer-dir")
def trainer_dir() -> None:
    """Print the folder to put in nnUNet_extTrainer (the only line on stdout).

    \b
    export nnUNet_extTrainer=$(skelprep nnunet trainer-dir)
    nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerSkeletonRecall
    """
    _require_nnunet()
    import skelprep.nnunet.trainers as trainers

    click.echo(Path(trainers.__file__).resolve().parent)
