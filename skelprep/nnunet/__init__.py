"""nnU-Net v2 adapter (the ``nnunet`` extra): targets in nnU-Net's preprocessed space and a trainer.

* :mod:`skelprep.nnunet.targets` — thin and tube of a preprocessed ``_seg`` array (pure numpy), and the
  official per-patch recipe for comparison.
* :mod:`skelprep.nnunet.preprocessed` — find nnU-Net's preprocessed folder of a dataset and configuration the
  way nnU-Net does, list its cases, read their segmentations.
* :mod:`skelprep.nnunet.sidecar` — ``skelprep nnunet build``: the sidecar store
  ``nnUNet_preprocessed/DatasetXXX/skelprep/<data_identifier>/`` and the check that it is current.
* :mod:`skelprep.nnunet.loss`, :mod:`skelprep.nnunet.transforms`, :mod:`skelprep.nnunet.trainer` — the
  ``nnUNetTrainerSkeletonRecall`` trainer; :mod:`skelprep.nnunet.trainers` is the folder to put in
  ``nnUNet_extTrainer``.

Nothing here is imported by ``import skelprep``; this package itself imports nnunetv2 only in the modules
that need it, so ``skelprep.nnunet.targets`` works without nnU-Net installed.
"""
