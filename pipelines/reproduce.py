#!/usr/bin/env python
"""Does it help? Skeleton Recall from skelprep's targets against Dice + CE, the per-patch recipe and soft-clDice.

Four arms train the same network (:class:`train.UNet`) with the same augmentation,
schedule (:class:`train.Trainer`: AdamW, poly decay, deep supervision) and seeds on
the CHASE_DB1 training split, and differ only in the loss and where the tube comes from:

``a``  Dice + CE (:class:`skelprep.torch.CompoundLoss` with recall weight 0), the baseline;
``b``  + Skeleton Recall, the tube read from skelprep's store (built ``--with-images``)
       and augmented with the image and label (nearest neighbour);
``c``  + Skeleton Recall, the tube computed in the loader from the *augmented* label by the
       reference recipe (``bench.common.reference_recipe``: scikit-image ``skeletonize``, two
       cross dilations = L1 ball of radius 2, times the labels), as the official code does;
``d``  + soft-clDice (MONAI's ``SoftclDiceLoss``, Shit et al. CVPR 2021; softmax, background
       excluded, ``iter_`` 10 so that the soft skeleton reaches the axis of the widest vessels,
       about 11 px).

The topology terms have weight 1. Every arm's loader reads the same patches (the store's image,
label and tube) and applies the same augmentation with the same random draws for a given seed:
mirroring per axis (p 0.5), rotation by any angle (p 0.2), scaling by 0.7-1.4 (p 0.2), then on the
image multiplicative brightness and contrast (0.75-1.25, p 0.15 each), gamma (0.7-1.5, p 0.3) and
Gaussian noise (variance up to 0.1, p 0.1), nnU-Net's ranges. A patch is read at twice the
training size and rotated/scaled about its centre, so the output never sees padding from the
transform.

Data: ``--data`` (default ``../shared/data/real/chase_db1_full``), its ``splits.json``. Training
uses the ``train`` split only; its last child (both eyes) is held out as validation, scored after
every epoch for ``curves.png``; no model selection: the last weights are evaluated. The test split
is scored once per run, whole images by a sliding window of 512 x 512 (half overlap; a network
of instance-normalized convolutions applies to windows larger than its training patch, and
windows of the patch size cost ten times more on a CPU), inside the field of view (prediction and ground truth outside it set to 0): Dice,
clDice, Betti-0 and Betti-1 errors (:func:`skelprep.metrics.evaluate_case`). The second observer
against the first is the human reference row.

Sizing (``--device cpu``, the default): width 16, 4 levels, patch 128 x 128, batch 4, 8 epochs of
125 steps (1000 steps). Full resolution, because capillaries are 1-2 px wide. A 128 px patch at 4
levels gives the network about 3 vessel widths of context at the lowest level, which is what
separating a thin vessel from the dark background needs; width 16 and batch 4 keep a step at about
0.3 s on two free cores and a 512 px inference window at about 3 s per image, so one run (1000
steps, 8 validation passes over 2 images, 8 test images) takes about 6 minutes and the 12 runs
about 75-90 minutes. On cores shared with other work every figure grows with the load. ``--device cuda``: an nnU-Net-like 2D network
(width 32, 7 levels), patch 512 x 512, batch 8, 20 epochs of 250 steps, mixed precision.
``--quick``: arms a and b, one seed, 2 epochs of 3 steps, width 8, 3 levels, patch 64 (a pipeline
check, no meaningful accuracy).

Outputs in ``--out`` (default ``results/reproduce``; ``results/reproduce-quick`` with ``--quick``):
``table.md``, ``results.json`` (configuration, versions, commit, per arm x seed x image every
metric, training history and timings, summaries, paired differences), ``curves.png`` and
``examples.png``. ``--timing ROUNDS`` times training steps of every arm side by side in one process
(:func:`time_arms`) into ``timing.json``; the next summary puts them in ``table.md``.

State in ``--work`` (default ``runs/reproduce``, ``runs/reproduce-quick``): the store, one folder
per arm and seed with ``last.pt`` (written atomically after every epoch) and ``run.json`` (written
when the run is finished). Each run trains in its own process (so its peak memory is its own); a
rerun of the same command skips finished runs, resumes an interrupted one from its last epoch, and
refuses a work folder made with another configuration. Bad input (no data folder, a split naming
a missing image, an image without mask or field of view) stops the run with one line naming the
file before anything is trained.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # train.py and the bench package beside this file

import numpy as np  # noqa: E402

PROG = "reproduce"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real" / "chase_db1_full"
ARMS: dict[str, str] = {
    "a": "Dice + CE (baseline)",
    "b": "+ Skeleton Recall, skelprep store tube",
    "c": "+ Skeleton Recall, per-patch recipe",
    "d": "+ soft-clDice",
}
METRICS = ("dice", "cldice", "betti0_error", "betti1_error")
EXAMPLE_IMAGE = 0  # index in the test split of the image drawn in examples.png


@dataclass(frozen=True)
class Config:
    """Everything that decides a run's numbers; a work folder holds runs of one configuration."""

    device: str
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    base: int
    levels: int
    patch: int
    batch: int
    epochs: int
    steps_per_epoch: int
    lr: float = 1e-3
    foreground_prob: float = 0.33
    recall_weight: float = 1.0
    cldice_weight: float = 1.0
    cldice_iter: int = 10
    num_workers: int = 1
    val_children: int = 1
    window: int = 512  # sliding-window inference: many small windows cost far more than a few large ones


CONFIGS: dict[str, Config] = {
    "cpu": Config("cpu", tuple(ARMS), (0, 1, 2), 16, 4, 128, 4, 8, 125),
    "cuda": Config("cuda", tuple(ARMS), (0, 1, 2), 32, 7, 512, 8, 20, 250, num_workers=12),
    "quick": Config("cpu", ("a", "b"), (0,), 8, 3, 64, 2, 2, 3, num_workers=1),
}


def fail(message: str) -> None:
    sys.exit(f"{PROG}: error: {message}")


# --------------------------------------------------------------------------------------------
# Data: the split, checked before anything is built or trained


@dataclass(frozen=True)
class Data:
    root: Path
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def path(self, folder: str, case_id: str) -> Path:
        return self.root / folder / f"{case_id}.png"


def load_data(root: Path, val_children: int) -> Data:
    """The split from ``splits.json``, every file it needs checked to exist (one line naming the first missing)."""
    if not root.is_dir():
        fail(f"data folder {root}: not found (give it with --data)")
    split_file = root / "splits.json"
    try:
        split = json.loads(split_file.read_text())
        train, test = [str(c) for c in split["train"]], [str(c) for c in split["test"]]
    except FileNotFoundError:
        fail(f"{split_file}: not found")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"{split_file}: not a split with 'train' and 'test' lists ({type(exc).__name__}: {exc})")
    if not train or not test or set(train) & set(test):
        fail(f"{split_file}: 'train' and 'test' must be non-empty and disjoint")
    for case_id in train + test:
        image = root / "images" / f"{case_id}.png"
        if not image.is_file():
            fail(f"{image}: missing (named in {split_file})")
        needed = ("labels", "fov") + (("labels_2ndHO",) if case_id in test else ())
        for folder in needed:
            path = root / folder / f"{case_id}.png"
            if not path.is_file():
                what = {
                    "labels": "mask",
                    "fov": "field-of-view mask",
                    "labels_2ndHO": "second observer's mask",
                }
                fail(f"{path}: missing (the {what[folder]} of {image})")
    # Both eyes of a child stay together: the validation part is whole children (the last ones).
    children = sorted({c.rstrip("LR") for c in train})
    if len(children) <= val_children:
        fail(f"{split_file}: the training split needs more than {val_children} child(ren) to hold one out")
    held = set(children[-val_children:])
    val = tuple(c for c in train if c.rstrip("LR") in held)
    return Data(root, tuple(c for c in train if c not in val), val, tuple(test))


def link_training_dataset(data: Data, work: Path) -> Path:
    """A generic dataset folder of the training split alone (links), which the store is built from."""
    folder = work / "train_dataset"
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for case_id in data.train + data.val:
            link = folder / sub / f"{case_id}.png"
            target = data.path(sub, case_id).resolve()
            if link.is_symlink() and link.resolve() == target:
                continue
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    return folder


@dataclass
class EvalCase:
    image: Any  # normalized float32 (C, H, W) torch tensor
    gt: np.ndarray  # bool (H, W), inside the field of view
    fov: np.ndarray  # bool (H, W)
    gt_thin: np.ndarray  # skeleton of gt


def read_eval_case(data: Data, case_id: str) -> EvalCase:
    import torch

    from skelprep.io import InputError, read_image, read_mask
    from skelprep.metrics import skeleton
    from skelprep.torch.dataset import normalize_image

    try:
        image = read_image(data.path("images", case_id)).array
        fov = read_mask(data.path("fov", case_id)).array > 0
        gt = (read_mask(data.path("labels", case_id)).array > 0) & fov
    except InputError as exc:
        fail(str(exc))
    return EvalCase(torch.from_numpy(normalize_image(image)), gt, fov, skeleton(gt))


def score(pred: np.ndarray, case: EvalCase) -> dict[str, float]:
    from skelprep.metrics import evaluate_case

    pred = pred.astype(bool) & case.fov
    scores = evaluate_case(
        pred.astype(np.uint8),
        case.gt.astype(np.uint8),
        classes=[1],
        gt_thin=case.gt_thin,
        gt_binary_thin=case.gt_thin,
    )
    return dict(scores["mean"])


def human_reference(data: Data) -> dict[str, dict[str, float]]:
    """Second observer against the first on every test image, inside the field of view."""
    from skelprep.io import InputError, read_mask

    out = {}
    for case_id in data.test:
        case = read_eval_case(data, case_id)
        try:
            second = read_mask(data.path("labels_2ndHO", case_id)).array > 0
        except InputError as exc:
            fail(str(exc))
        out[case_id] = score(second, case)
    return out


# --------------------------------------------------------------------------------------------
# Augmentation, in the loader, after the patch is read


class Augment:
    """Spatial and intensity augmentation of a SkeletonDataset item; arm c recomputes the tube after it.

    The item's patch is ``2 * patch`` wide; the output is ``patch`` wide, cut from its centre
    after rotation and scaling about that centre (a rotated and 1.4x scaled ``patch`` fits
    inside ``2 * patch``). Random draws come from a per-process generator seeded from
    ``torch.initial_seed()`` (set per DataLoader worker), drawn in the same order whatever
    the arm, so all arms of a seed see the same patches.
    """

    def __init__(self, patch: int, recompute_tube: bool) -> None:
        self.patch = patch
        self.recompute_tube = recompute_tube
        self._pid: int | None = None
        self._rng: np.random.Generator | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": None, "_rng": None}

    def rng(self) -> np.random.Generator:
        import torch

        if self._pid != os.getpid():
            self._pid, self._rng = os.getpid(), np.random.default_rng([torch.initial_seed(), 1])
        assert self._rng is not None
        return self._rng

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        import torch
        from scipy import ndimage as ndi

        rng = self.rng()
        image, label, tube = (item[k].numpy() for k in ("image", "label", "tube"))
        source = np.asarray(label.shape[1:], float)
        angle = rng.uniform(-math.pi, math.pi) if rng.random() < 0.2 else 0.0
        zoom = rng.uniform(0.7, 1.4) if rng.random() < 0.2 else 1.0
        flips = rng.random(2) < 0.5
        out_shape = (self.patch, self.patch)
        if angle or zoom != 1.0:
            c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
            matrix = np.array([[c, -s], [s, c]])
            offset = (source - 1) / 2 - matrix @ ((np.asarray(out_shape, float) - 1) / 2)

            def warp(a: np.ndarray, order: int) -> np.ndarray:
                return np.stack(
                    [ndi.affine_transform(ch, matrix, offset, out_shape, order=order) for ch in a]
                )

            image, label, tube = warp(image, 1), warp(label, 0), warp(tube, 0)
        else:
            lo = ((source - self.patch) // 2).astype(int)
            box = (slice(None), slice(lo[0], lo[0] + self.patch), slice(lo[1], lo[1] + self.patch))
            image, label, tube = image[box], label[box], tube[box]
        for axis in np.flatnonzero(flips):
            image, label, tube = (np.flip(a, axis + 1) for a in (image, label, tube))
        image = self.intensity(np.array(image, np.float32), rng)
        if self.recompute_tube:
            from bench.common import reference_recipe

            tube = reference_recipe(np.ascontiguousarray(label[0]))[None]
        item = dict(item)
        item["image"] = torch.from_numpy(np.ascontiguousarray(image))
        item["label"] = torch.from_numpy(np.ascontiguousarray(label, np.int64))
        item["tube"] = torch.from_numpy(np.ascontiguousarray(tube, np.int64))
        return item

    @staticmethod
    def intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draws = rng.random(4)
        factors = rng.uniform(0.75, 1.25, 2)
        gamma, noise = rng.uniform(0.7, 1.5), rng.uniform(0.0, 0.1)
        if draws[0] < 0.15:
            image *= factors[0]
        if draws[1] < 0.15:
            mean = image.mean(axis=(1, 2), keepdims=True)
            image = (image - mean) * factors[1] + mean
        if draws[2] < 0.3:  # gamma on the patch's range, which it keeps
            lo = image.min(axis=(1, 2), keepdims=True)
            span = np.maximum(image.max(axis=(1, 2), keepdims=True) - lo, 1e-8)
            image = ((image - lo) / span) ** gamma * span + lo
        if draws[3] < 0.1:
            image = image + rng.normal(0.0, math.sqrt(noise), image.shape).astype(np.float32)
        return image.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Losses


def make_loss(arm: str, cfg: Config):
    """The arm's loss: a CompoundLoss (a, b, c) or CompoundLoss + soft-clDice (d), with ``terms``."""
    import torch
    from torch import nn

    from skelprep.torch import CompoundLoss

    if arm in ("b", "c"):
        return CompoundLoss(recall_weight=cfg.recall_weight)
    base = CompoundLoss(recall_weight=0.0)
    if arm == "a":
        return base
    from monai.losses import SoftclDiceLoss

    class WithClDice(nn.Module):
        """Dice + CE + w · soft-clDice on the softmax, background excluded (the clDice paper's form)."""

        def __init__(self) -> None:
            super().__init__()
            self.compound = base
            self.cldice = SoftclDiceLoss(
                iter_=cfg.cldice_iter, softmax=True, to_onehot_y=True, include_background=False
            )

        def terms(self, logits, label, tube) -> dict[str, torch.Tensor]:
            out = self.compound.terms(logits, label, tube)
            out["cldice"] = self.cldice(logits.float(), label.long())
            out["total"] = out["total"] + cfg.cldice_weight * out["cldice"]
            return out

        def forward(self, logits, label, tube) -> torch.Tensor:
            return self.terms(logits, label, tube)["total"]

    return WithClDice()


# --------------------------------------------------------------------------------------------
# One run (arm, seed), in its own process


def run_dir(work: Path, arm: str, seed: int) -> Path:
    return work / "runs" / f"{arm}-seed{seed}"


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _peak_memory(device) -> int:
    import resource

    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def arm_setup(cfg: Config, arm: str, seed: int, store: Path, case_ids: tuple[str, ...], progress: bool):
    """(trainer, training dataset) of one arm and seed: the network, loss, optimizer and loader's items."""
    import torch
    import train

    from skelprep.torch import DeepSupervisionLoss, SkeletonDataset

    device = torch.device(cfg.device)
    torch.manual_seed(seed)
    model = train.UNet(2, 3, 2, cfg.base, cfg.levels, deep_supervision=True)
    args = argparse.Namespace(
        recall_weight=cfg.recall_weight,
        batch_dice=False,
        lr=cfg.lr,
        epochs=cfg.epochs,
        steps_per_epoch=cfg.steps_per_epoch,
        no_progress=not progress,
    )
    compound = make_loss(arm, cfg)
    trainer = train.Trainer(args, model, 2, None, device, compound=compound.to(device))
    trainer.criterion = DeepSupervisionLoss(trainer.compound)
    train_ds = SkeletonDataset.from_store(
        store,
        patch_size=2 * cfg.patch,
        foreground_prob=cfg.foreground_prob,
        case_ids=list(case_ids),
        transform=Augment(cfg.patch, recompute_tube=arm == "c"),
    )
    return trainer, train_ds


def run_one(cfg: Config, data: Data, work: Path, arm: str, seed: int, progress: bool) -> None:
    """Train (or resume) one arm and seed, then score it; writes ``run.json`` last."""
    import torch
    import train
    from torch.utils.data import DataLoader, RandomSampler

    parent = os.getppid()
    out = run_dir(work, arm, seed)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer, train_ds = arm_setup(cfg, arm, seed, work / "store.zarr", data.train, progress)
    model = trainer.model
    val_cases = {c: read_eval_case(data, c) for c in data.val}

    history: list[dict[str, Any]] = []
    resumed: list[int] = []
    checkpoint_path = out / "last.pt"
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
        history = state["history"]
        resumed = state["resumed"] + [len(history)]
        print(f"{arm} seed {seed}: resuming after epoch {len(history)}/{cfg.epochs}", file=sys.stderr)

    def watched(loader):
        for batch in loader:
            if os.getppid() != parent:  # the driver is gone (killed): stop rather than race its rerun
                sys.exit(f"{PROG}: error: driver process ended; stopping {arm} seed {seed}")
            yield batch

    for epoch in range(len(history) + 1, cfg.epochs + 1):
        # One generator per epoch: a resumed run draws the epochs it has left as an unbroken one would.
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        sampler = RandomSampler(
            train_ds, replacement=True, num_samples=cfg.steps_per_epoch * cfg.batch, generator=generator
        )
        loader = DataLoader(
            train_ds,
            batch_size=cfg.batch,
            sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            generator=generator,
        )
        record, steps = trainer.epoch(watched(loader), epoch)
        record["steps"] = steps
        record["step"] = epoch * cfg.steps_per_epoch
        val = [
            score(_predict(model, c, cfg, device), c) for c in val_cases.values()
        ]  # validation: curves only
        record["val"] = {k: float(np.mean([v[k] for v in val])) for k in METRICS}
        history.append(record)
        _save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "scheduler": trainer.scheduler.state_dict(),
                "scaler": trainer.scaler.state_dict(),
                "history": history,
                "resumed": resumed,
                "config": asdict(cfg),
            },
            checkpoint_path,
        )
        print(f"{arm} seed {seed}: {train.epoch_line(record)}", file=sys.stderr)

    test: dict[str, dict[str, float]] = {}
    for index, case_id in enumerate(data.test):
        case = read_eval_case(data, case_id)
        pred = _predict(model, case, cfg, device)
        test[case_id] = score(pred, case)
        if index == EXAMPLE_IMAGE and seed == cfg.seeds[0]:
            np.save(out / "example_pred.npy", np.packbits(pred & case.fov))
    steps = [s for h in history for s in h["steps"]]
    result = {
        "arm": arm,
        "seed": seed,
        "history": history,
        "resumed_after_epochs": resumed,
        "test": test,
        "timing": {
            "steps": len(steps),
            "median_step_seconds": float(np.median([s["compute_seconds"] for s in steps])),
            "mean_step_seconds": float(np.mean([s["compute_seconds"] for s in steps])),
            "median_step_cpu_seconds": float(np.median([s["cpu_seconds"] for s in steps])),
            "mean_loader_wait_seconds": float(np.mean([s["wait_seconds"] for s in steps])),
            "median_loader_wait_seconds": float(np.median([s["wait_seconds"] for s in steps])),
        },
        "peak_memory_bytes": _peak_memory(device),
        "peak_memory_kind": "max CUDA memory allocated"
        if device.type == "cuda"
        else "peak resident set size of the training process (loader worker excluded)",
    }
    _write_json_atomic(result, out / "run.json")


def time_arms(cfg: Config, data: Data, work: Path, rounds: int, steps: int) -> dict[str, Any]:
    """The cost of a training step per arm, measured side by side in one process.

    Every arm gets its trainer and loader (seed of the first run); then ``rounds``
    rounds of ``steps`` steps per arm, the arms in turn, so that whatever else loads
    the machine falls on all of them alike (the full run trains one arm after another,
    hours apart). A first round warms up each arm (allocator, loader workers) and is not
    counted. Per arm: the median step (wall and CPU time) and loader wait over the
    counted steps, and the ratio of each arm's median step to the baseline's.
    """
    import itertools

    import torch
    from torch.utils.data import DataLoader, RandomSampler

    iterators, trainers = {}, {}
    schedule = replace(
        cfg, epochs=rounds + 1, steps_per_epoch=steps
    )  # the learning rate decays over these steps
    for arm in cfg.arms:
        trainer, train_ds = arm_setup(schedule, arm, cfg.seeds[0], work / "store.zarr", data.train, False)
        generator = torch.Generator().manual_seed(cfg.seeds[0])
        sampler = RandomSampler(
            train_ds, replacement=True, num_samples=(rounds + 1) * steps * cfg.batch, generator=generator
        )
        loader = DataLoader(
            train_ds, batch_size=cfg.batch, sampler=sampler, num_workers=cfg.num_workers, drop_last=True
        )
        trainers[arm], iterators[arm] = trainer, iter(loader)
    counted: dict[str, list[dict[str, float]]] = {arm: [] for arm in cfg.arms}
    for index in range(rounds + 1):
        for arm in cfg.arms:
            _, records = trainers[arm].epoch(itertools.islice(iterators[arm], steps), index)
            if index:
                counted[arm] += records
    result: dict[str, Any] = {"rounds": rounds, "steps_per_round": steps, "arms": {}}
    for arm, records in counted.items():
        result["arms"][arm] = {
            "steps": len(records),
            "median_step_seconds": float(np.median([r["compute_seconds"] for r in records])),
            "median_step_cpu_seconds": float(np.median([r["cpu_seconds"] for r in records])),
            "mean_loader_wait_seconds": float(np.mean([r["wait_seconds"] for r in records])),
        }
    base = result["arms"][cfg.arms[0]]["median_step_seconds"]
    for entry in result["arms"].values():
        entry["step_vs_baseline"] = entry["median_step_seconds"] / base
    return result


def _predict(model, case: EvalCase, cfg: Config, device) -> np.ndarray:
    import train

    probs = train.predict(model, case.image, (cfg.window, cfg.window), device, max_voxels=0)
    return (probs.argmax(0).numpy() > 0) & case.fov


# --------------------------------------------------------------------------------------------
# Statistics and outputs


def bootstrap_ci(diffs: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % interval of the mean of per-image differences, resampling images."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), (n, len(diffs)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(cfg: Config, runs: dict[str, dict[int, dict]], test: tuple[str, ...]) -> dict[str, Any]:
    """Per arm: mean ± sd over seeds of the per-seed image means; paired differences against arm a."""
    out: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        per_seed = {
            m: [float(np.mean([r["test"][c][m] for c in test])) for r in by_seed.values()] for m in METRICS
        }
        entry: dict[str, Any] = {
            "label": ARMS[arm],
            "seeds": sorted(by_seed),
            "mean": {m: float(np.mean(v)) for m, v in per_seed.items()},
            "sd": {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in per_seed.items()},
            "per_seed_mean": per_seed,
        }
        timings = [r["timing"] for r in by_seed.values()]
        entry["median_step_seconds"] = float(np.median([t["median_step_seconds"] for t in timings]))
        entry["median_step_cpu_seconds"] = float(np.median([t["median_step_cpu_seconds"] for t in timings]))
        entry["mean_loader_wait_seconds"] = float(np.mean([t["mean_loader_wait_seconds"] for t in timings]))
        entry["peak_memory_bytes"] = int(max(r["peak_memory_bytes"] for r in by_seed.values()))
        if arm != "a" and "a" in runs:
            seeds = sorted(set(by_seed) & set(runs["a"]))
            entry["vs_baseline"] = {"seeds": seeds}
            for m in METRICS:
                diffs = np.array(
                    [
                        np.mean([by_seed[s]["test"][c][m] - runs["a"][s]["test"][c][m] for s in seeds])
                        for c in test
                    ]
                )
                lo, hi = bootstrap_ci(diffs)
                entry["vs_baseline"][m] = {
                    "mean": float(diffs.mean()),
                    "ci95": [lo, hi],
                    "per_image": diffs.tolist(),
                }
        out[arm] = entry
    return out


def _pm(mean: float, sd: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def write_table(
    path: Path, cfg: Config, summary: dict, human: dict, test: tuple[str, ...], timing: dict | None = None
) -> None:
    digits = {"dice": 3, "cldice": 3, "betti0_error": 1, "betti1_error": 1}
    lines = [
        f"# Does it help? CHASE_DB1 test split ({len(test)} images), {len(cfg.seeds)} seed(s), device {cfg.device}",
        "",
        "Mean ± sd over seeds of the mean over test images, inside the field of view; Betti errors are counts.",
        "",
        "| arm | Dice | clDice | Betti-0 error | Betti-1 error |",
        "|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        cells = [_pm(s["mean"][m], s["sd"][m], digits[m]) for m in METRICS]
        lines.append(f"| {arm}: {s['label']} | " + " | ".join(cells) + " |")
    hum = {m: float(np.mean([h[m] for h in human.values()])) for m in METRICS}
    lines.append(
        "| second observer vs first | " + " | ".join(f"{hum[m]:.{digits[m]}f}" for m in METRICS) + " |"
    )
    lines += [
        "",
        "Paired difference against the baseline (arm − a), per test image averaged over seeds; "
        "mean [bootstrap 95 % interval over images]:",
        "",
        "| arm | ΔDice | ΔclDice | ΔBetti-0 error | ΔBetti-1 error |",
        "|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        if "vs_baseline" in s:
            d = s["vs_baseline"]
            cells = [
                f"{d[m]['mean']:+.{digits[m]}f} [{d[m]['ci95'][0]:+.{digits[m]}f}, {d[m]['ci95'][1]:+.{digits[m]}f}]"
                for m in METRICS
            ]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cost per arm in the runs above (median over seeds of the median training step; mean loader wait per "
        "step; largest peak memory; each run trained on its own, so the step times carry the machine's load "
        "at its hour):",
        "",
        "| arm | step (ms) | step CPU (ms) | loader wait (ms/step) | peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for arm, s in summary.items():
        lines.append(
            f"| {arm} | {s['median_step_seconds'] * 1e3:.0f} | {s['median_step_cpu_seconds'] * 1e3:.0f} | "
            f"{s['mean_loader_wait_seconds'] * 1e3:.1f} | {s['peak_memory_bytes'] / 2**20:.0f} |"
        )
    if timing is not None:
        lines += [
            "",
            f"Training steps side by side ({timing['rounds']} rounds of {timing['steps_per_round']} steps per arm, "
            "the arms in turn in one process, `--timing`): median step, against the baseline's:",
            "",
            "| arm | step (ms) | step CPU (ms) | loader wait (ms/step) | step / baseline |",
            "|---|---|---|---|---|",
        ]
        for arm, t in timing["arms"].items():
            lines.append(
                f"| {arm} | {t['median_step_seconds'] * 1e3:.0f} | {t['median_step_cpu_seconds'] * 1e3:.0f} | "
                f"{t['mean_loader_wait_seconds'] * 1e3:.1f} | {t['step_vs_baseline']:.2f}× |"
            )
    lines += [
        "",
        f"Network: U-Net width {cfg.base}, {cfg.levels} levels; patch {cfg.patch}², batch {cfg.batch}, "
        f"{cfg.epochs} × {cfg.steps_per_epoch} steps; details in results.json.",
    ]
    path.write_text("\n".join(lines) + "\n")


def plot_curves(path: Path, cfg: Config, runs: dict[str, dict[int, dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for arm, by_seed in runs.items():
        histories = [r["history"] for r in by_seed.values()]
        steps = [h["step"] for h in histories[0]]
        for ax, m in zip(axes, METRICS, strict=True):
            values = np.array([[h["val"][m] for h in hist] for hist in histories])
            ax.plot(steps, values.mean(0), marker="o", label=f"{arm}: {ARMS[arm]}")
            if len(histories) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), alpha=0.15)
            ax.set(title=f"validation {m}", xlabel="training step")
    axes[0].legend(fontsize=8)
    fig.suptitle("validation (held-out training child), mean over seeds, band: min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_examples(path: Path, data: Data, work: Path, cfg: Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skelprep.io import read_image

    case_id = data.test[EXAMPLE_IMAGE]
    case = read_eval_case(data, case_id)
    rgb = np.moveaxis(read_image(data.path("images", case_id)).array, 0, -1)
    h, w = case.gt.shape
    size = min(320, h, w)
    # The crop with the most ground-truth centreline: where thin vessels (and their breaks) are.
    best, corner = -1, (0, 0)
    for y in range(0, h - size + 1, size // 4):
        for x in range(0, w - size + 1, size // 4):
            n = int(case.gt_thin[y : y + size, x : x + size].sum())
            if n > best:
                best, corner = n, (y, x)
    box = (slice(corner[0], corner[0] + size), slice(corner[1], corner[1] + size))
    panels = [("image", rgb[box]), ("ground truth (1st observer)", case.gt[box])]
    for arm in cfg.arms:
        pred_file = run_dir(work, arm, cfg.seeds[0]) / "example_pred.npy"
        pred = np.unpackbits(np.load(pred_file))[: h * w].reshape(h, w).astype(bool)
        gt, p = case.gt[box], pred[box]
        colour = np.zeros((*gt.shape, 3))
        colour[gt & p] = 1.0  # found: white
        colour[gt & ~p] = (1.0, 0.15, 0.15)  # missed: red (broken vessels)
        colour[~gt & p] = (0.2, 0.6, 1.0)  # extra: blue
        panels.append((f"{arm}: {ARMS[arm]}", colour))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, im) in zip(axes, panels, strict=True):
        ax.imshow(im, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(
        f"{case_id}, crop at {corner}, seed {cfg.seeds[0]}: white found, red missed, blue extra", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("skelprep", "torch", "numpy", "scipy", "scikit-image", "monai", "zarr"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def commit() -> dict[str, Any]:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


# --------------------------------------------------------------------------------------------
# Driver


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CHASE_DB1 folder with splits.json")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the configuration to run")
    p.add_argument("--quick", action="store_true", help="pipeline check: 2 arms, 1 seed, a few steps")
    p.add_argument("--out", type=Path, help="outputs [results/reproduce, results/reproduce-quick]")
    p.add_argument("--work", type=Path, help="store and checkpoints [runs/reproduce, runs/reproduce-quick]")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--timing",
        type=int,
        metavar="ROUNDS",
        help="time training steps of every arm side by side (ROUNDS rounds of 10 steps) into timing.json",
    )
    p.add_argument("--run", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)  # the per-run process
    return p.parse_args(argv)


def config_for(args: argparse.Namespace) -> Config:
    if args.quick:
        return replace(CONFIGS["quick"], device=args.device)
    return CONFIGS[args.device]


def check_work(work: Path, cfg: Config) -> None:
    """The work folder holds runs of this configuration only (or none yet)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.json"
    wanted = asdict(cfg)
    wanted = json.loads(json.dumps(wanted))  # tuples as lists, as read back
    if path.is_file():
        if json.loads(path.read_text()) != wanted:
            fail(
                f"{path}: this work folder holds runs of another configuration; give another --work or remove it"
            )
    else:
        _write_json_atomic(wanted, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_for(args)
    suffix = "-quick" if args.quick else ""
    out = args.out or ROOT / "results" / f"reproduce{suffix}"
    work = args.work or ROOT / "runs" / f"reproduce{suffix}"
    data = load_data(args.data, cfg.val_children)

    if args.run:  # one arm and seed, started by the driver below
        import torch

        if cfg.device == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1)))
        try:
            run_one(cfg, data, work, args.run[0], int(args.run[1]), not args.no_progress)
        except KeyboardInterrupt:
            return 130
        return 0

    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda but no CUDA device is available")
    check_work(work, cfg)
    import train

    dataset = link_training_dataset(data, work)
    train.ensure_store(dataset, str(work / "store.zarr"), allow_build=True, prog=PROG)
    human = human_reference(data)

    if args.timing:
        if cfg.device == "cpu":
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1)))
        out.mkdir(parents=True, exist_ok=True)
        timing = {**time_arms(cfg, data, work, args.timing, 10), "versions": versions(), **commit()}
        _write_json_atomic(timing, out / "timing.json")
        print(json.dumps(timing["arms"], indent=1))
        print(f"wrote {out / 'timing.json'}; rerun without --timing to put it in table.md", file=sys.stderr)
        return 0

    runs: dict[str, dict[int, dict]] = {arm: {} for arm in cfg.arms}
    started = time.perf_counter()
    for seed in cfg.seeds:
        for arm in cfg.arms:
            result = run_dir(work, arm, seed) / "run.json"
            if not result.is_file():
                print(f"== arm {arm} ({ARMS[arm]}), seed {seed}", file=sys.stderr)
                cmd = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data)]
                cmd += ["--device", args.device, "--work", str(work), "--run", arm, str(seed)]
                cmd += ["--quick"] * args.quick + ["--no-progress"] * args.no_progress
                try:
                    code = subprocess.run(cmd).returncode
                except KeyboardInterrupt:
                    print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
                    return 130
                if code != 0:
                    if code in (130, -signal.SIGINT):
                        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
                        return 130
                    fail(f"arm {arm} seed {seed} stopped (exit {code}); rerun to resume from its last epoch")
            else:
                print(f"== arm {arm}, seed {seed}: finished earlier, not retrained", file=sys.stderr)
            runs[arm][seed] = json.loads(result.read_text())

    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(cfg, runs, data.test)
    results = {
        "config": asdict(cfg),
        "data": {"root": os.fspath(data.root), "train": data.train, "val": data.val, "test": data.test},
        "versions": versions(),
        **commit(),
        "device": (platform.processor() or platform.machine()) if cfg.device == "cpu" else _gpu_name(),
        "cpu_count": os.cpu_count(),
        "driver_seconds": time.perf_counter() - started,
        "human_reference": {"per_image": human},
        "summary": summary,
        "runs": {arm: {str(s): r for s, r in by_seed.items()} for arm, by_seed in runs.items()},
    }
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    if timing is not None:
        results["timing_side_by_side"] = timing
    _write_json_atomic(results, out / "results.json")
    write_table(out / "table.md", cfg, summary, human, data.test, timing)
    plot_curves(out / "curves.png", cfg, runs)
    plot_examples(out / "examples.png", data, work, cfg)
    print((out / "table.md").read_text())
    print(f"outputs in {out}", file=sys.stderr)
    return 0


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    sys.exit(main())
