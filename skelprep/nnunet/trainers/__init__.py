"""The folder to put in ``nnUNet_extTrainer`` (``skelprep nnunet trainer-dir`` prints it).

nnU-Net imports every module under the folders of ``nnUNet_extTrainer`` while it searches a trainer class,
so this folder holds trainer modules only; each re-exports a trainer from :mod:`skelprep.nnunet.trainer`
(classes keep that importable home, so checkpoints and data-augmentation workers find them).
"""
