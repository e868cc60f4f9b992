"""``nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerSkeletonRecall`` (see :mod:`skelprep.nnunet.trainer`)."""

from skelprep.nnunet.trainer import nnUNetTrainerSkeletonRecall

__all__ = ["nnUNetTrainerSkeletonRecall"]
