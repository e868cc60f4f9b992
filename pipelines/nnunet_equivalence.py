"""How close the precomputed, augmented tube comes to the official per-patch tube, and what it saves.

For the bundled 2D road cracks (``2d``) and 3D OCT-A (``3d_fullres``) this script

1. makes nnU-Net raw datasets of them, plans and preprocesses them with nnunetv2's Python API and builds
   the sidecars (``skelprep nnunet build``'s code) under ``--work``;
2. draws training patches from nnU-Net's own ``nnUNetDataLoader`` and training transforms as
   ``nnUNetTrainerSkeletonRecall`` sets them up (the tube as seg channel 1; no deep supervision, so patches
   are compared at full resolution), and applies the official recipe (``SkeletonTransform``:
   ``dilation²(skeletonize(seg > 0)) · seg``) to the *same augmented* segmentation patch. Per dataset it
   reports tube-voxel agreement (Dice, IoU), the recall of the official tube by ours, and the share of
   common voxels with the same class; once with crop + mirror only (rotation and scaling off: whole-volume
   vs per-patch skeleton alone) and once with nnU-Net's full augmentation (plus interpolation);
3. times, side by side and interleaved, (a) the official per-patch tube computation against (b) reading
   the patch's tube from the sidecar, and the whole per-sample data pipeline: stock nnU-Net (no skeleton),
   stock + official ``SkeletonTransform``, and skelprep's (tube channel through augmentation, max-pooled for
   deep supervision). CPU figures, single-threaded as nnU-Net's augmentation workers are.

    python pipelines/nnunet_equivalence.py --out results/nnunet-equivalence [--patches 60]

Writes ``summary.json`` and ``summary.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS = {  # id, name, bundled folder, configuration
    "cracks": (981, "Dataset981_RoadCracks", "road_cracks", "2d"),
    "octa": (982, "Dataset982_OCTA", "octa3d", "3d_fullres"),
}


def prepare(work: Path, keys: list[str]) -> None:
    """Raw datasets, nnU-Net planning and preprocessing (skipped where already done), sidecars."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    from skelprep.nnunet.sidecar import build_sidecar

    for key in keys:
        dataset_id, name, folder, configuration = DATASETS[key]
        raw = work / "raw" / name
        if not raw.exists():
            shutil.copytree(ROOT / "examples" / folder, raw, ignore=shutil.ignore_patterns("skeletons*"))
        if not (work / "preprocessed" / name / "nnUNetPlans.json").exists():
            extract_fingerprints([dataset_id], num_processes=1, verbose=False, show_progress_bar=False)
            plan_experiments([dataset_id])
        if not (work / "preprocessed" / name / f"nnUNetPlans_{configuration}").exists():
            preprocess(
                [dataset_id], configurations=(configuration,), num_processes=(1,), show_progress_bar=False
            )
        report = build_sidecar(name, configuration, workers=1)
        if not report.ok:
            raise SystemExit(f"sidecar build failed: {report.as_dict()['failed']}")


def _trainer(name: str, configuration: str):
    import torch

    from skelprep.nnunet.trainer import nnUNetTrainerSkeletonRecall

    folder = Path(os.environ["nnUNet_preprocessed"]) / name
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((folder / "dataset.json").read_text())
    return nnUNetTrainerSkeletonRecall(plans, configuration, "all", dataset_json, torch.device("cpu"))


def _transforms(trainer, *, stock: bool, deep_supervision: bool, augment_geometry: bool = True):
    """The training transforms nnU-Net builds for this trainer (or for the stock nnUNetTrainer)."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    rotation, dummy_2d, _, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    cls = nnUNetTrainer if stock else type(trainer)
    lm = trainer.label_manager
    transforms = cls.get_training_transforms(
        trainer.configuration_manager.patch_size,
        rotation,
        trainer._get_deep_supervision_scales() if deep_supervision else None,
        mirror_axes,
        dummy_2d,
        use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm,
        is_cascaded=False,
        foreground_labels=lm.foreground_labels,
        regions=None,
        ignore_label=lm.ignore_label,
    )
    if not augment_geometry:
        for t in transforms.transforms:
            if isinstance(t, SpatialTransform):
                t.p_rotation = t.p_scaling = 0  # integer crop only (mirroring stays)
    return transforms


def _loader(trainer, dataset, transforms):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    _, _, initial_patch, _ = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    return nnUNetDataLoader(
        dataset,
        1,
        initial_patch,
        trainer.configuration_manager.patch_size,
        trainer.label_manager,
        oversample_foreground_percent=trainer.oversample_foreground_percent,
        sampling_probabilities=None,
        pad_sides=None,
        transforms=transforms,
    )


def _datasets(trainer):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from skelprep.nnunet.trainer import TubeDataset

    folder = trainer.preprocessed_dataset_folder
    base = infer_dataset_class(folder)(folder)
    return base, TubeDataset(base, trainer.preprocessed_configuration().sidecar)


def agreement(trainer, n_patches: int, *, augment_geometry: bool) -> dict[str, float]:
    """Precomputed-and-augmented tube vs the official recipe on the same augmented patch, pooled over patches."""
    from skelprep.nnunet.targets import official_patch_tube

    _, with_tube = _datasets(trainer)
    loader = _loader(
        trainer,
        with_tube,
        _transforms(trainer, stock=False, deep_supervision=False, augment_geometry=augment_geometry),
    )
    tp = fp = fn = same_class = 0
    self_common = self_total = 0
    recalls = []
    for _ in range(n_patches):
        target = next(loader)["target"][0].numpy()  # (2, *patch): augmented seg, augmented precomputed tube
        ours = target[1] > 0
        official = official_patch_tube(target[:1])
        ref = official > 0
        # The recipe against itself: thinning is not mirror-symmetric, so the official tube of the mirrored
        # patch, mirrored back, differs too. This bounds the agreement any fixed target can reach.
        spatial = tuple(range(1, target.ndim))
        flipped = (
            np.flip(official_patch_tube(np.flip(target[:1], spatial)), tuple(a - 1 for a in spatial)) > 0
        )
        self_common += 2 * int((flipped & ref).sum())
        self_total += int(flipped.sum() + ref.sum())
        both = ours & ref
        tp, fp, fn = tp + int(both.sum()), fp + int((ours & ~ref).sum()), fn + int((ref & ~ours).sum())
        same_class += int((target[1][both] == official[both]).sum())
        if ref.any():
            recalls.append(float(both.sum() / ref.sum()))
    return {
        "patches": n_patches,
        "dice": 2 * tp / max(1, 2 * tp + fp + fn),
        "iou": tp / max(1, tp + fp + fn),
        "recall_of_official": tp / max(1, tp + fn),
        "precision_vs_official": tp / max(1, tp + fp),
        "median_patch_recall": statistics.median(recalls) if recalls else float("nan"),
        "same_class_on_common_voxels": same_class / max(1, tp),
        "official_vs_itself_mirrored_dice": self_common / max(1, self_total),
        "official_tube_voxels_per_patch": (tp + fn) / n_patches,
    }


def _ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def timing(trainer, n_patches: int) -> dict[str, float]:
    """Per-sample costs, interleaved so that machine load hits every variant alike (median ms)."""
    import torch
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    from skelprep.nnunet.targets import official_patch_tube

    class OfficialSkeletonTransform(BasicTransform):
        """What the official SkeletonTransform computes per patch (the result is dropped by the loader)."""

        def apply(self, data_dict, **params):
            data_dict["skel"] = torch.from_numpy(official_patch_tube(data_dict["segmentation"].numpy()))
            return data_dict

    base, with_tube = _datasets(trainer)
    official = _transforms(trainer, stock=True, deep_supervision=True)
    ds_index = next(
        i for i, t in enumerate(official.transforms) if isinstance(t, DownsampleSegForDSTransform)
    )
    official.transforms.insert(ds_index, OfficialSkeletonTransform())  # where the official trainer puts it
    loaders = {
        "stock nnU-Net (no skeleton)": _loader(
            trainer, base, _transforms(trainer, stock=True, deep_supervision=True)
        ),
        "official (SkeletonTransform per patch)": _loader(trainer, base, official),
        "skelprep (precomputed tube channel)": _loader(
            trainer, with_tube, _transforms(trainer, stock=False, deep_supervision=True)
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in loaders}
    times["official tube computation alone"] = []
    times["sidecar tube patch read alone"] = []
    patch = list(trainer.configuration_manager.patch_size)
    ids = list(with_tube.identifiers)
    rng = np.random.default_rng(0)
    for i in range(n_patches + 2):
        for name, loader in loaders.items():
            start = time.perf_counter()
            batch = next(loader)
            if i >= 2:  # the first samples open files and warm caches
                times[name].append(time.perf_counter() - start)
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        seg = target[0, :1].numpy()  # the last augmented segmentation, full resolution
        start = time.perf_counter()
        official_patch_tube(seg)
        elapsed_official = time.perf_counter() - start
        case = ids[i % len(ids)]
        tube = with_tube.tube(case)
        shape = tube.shape[-len(patch) :]
        lo = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(shape, patch, strict=True)]
        bbox = [[a, a + p] for a, p in zip(lo, patch, strict=True)]
        if len(patch) == 2:
            bbox = [[0, 1], *bbox]
        start = time.perf_counter()
        crop_and_pad_nd(tube, bbox, -1, cast_cropped_to=np.int16)
        elapsed_read = time.perf_counter() - start
        if i >= 2:
            times["official tube computation alone"].append(elapsed_official)
            times["sidecar tube patch read alone"].append(elapsed_read)
    out = {name: _ms(t) for name, t in times.items()}
    out["saved per sample (official - skelprep)"] = (
        out["official (SkeletonTransform per patch)"] - out["skelprep (precomputed tube channel)"]
    )
    out["batch_size"] = trainer.configuration_manager.batch_size
    out["patch_size"] = "x".join(map(str, patch))
    out["samples"] = n_patches
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "nnunet-equivalence" / "work")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "nnunet-equivalence")
    parser.add_argument("--patches", type=int, default=60, help="Augmented patches per dataset and variant.")
    parser.add_argument("--datasets", default="cracks,octa")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.datasets.split(",") if k.strip()]
    work = args.work.resolve()
    for name in ("raw", "preprocessed", "results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{name}"] = str(work / name)
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_compile", "false")
    import torch

    torch.set_num_threads(1)  # as in nnU-Net's augmentation workers
    prepare(work, keys)

    summary = {}
    for key in keys:
        _, name, _, configuration = DATASETS[key]
        trainer = _trainer(name, configuration)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        summary[key] = {
            "dataset": name,
            "configuration": configuration,
            "crop + mirror only": agreement(trainer, args.patches, augment_geometry=False),
            "full nnU-Net augmentation": agreement(trainer, args.patches, augment_geometry=True),
            "timing_ms": timing(trainer, args.patches),
        }
        print(json.dumps({key: summary[key]}, indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(_markdown(summary))
    print(_markdown(summary))
    return 0


def _markdown(summary: dict) -> str:
    lines = [
        "| dataset (config) | augmentation | tube Dice | IoU | recall of official | median per-patch recall "
        "| same class | official vs itself mirrored (Dice) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in summary.values():
        for variant in ("crop + mirror only", "full nnU-Net augmentation"):
            m = entry[variant]
            lines.append(
                f"| {entry['dataset']} ({entry['configuration']}) | {variant} | {m['dice']:.3f} | {m['iou']:.3f} "
                f"| {m['recall_of_official']:.3f} | {m['median_patch_recall']:.3f} "
                f"| {m['same_class_on_common_voxels']:.3f} "
                f"| {m['official_vs_itself_mirrored_dice']:.3f} |"
            )
    lines += [
        "",
        "| per sample, median ms | " + " | ".join(f"{e['dataset']}" for e in summary.values()) + " |",
    ]
    lines.append("|---|" + "---|" * len(summary))
    keys = [
        k
        for k in next(iter(summary.values()))["timing_ms"]
        if k not in ("batch_size", "patch_size", "samples")
    ]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{e['timing_ms'][k]:.1f}" for e in summary.values()) + " |")
    lines.append(
        "| patch (batch size) | "
        + " | ".join(
            f"{e['timing_ms']['patch_size']} ({e['timing_ms']['batch_size']})" for e in summary.values()
        )
        + " |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
