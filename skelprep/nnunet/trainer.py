"""``nnUNetTrainerSkeletonRecall``: nnU-Net's trainer plus Skeleton Recall on precomputed tubes.

How the tube reaches the loss (nnU-Net 2.8, batchgeneratorsv2 0.3):

1. :class:`TubeDataset` wraps nnU-Net's dataset and returns each case's tube (a lazy zarr array of the
   sidecar, shape of the preprocessed seg without its channel) in the slot of the cascade's previous-stage
   segmentation. nnU-Net's ``nnUNetDataLoader`` crops it with the same bounding box as image and seg,
   casts it to int16, pads it with -1 and appends it as seg channel 1. Only the patch's chunks are read.
   Another stored target may ride in the slot instead (``TubeDataset(..., name="thin")``; the trainer's
   class attribute ``previous_stage_target``) if it survives that path: one channel of integer labels
   (:data:`SLOT_TARGETS`).
2. nnU-Net's augmentation is unchanged: the spatial transform warps both seg channels with one grid,
   mirroring flips both, ``MaskImageTransform`` reads channel 0, ``RemoveLabel(-1 -> 0)`` clears the padding
   of both. Deep-supervision downsampling is nnU-Net's for channel 0 and max-pooling for the tube
   (:mod:`skelprep.nnunet.transforms`).
3. :class:`skelprep.nnunet.loss.DiceCERecallLoss` splits the channels at every deep-supervision level:
   Dice + CE on channel 0, ``w`` · Skeleton Recall on the tube. Validation's online Dice sees channel 0 only.

The recall weight ``w`` is the class attribute ``skeleton_recall_weight`` (1.0, as in the paper), which the
environment variable ``SKELPREP_RECALL_WEIGHT`` overrides (e.g. ``SKELPREP_RECALL_WEIGHT=0.5
nnUNetv2_train ...``); subclass and set the attribute for a fixed other value.

Short runs (a smoke test, a CPU): the environment variables ``SKELPREP_NUM_EPOCHS``,
``SKELPREP_ITERATIONS_PER_EPOCH`` and ``SKELPREP_VAL_ITERATIONS_PER_EPOCH`` (integers >= 1) replace nnU-Net's
1000 epochs of 250 + 50 iterations, so ``nnUNetv2_train`` itself trains briefly::

    SKELPREP_NUM_EPOCHS=1 SKELPREP_ITERATIONS_PER_EPOCH=2 SKELPREP_VAL_ITERATIONS_PER_EPOCH=1 \
        nnUNetv2_train 9 2d all -tr nnUNetTrainerSkeletonRecall -device cpu

From Python, :func:`make_trainer` creates the trainer as ``nnUNetv2_train`` does (plans and dataset.json of
the preprocessed folder) without nnU-Net's search for the class by name; set ``num_epochs`` and
``num_iterations_per_epoch`` on it before ``run_training()``.

At the start of training the sidecar is checked against the preprocessed segmentations (SHA-256) and
parameters: a missing or stale one stops training with one line naming the ``skelprep nnunet build``
command (a :class:`~skelprep.nnunet.sidecar.SidecarError`, which ends ``nnUNetv2_train`` with that line and
exit status 1, no traceback). Region-based training and the cascade (whose previous-stage slot the tube occupies) are refused
when the trainer is created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from skelprep.nnunet.loss import DiceCERecallLoss, split_tube
from skelprep.nnunet.preprocessed import PreprocessedConfiguration, locate
from skelprep.nnunet.transforms import with_tube_downsampling

__all__ = [
    "nnUNetTrainerSkeletonRecall",
    "TubeDataset",
    "SkeletonRecallTrainerError",
    "SLOT_TARGETS",
    "check_slot_target",
    "make_trainer",
    "recall_weight",
    "training_length",
]

RECALL_WEIGHT_ENV = "SKELPREP_RECALL_WEIGHT"
# The stored targets that can ride in the previous-stage slot: nnU-Net's loader casts the slot to int16 and
# its transforms treat it as a segmentation channel (label-wise interpolation, one channel), so the slot
# keeps single-channel integer labels only (components: while their count fits in int16).
SLOT_TARGETS = ("tube", "thin", "components")
# Why the others cannot, one line each.
_NOT_IN_SLOT = {
    "sdf": "a float distance map of one channel per class, which needs linear interpolation; nnU-Net's "
    "previous-stage slot carries one channel, cast to int16 and interpolated label-wise",
    "radius": "float distances; nnU-Net's loader casts the previous-stage slot to int16, which truncates "
    "them (a skeleton voxel of radius below one spacing unit would read 0)",
}
_INT16_MAX = 32767
# trainer attribute <- environment variable: the length of a run (nnU-Net's defaults 1000, 250, 50)
LENGTH_ENV = {
    "num_epochs": "SKELPREP_NUM_EPOCHS",
    "num_iterations_per_epoch": "SKELPREP_ITERATIONS_PER_EPOCH",
    "num_val_iterations_per_epoch": "SKELPREP_VAL_ITERATIONS_PER_EPOCH",
}


class SkeletonRecallTrainerError(SystemExit):
    """The trainer cannot train this dataset/configuration as it is (one line, says what to do).

    A :class:`SystemExit`, as :class:`~skelprep.nnunet.sidecar.SidecarError`: ``nnUNetv2_train`` ends with
    the line and exit status 1, no traceback; catch it by name.
    """

    def __str__(self) -> str:
        return str(self.code)


def recall_weight(default: float) -> float:
    """``SKELPREP_RECALL_WEIGHT`` if set (a number >= 0), else ``default``."""
    raw = os.environ.get(RECALL_WEIGHT_ENV)
    if raw is None or not raw.strip():
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects NaN
        raise SkeletonRecallTrainerError(f"{RECALL_WEIGHT_ENV}={raw!r}: expected a number >= 0")
    return value


def training_length() -> dict[str, int]:
    """The run-length attributes the environment sets (see :data:`LENGTH_ENV`): integers >= 1."""
    length = {}
    for attribute, name in LENGTH_ENV.items():
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        if not raw.isdigit() or int(raw) < 1:
            raise SkeletonRecallTrainerError(f"{name}={raw!r}: expected an integer >= 1")
        length[attribute] = int(raw)
    return length


class TubeDataset:
    """An nnU-Net dataset whose cases carry a precomputed target where a cascade's previous stage would be.

    ``load_case(id)`` returns ``(data, seg, target, properties)``; ``target`` is the sidecar's zarr array
    ``name`` (default ``"tube"``; any of :data:`SLOT_TARGETS`, stored by ``skelprep nnunet build
    --targets``), opened lazily (once per process and case) and read only where the loader crops it.
    ``sdf`` and ``radius`` are refused with one line saying why (a
    :class:`SkeletonRecallTrainerError`), and so is a case with more components than int16 holds.
    """

    def __init__(self, base: Any, sidecar: str | os.PathLike, name: str = "tube") -> None:
        check_slot_target(name)
        self.base = base
        self.sidecar = os.fspath(sidecar)
        self.name = name
        self.identifiers = base.identifiers
        self._tubes: dict[str, Any] = {}
        self._store = None

    def __getstate__(self) -> dict[str, Any]:  # to data-augmentation workers: reopen the store there
        return {**self.__dict__, "_tubes": {}, "_store": None}

    def tube(self, identifier: str):
        """The case's stored target ``name`` (zarr array, the preprocessed seg's spatial shape)."""
        if identifier not in self._tubes:
            if self._store is None:
                from skelprep.store import open_store

                self._store = open_store(self.sidecar)
            case = self._store[identifier]
            if self.name == "components":
                count = ((case.attrs.get("targets") or {}).get("components") or {}).get("count", 0)
                if count > _INT16_MAX:
                    raise SkeletonRecallTrainerError(
                        f"{self.sidecar}: case '{identifier}' has {count} components, more than nnU-Net's "
                        f"int16 previous-stage slot holds ({_INT16_MAX})"
                    )
            self._tubes[identifier] = case.array(self.name)
        return self._tubes[identifier]

    def load_case(self, identifier: str):
        data, seg, seg_prev, properties = self.base.load_case(identifier)
        if seg_prev is not None:
            raise SkeletonRecallTrainerError("the cascade is not supported (its slot carries the tube)")
        return data, seg, self.tube(identifier), properties

    __getitem__ = load_case


def check_slot_target(name: str) -> None:
    """Raise :class:`SkeletonRecallTrainerError` (one line) unless target ``name`` can ride in the slot."""
    if name in SLOT_TARGETS:
        return
    if name in _NOT_IN_SLOT:
        raise SkeletonRecallTrainerError(
            f"the stored target '{name}' cannot ride in nnU-Net's previous-stage slot: {_NOT_IN_SLOT[name]}; "
            "stream it with skelprep.torch.SkeletonDataset"
        )
    raise SkeletonRecallTrainerError(
        f"unknown target {name!r} for nnU-Net's previous-stage slot; the slot takes {', '.join(SLOT_TARGETS)}"
    )


class nnUNetTrainerSkeletonRecall(nnUNetTrainer):
    """nnU-Net's default trainer with Dice + CE + ``w`` · Skeleton Recall at every deep-supervision level.

    The tube comes from the sidecar built by ``skelprep nnunet build DATASET -c CONFIG``; see the module
    docstring for the data path and ``skeleton_recall_weight`` / ``SKELPREP_RECALL_WEIGHT`` for ``w``.
    """

    skeleton_recall_weight: float = 1.0
    # The stored target in the previous-stage slot (see SLOT_TARGETS); a subclass that trains another
    # loss on another label-like target sets it (and replaces the loss).
    previous_stage_target: str = "tube"

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's signature
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        name = type(self).__name__
        if self.label_manager.has_regions:
            raise SkeletonRecallTrainerError(
                f"{name}: region-based training is not supported (dataset.json labels are regions); "
                "use integer labels"
            )
        if self.is_cascaded:
            raise SkeletonRecallTrainerError(
                f"{name}: the cascade ({configuration}, previous stage "
                f"{self.configuration_manager.previous_stage_name}) is not supported; train 3d_fullres or 2d"
            )
        check_slot_target(self.previous_stage_target)
        self.recall_weight = recall_weight(self.skeleton_recall_weight)
        self.print_to_log_file(f"Skeleton Recall weight: {self.recall_weight}")
        for attribute, value in training_length().items():
            setattr(self, attribute, value)
            self.print_to_log_file(f"{attribute}: {value} (from {LENGTH_ENV[attribute]})")

    def preprocessed_configuration(self) -> PreprocessedConfiguration:
        """This trainer's dataset and configuration, located as ``skelprep nnunet build`` locates them."""
        return locate(self.plans_manager.dataset_name, self.configuration_name, self.plans_manager.plans_name)

    def _build_loss(self):
        loss = super()._build_loss()
        wrapped = isinstance(loss, DeepSupervisionWrapper)
        combined = DiceCERecallLoss(
            loss.loss if wrapped else loss,
            self.recall_weight,
            batch_dice=self.configuration_manager.batch_dice,
            ignore_label=self.label_manager.ignore_label,
        )
        if wrapped:
            loss.loss = combined
            return loss
        return combined

    @classmethod
    def get_training_transforms(cls, *args, **kwargs):
        return with_tube_downsampling(super().get_training_transforms(*args, **kwargs))

    @classmethod
    def get_validation_transforms(cls, *args, **kwargs):
        return with_tube_downsampling(super().get_validation_transforms(*args, **kwargs))

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        sidecar = self.preprocessed_configuration().sidecar
        name = self.previous_stage_target
        return TubeDataset(dataset_tr, sidecar, name), TubeDataset(dataset_val, sidecar, name)

    def on_train_start(self):
        from skelprep.nnunet.sidecar import require_current

        require_current(self.preprocessed_configuration(), [self.previous_stage_target])
        super().on_train_start()

    @contextlib.contextmanager
    def _loss_with_target(self, target) -> Iterator[None]:
        """Within: ``self.loss(output, anything)`` evaluates the loss against ``target`` (with its tube)."""
        loss = self.loss
        self.loss = lambda output, _seg_only: loss(output, target)
        try:
            yield
        finally:
            self.loss = loss

    def validation_step(self, batch: dict) -> dict:
        # The validation loss includes the recall term; the online Dice must see the segmentation only.
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
            seg_only = [split_tube(t)[0] for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
            seg_only = split_tube(target)[0]
        with self._loss_with_target(target):
            return super().validation_step({**batch, "target": seg_only})


def make_trainer(
    dataset: str | int,
    configuration: str,
    fold: int | str = "all",
    *,
    plans_identifier: str = "nnUNetPlans",
    device: str | torch.device = "cpu",
    trainer_class: type[nnUNetTrainerSkeletonRecall] = nnUNetTrainerSkeletonRecall,
) -> nnUNetTrainerSkeletonRecall:
    """A trainer for a preprocessed dataset, created as ``nnUNetv2_train`` creates it.

    nnU-Net's ``get_trainer_from_args`` does the same after looking the class up by name, which imports
    every trainer module of nnunetv2 (some need torchvision); here the class is given. ``fold="all"``
    trains on every case (nnU-Net's 5-fold split needs at least 5). A subclass passed as ``trainer_class``
    must keep nnU-Net's ``__init__`` signature (nnU-Net records its arguments by name) or define none.

    Examples
    --------
    Two iterations on the CPU (after ``nnUNetv2_plan_and_preprocess`` and ``skelprep nnunet build``)::

        trainer = make_trainer(9, "2d", "all", device="cpu")
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
        trainer.run_training()
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json

    config = locate(dataset, configuration, plans_identifier)
    plans = load_json(str(config.dataset_folder / f"{plans_identifier}.json"))
    plans["continue_training"] = False  # what get_trainer_from_args adds; nnUNetTrainer pops it
    dataset_json = load_json(str(config.dataset_folder / "dataset.json"))
    fold = fold if fold == "all" else int(fold)
    return trainer_class(plans, configuration, fold, dataset_json, torch.device(device))
