"""Find nnU-Net's preprocessed data of a dataset and configuration exactly as nnU-Net does, and read it.

``nnUNetv2_train DATASET CONFIG FOLD`` resolves ``DATASET`` (an id such as ``9`` or a name such as
``Dataset009_Vessels``) with ``maybe_convert_to_dataset_name`` over ``nnUNet_raw``, ``nnUNet_preprocessed``
and ``nnUNet_results``, loads ``$nnUNet_preprocessed/<name>/<plans>.json`` into a ``PlansManager`` and
reads the cases of ``<name>/<data_identifier>/``. :func:`locate` does the same with nnU-Net's own helpers,
so the sidecar lands next to what the trainer reads. Every problem raises :class:`NnUNetError` with one
line saying what to run.

The sidecar store lives outside the folder nnU-Net owns: ``$nnUNet_preprocessed/<name>/skelprep/
<data_identifier>/``. Inside ``<data_identifier>/`` any extra ``.b2nd``/``.npz`` file would be taken for a
case, and re-running preprocessing deletes that folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NnUNetError",
    "PreprocessedConfiguration",
    "locate",
    "read_seg",
    "SIDECAR_DIR",
    "DEFAULT_PLANS",
]

SIDECAR_DIR = "skelprep"
DEFAULT_PLANS = "nnUNetPlans"


class NnUNetError(RuntimeError):
    """nnU-Net's data cannot be used as asked (environment, dataset, plans, configuration); one line."""


@dataclass(frozen=True)
class PreprocessedConfiguration:
    """One preprocessed configuration of one dataset, as nnU-Net's trainer sees it.

    Attributes
    ----------
    dataset_name : str
        ``DatasetXXX_Name``.
    configuration : str
        ``2d``, ``3d_fullres``, ...
    plans_identifier : str
        ``nnUNetPlans`` unless other plans were made.
    dataset_folder : Path
        ``$nnUNet_preprocessed/<dataset_name>``.
    data_identifier : str
        The configuration's folder name (``plans["configurations"][c]["data_identifier"]``).
    two_d : bool
        The configuration's patches are 2D (slices along axis 0 of the preprocessed arrays).
    spacing : tuple of float
        The configuration's target spacing, in the preprocessed axis order.
    ignore_label : int or None
        From ``dataset.json`` (nnU-Net's label manager).
    foreground_labels : tuple of int
        The labels of ``dataset.json`` but background and the ignore label (nnU-Net's label manager).
    has_regions : bool
        Region-based training (``dataset.json`` labels given as tuples).
    is_cascaded : bool
        The configuration is the second stage of a cascade.
    file_ending : str
        ``b2nd`` (nnU-Net >= 2.6) or ``npz`` (older preprocessing), as nnU-Net infers it.
    """

    dataset_name: str
    configuration: str
    plans_identifier: str
    dataset_folder: Path
    data_identifier: str
    two_d: bool
    spacing: tuple[float, ...]
    ignore_label: int | None
    foreground_labels: tuple[int, ...]
    has_regions: bool
    is_cascaded: bool
    file_ending: str

    @property
    def case_folder(self) -> Path:
        """``<dataset_folder>/<data_identifier>``: the folder nnU-Net reads and owns."""
        return self.dataset_folder / self.data_identifier

    @property
    def sidecar(self) -> Path:
        """The skelprep store for this configuration, beside nnU-Net's folders."""
        return self.dataset_folder / SIDECAR_DIR / self.data_identifier

    def seg_file(self, case_id: str) -> Path:
        """The file that holds a case's preprocessed segmentation (and whose SHA-256 is its fingerprint)."""
        name = f"{case_id}_seg.b2nd" if self.file_ending == "b2nd" else f"{case_id}.npz"
        return self.case_folder / name

    def case_ids(self) -> list[str]:
        """The case identifiers nnU-Net finds in the folder, sorted."""
        from nnunetv2.training.dataloading.nnunet_dataset import file_ending_dataset_mapping

        return sorted(
            file_ending_dataset_mapping[self.file_ending].get_identifiers(os.fspath(self.case_folder))
        )

    def build_command(self, targets: Sequence[str] = ()) -> str:
        """The ``skelprep nnunet build`` command line that builds this configuration's sidecar, with the
        ``targets`` beside the tube and thin skeleton (``--targets``) where any are named."""
        plans = "" if self.plans_identifier == DEFAULT_PLANS else f" -p {self.plans_identifier}"
        extra = [n for n in targets if n not in ("tube", "thin")]
        wanted = f" --targets {','.join(['tube', 'thin', *extra])}" if extra else ""
        return f"skelprep nnunet build {self.dataset_name} -c {self.configuration}{plans}{wanted}"


def _preprocessed_root() -> Path:
    from nnunetv2.paths import nnUNet_preprocessed

    if not nnUNet_preprocessed.is_set():
        raise NnUNetError(
            "nnUNet_preprocessed is not set; export it as for nnU-Net (the folder nnUNetv2_plan_and_preprocess wrote)"
        )
    root = Path(nnUNet_preprocessed.get())
    if not root.is_dir():
        raise NnUNetError(f"nnUNet_preprocessed={root}: no such folder")
    return root


def _dataset_name(dataset: str | int) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return str(maybe_convert_to_dataset_name(dataset))  # numpy's str_ for ids
    except ValueError:
        raise NnUNetError(
            f"dataset {dataset!r}: expected an id (e.g. 9) or a name like Dataset009_Name"
        ) from None
    except RuntimeError as exc:  # nnU-Net's message spans lines; keep its first sentence
        first = str(exc).strip().splitlines()[0].split(". ")[0]
        where = ", ".join(f"{v}={os.environ.get(v)}" for v in ("nnUNet_preprocessed", "nnUNet_raw"))
        raise NnUNetError(f"dataset {dataset!r}: {first} ({where})") from None


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NnUNetError(f"{path}: no {what}; run nnUNetv2_plan_and_preprocess first") from None
    except (OSError, ValueError) as exc:
        raise NnUNetError(f"{path}: cannot read {what} ({exc})") from None


def _file_ending(folder: Path) -> str:
    """``b2nd`` or ``npz``, decided from the top-level files as nnU-Net's ``infer_dataset_class`` does."""
    endings = {p.name.split(".")[-1] for p in folder.iterdir() if p.is_file()} - {"pkl", "npy"}
    if len(endings) != 1 or not endings <= {"b2nd", "npz"}:
        found = ", ".join(sorted(endings)) or "no case files"
        raise NnUNetError(f"{folder}: not a preprocessed nnU-Net folder ({found})")
    return endings.pop()


def locate(
    dataset: str | int, configuration: str, plans_identifier: str = DEFAULT_PLANS
) -> PreprocessedConfiguration:
    """Resolve a dataset and configuration to nnU-Net's preprocessed folder, as ``nnUNetv2_train`` does.

    Parameters
    ----------
    dataset : str or int
        Dataset id (``9``, ``"9"``) or name (``"Dataset009_Vessels"``).
    configuration : str
        A configuration of the plans (``"2d"``, ``"3d_fullres"``, ...).
    plans_identifier : str
        Plans file name without ``.json``.

    Raises
    ------
    NnUNetError
        ``nnUNet_preprocessed`` unset, unknown dataset, no plans, unknown or not preprocessed configuration.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    root = _preprocessed_root()
    name = _dataset_name(dataset)
    folder = root / name
    if not folder.is_dir():
        raise NnUNetError(
            f"{folder}: dataset {name} is not preprocessed; run nnUNetv2_plan_and_preprocess first"
        )
    plans = _load_json(folder / f"{plans_identifier}.json", "plans")
    dataset_json = _load_json(folder / "dataset.json", "dataset.json")
    manager = PlansManager(plans)
    if configuration not in manager.available_configurations:
        known = ", ".join(manager.available_configurations)
        raise NnUNetError(
            f"{name}: no configuration '{configuration}' in {plans_identifier} (available: {known})"
        )
    config = manager.get_configuration(configuration)
    labels = manager.get_label_manager(dataset_json)
    case_folder = folder / config.data_identifier
    plans_flag = "" if plans_identifier == DEFAULT_PLANS else f" -plans_name {plans_identifier}"
    command = f"nnUNetv2_preprocess -d {int(name[7:10])} -c {configuration}{plans_flag}"
    if not case_folder.is_dir() or not any(case_folder.iterdir()):
        raise NnUNetError(
            f"{case_folder}: configuration '{configuration}' is not preprocessed; run {command}"
        )
    return PreprocessedConfiguration(
        dataset_name=name,
        configuration=configuration,
        plans_identifier=plans_identifier,
        dataset_folder=folder,
        data_identifier=config.data_identifier,
        two_d=len(config.patch_size) == 2,
        spacing=tuple(float(s) for s in config.spacing),
        ignore_label=labels.ignore_label,
        foreground_labels=tuple(int(v) for v in labels.foreground_labels),
        has_regions=labels.has_regions,
        is_cascaded=config.previous_stage_name is not None,
        file_ending=_file_ending(case_folder),
    )


def read_seg(path: str | os.PathLike) -> np.ndarray:
    """A preprocessed segmentation, ``(1, *spatial)`` int16, from ``<id>_seg.b2nd`` or ``<id>.npz``.

    Raises
    ------
    skelprep.io.InputError
        The file is missing or unreadable.
    """
    from skelprep.io import InputError

    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path) as npz:
                return np.asarray(npz["seg"])
        import blosc2

        return np.asarray(blosc2.open(urlpath=os.fspath(path), mode="r")[:])
    except FileNotFoundError:
        raise InputError(path, "not found (was the configuration preprocessed again?)") from None
    except Exception as exc:  # blosc2 and numpy raise many types for a damaged file
        lines = str(exc).strip().splitlines()
        raise InputError(path, f"cannot read ({type(exc).__name__}: {lines[0] if lines else ''})") from None
