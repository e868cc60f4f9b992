#!/usr/bin/env python
"""Train a compact U-Net with Dice + CE + w · Skeleton Recall on a skelprep dataset.

The dimensionality (2D or 3D), input channels and classes come from the data.
Before training the dataset's store is brought up to date: a missing, incomplete
or stale store, or one without images, is (re)built with :func:`skelprep.build.build`
``with_images`` (one worker, the store's own parameters if it has any, else the
defaults); ``--no-build`` makes that an error instead. Training patches are then
read from the store's image, label and tube arrays alone.

Outputs in ``--out``: ``last.pt`` and ``best.pt`` (best validation clDice; best
training loss without validation), ``metrics.json`` (arguments, per-epoch losses
and validation metrics, per step the time spent waiting for the loader and the
compute time, their means and the loader-wait fraction) and ``curves.png``.

Examples
--------
Baseline and Skeleton Recall on the bundled road cracks (CPU, a few minutes)::

    python pipelines/train.py examples/road_cracks --out runs/cracks_srec --epochs 5 \\
        --steps-per-epoch 50 --patch-size 256 --batch-size 2 --recall-weight 1
    python pipelines/train.py examples/road_cracks --out runs/cracks_base --recall-weight 0 ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from skelprep.build import BuildParams, build
from skelprep.evaluate import store_thin
from skelprep.layout import LayoutError, discover
from skelprep.metrics import evaluate_case, mean_metrics
from skelprep.store import StoreError, default_store_path, open_store
from skelprep.torch import CompoundLoss, DeepSupervisionLoss, SkeletonDataset
from skelprep.verify import verify

# --------------------------------------------------------------------------------------------
# Model


class ConvBlock(nn.Sequential):
    """Two (conv 3 -> instance norm -> leaky ReLU) layers; the first may stride (nnU-Net's downsampling)."""

    def __init__(self, ndim: int, cin: int, cout: int, stride: int = 1) -> None:
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        norm = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[ndim]
        super().__init__(
            conv(cin, cout, 3, stride=stride, padding=1),
            norm(cout, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            conv(cout, cout, 3, padding=1),
            norm(cout, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet(nn.Module):
    """A small nnU-Net-like U-Net: ``levels`` resolutions, channels doubling from ``base`` (capped at 320).

    With ``deep_supervision`` the training forward returns one logit map per decoder
    level, full resolution first; in eval mode only the full-resolution map.
    Inputs need spatial sizes divisible by :attr:`divisor`.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        n_classes: int,
        base: int = 16,
        levels: int = 4,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        up = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]
        widths = [min(base * 2**i, 320) for i in range(levels)]
        self.divisor = 2 ** (levels - 1)
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList(
            ConvBlock(ndim, in_channels if i == 0 else widths[i - 1], widths[i], stride=1 if i == 0 else 2)
            for i in range(levels)
        )
        self.up = nn.ModuleList(
            up(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels - 1))
        )
        self.decoder = nn.ModuleList(
            ConvBlock(ndim, 2 * widths[i], widths[i]) for i in reversed(range(levels - 1))
        )
        self.heads = nn.ModuleList(conv(widths[i], n_classes, 1) for i in reversed(range(levels - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        outputs = []
        x = skips.pop()
        for up, block, head in zip(self.up, self.decoder, self.heads, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
            outputs.append(head(x))
        outputs.reverse()  # full resolution first
        if self.deep_supervision and self.training:
            return outputs
        return outputs[0]


# --------------------------------------------------------------------------------------------
# Data


def check_images(dataset: Path) -> None:
    """Exit with one line unless the dataset can be found and has images: the model learns from them."""
    try:
        layout = discover(dataset)
    except LayoutError as exc:
        sys.exit(f"train: error: {exc}")
    if not any(case.images for case in layout.cases):
        sys.exit(
            f"train: error: {dataset}: no images (imagesTr/ or images/ beside the labels); training needs an "
            "image for every case, a labels-only dataset can only be built ('skelprep build')"
        )


def ensure_store(dataset: Path, store: str, allow_build: bool, prog: str = "train") -> None:
    """Bring the store up to date, with images (or fail with a clear message when ``allow_build`` is False).

    Failures exit with one line headed ``prog: error:`` (the calling pipeline's name).

    Training streams patches from the store's image and label arrays, so a store
    without them counts as out of date: it is built ``with_images`` (its targets
    are reused where the masks did not change).
    """
    try:
        checks = verify(dataset, store, check_data=False)
        bad = [c for c in checks if c.state not in ("ok", "orphan", "failed-input")]
        opened = open_store(store)
        params = opened.attrs.get("params") or {}
        without_images = not opened.attrs.get("with_images")
    except StoreError:
        bad, params, without_images = None, {}, True
    if bad == [] and not without_images:
        return
    if bad is None:
        what = "is missing"
    elif bad:
        what = f"has {len(bad)} case(s) missing, incomplete or stale"
    else:
        what = "holds no images (built without --with-images)"
    if not allow_build:
        sys.exit(
            f"{prog}: error: store {store} {what}; run 'skelprep build {dataset} --with-images' or drop --no-build"
        )
    print(f"building the store {store} with images (it {what})", file=sys.stderr)
    build_params = BuildParams(
        **{k: params[k] for k in ("radius", "mode", "ignore_label", "slice_axis") if k in params}
    )
    report = build(dataset, store, params=build_params, workers=1, with_images=True)
    if not report.ok:
        reasons = "; ".join(o.reason for o in report.failed)
        sys.exit(f"{prog}: error: building the store failed: {reasons}")


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by case; at least one training case, and one validation case when asked for."""
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = (
        0 if val_fraction <= 0 or len(ids) < 2 else min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    )
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def class_count(dataset: Path, store: str) -> tuple[int, int | None]:
    """(number of classes incl. background, ignore label) from dataset.json labels and the stored label counts."""
    layout = discover(dataset)
    ignore = layout.ignore_label
    labels = {k for k in layout.label_names if k != ignore}
    opened = open_store(store)
    for case_id in opened.case_ids:
        counts = opened.case_attrs(case_id).get("mask_label_counts") or {}
        labels |= {int(k) for k in counts if int(k) != ignore}
    return max(labels | {1}) + 1, ignore


# --------------------------------------------------------------------------------------------
# Inference and validation


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    shape = x.shape[2:]
    target = [math.ceil(s / multiple) * multiple for s in shape]
    pad = []
    for s, t in zip(reversed(shape), reversed(target), strict=True):
        pad += [0, t - s]
    return F.pad(x, pad), tuple(shape)


@torch.no_grad()
def predict(
    model: UNet, image: torch.Tensor, patch_size: tuple[int, ...], device: torch.device, max_voxels: int
) -> torch.Tensor:
    """Class probabilities ``(C, *spatial)`` of one image: whole volume if small, else a sliding window."""
    model.eval()
    x, shape = _pad_to_multiple(image[None].to(device), model.divisor)
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")
    if math.prod(x.shape[2:]) <= max_voxels:
        with autocast:
            probs = torch.softmax(model(x).float(), 1)[0]
    else:
        # Windows of the training patch size with half overlap, averaged.
        size = [min(p, s) for p, s in zip(patch_size, x.shape[2:], strict=True)]
        size = [max(model.divisor, s // model.divisor * model.divisor) for s in size]
        starts = [
            sorted({*range(0, max(s - p, 0) + 1, max(p // 2, 1)), max(s - p, 0)})
            for s, p in zip(x.shape[2:], size, strict=True)
        ]
        probs = None
        weight = torch.zeros(x.shape[2:], device=device)
        for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(size)):
            region = tuple(slice(int(c), int(c) + p) for c, p in zip(corner, size, strict=True))
            with autocast:
                out = torch.softmax(model(x[(slice(None), slice(None), *region)]).float(), 1)[0]
            if probs is None:
                probs = torch.zeros((out.shape[0], *x.shape[2:]), device=device)
            probs[(slice(None), *region)] += out
            weight[region] += 1
        probs = probs / weight
    return probs[(slice(None), *(slice(0, s) for s in shape))].cpu()


def validate(
    model: UNet,
    dataset: SkeletonDataset,
    n_classes: int,
    patch_size: tuple[int, ...],
    device: torch.device,
    max_voxels: int,
) -> dict[str, float]:
    """Mean over validation cases of the class-averaged Dice, clDice and Betti errors."""
    store = open_store(dataset.store_path)
    results = []
    for index, case in enumerate(dataset.cases):
        item = dataset[index]
        pred = predict(model, item["image"], patch_size, device, max_voxels).argmax(0).numpy()
        gt = item["label"][0].numpy()
        thin = store_thin(store, case.case_id, case.mask, gt)
        results.append(evaluate_case(pred, gt, classes=range(1, n_classes), gt_thin=thin)["mean"])
    return mean_metrics(results)


# --------------------------------------------------------------------------------------------
# Curves


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss terms per epoch, validation Dice/clDice and Betti errors, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("total", "dice", "ce", "recall"):
        axes[0].plot(epochs, [h["train"][key] for h in history], marker="o", label=key)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[0].legend()
    val = [h for h in history if h.get("val")]
    for key in ("dice", "cldice", "topology_precision", "topology_sensitivity"):
        axes[1].plot([h["epoch"] for h in val], [h["val"][key] for h in val], marker="o", label=key)
    axes[1].set(title="validation", xlabel="epoch", ylim=(0, 1.02))
    axes[1].legend()
    for key in ("betti0_error", "betti1_error"):
        axes[2].plot([h["epoch"] for h in val], [h["val"][key] for h in val], marker="o", label=key)
    axes[2].set(title="validation Betti errors", xlabel="epoch")
    axes[2].legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, except where there is none to show (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("dataset", type=Path, help="dataset folder (nnU-Net raw or generic, with images)")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder")
    p.add_argument("--store", help="store path (default: DATASET/skeletons.zarr)")
    p.add_argument("--no-build", action="store_true", help="fail instead of building a missing/stale store")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--steps-per-epoch", type=int, default=50, help="batches per epoch")
    p.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        help="patch size, one value or one per axis (default: 2D 256, 3D 64)",
    )
    p.add_argument("--batch-size", type=int, default=2, help="patches per step")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument(
        "--val-fraction", type=float, default=0.25, help="fraction of cases held out (by case, seeded)"
    )
    p.add_argument(
        "--recall-weight", type=float, default=1.0, help="weight of the Skeleton Recall term (0: baseline)"
    )
    p.add_argument(
        "--foreground-prob", type=float, default=0.33, help="fraction of patches centred on the tube"
    )
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (poly decay)")
    p.add_argument("--base-channels", type=int, default=16, help="channels of the first level")
    p.add_argument("--levels", type=int, default=4, help="resolution levels of the U-Net")
    p.add_argument("--no-deep-supervision", action="store_true", help="train the full-resolution output only")
    p.add_argument("--batch-dice", action="store_true", help="Dice and recall summed over the batch")
    p.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: CUDA if available"
    )
    p.add_argument("--val-max-voxels", type=int, default=2**22, help="larger cases use a sliding window")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the patches and the weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def pick_device(choice: str) -> torch.device:
    """The training device: ``auto`` takes CUDA when there is one."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("train: error: --device cuda but no CUDA device is available")
    return torch.device(choice)


def make_datasets(
    args: argparse.Namespace, store: str, ndim: int, divisor: int
) -> tuple[SkeletonDataset, SkeletonDataset | None, tuple[int, ...]]:
    """(training patches, whole validation cases or None, patch size), split by case."""
    all_ids = [c.case_id for c in discover(args.dataset).cases]
    train_ids, val_ids = split_cases(all_ids, args.val_fraction, args.seed)
    patch = args.patch_size or [256 if ndim == 2 else 64]
    patch_size = tuple(patch * ndim if len(patch) == 1 else patch)
    if len(patch_size) != ndim or any(p % divisor for p in patch_size):
        sys.exit(f"train: error: --patch-size {patch_size} must have {ndim} values divisible by {divisor}")
    train_ds = SkeletonDataset(
        args.dataset, store, patch_size=patch_size, foreground_prob=args.foreground_prob, case_ids=train_ids
    )
    val_ds = SkeletonDataset(args.dataset, store, case_ids=val_ids) if val_ids else None
    return train_ds, val_ds, patch_size


def make_loader(args: argparse.Namespace, dataset: SkeletonDataset, device: torch.device) -> DataLoader:
    """Random patches with replacement, ``steps_per_epoch`` batches per epoch."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=args.steps_per_epoch * args.batch_size)
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )


def data_shape(dataset: Path, store: str) -> tuple[int, int]:
    """(ndim, input channels) of the dataset, from the store (stored images) or one case's image file."""
    opened = open_store(store)
    case_id = opened.case_ids[0]
    meta = opened.case_attrs(case_id) or {}
    channels = (meta.get("images") or {}).get("channels")
    if channels:
        return len(meta["shape"]), len(channels)
    probe = SkeletonDataset(dataset, store, case_ids=[case_id])
    return probe.ndim, int(probe[0]["image"].shape[0])


class Trainer:
    """The model, loss, optimizer and schedule of a run, and one epoch of training steps.

    ``compound`` replaces the default :class:`CompoundLoss` (from ``args``): any module
    called as ``loss(logits, label, tube)`` with a ``terms`` method returning at least
    ``total``, ``dice``, ``ce`` and ``recall``.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        model: UNet,
        n_classes: int,
        ignore: int | None,
        device,
        compound: nn.Module | None = None,
    ):
        self.args, self.model, self.device = args, model.to(device), device
        self.compound = compound or CompoundLoss(
            recall_weight=args.recall_weight, batch_dice=args.batch_dice, ignore_index=ignore
        )
        self.criterion = DeepSupervisionLoss(self.compound) if model.deep_supervision else self.compound
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
        total_steps = args.epochs * args.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (1 - step / total_steps) ** 0.9
        )
        self.use_amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimization step; returns the loss and its terms at full resolution."""
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        tube = batch["tube"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
            outputs = self.model(image)
        # The loss runs in float32 (CompoundLoss casts), outside autocast.
        loss = self.criterion(outputs, label, tube)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        with torch.no_grad():  # the terms at full resolution, for the curves
            full = outputs[0] if isinstance(outputs, list) else outputs
            terms = self.compound.terms(full.detach(), label, tube)
        return loss, terms

    def epoch(self, loader: DataLoader, epoch: int) -> tuple[dict[str, Any], list[dict[str, float]]]:
        """Train one epoch; returns its record and, per step, the loader wait and the compute time.

        ``wait_seconds`` is the time the step waited for its batch from the
        DataLoader (0 when the workers keep up); ``compute_seconds`` the wall
        time of the step itself, ``cpu_seconds`` this process's CPU time in it
        (steadier than wall time on a busy machine).
        """
        from tqdm import tqdm

        self.model.train()
        sums = {k: 0.0 for k in ("total", "dice", "ce", "recall")}
        steps: list[dict[str, float]] = []
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{self.args.epochs}", file=sys.stderr, disable=self.args.no_progress
        )
        t_data = time.perf_counter()
        for batch in bar:
            t_start, c_start = time.perf_counter(), time.process_time()
            loss, terms = self.step(batch)
            t_end = time.perf_counter()
            steps.append(
                {
                    "wait_seconds": t_start - t_data,
                    "compute_seconds": t_end - t_start,
                    "cpu_seconds": time.process_time() - c_start,
                }
            )
            for k in sums:
                sums[k] += float(terms[k])
            bar.set_postfix(loss=f"{loss.item():.3f}")
            t_data = time.perf_counter()
        n = max(len(steps), 1)
        wait = sum(s["wait_seconds"] for s in steps)
        compute = sum(s["compute_seconds"] for s in steps)
        record = {
            "epoch": epoch,
            "train": {k: v / n for k, v in sums.items()},
            "lr": self.scheduler.get_last_lr()[0],
            "step_seconds": compute / n,
            "step_cpu_seconds": sum(s["cpu_seconds"] for s in steps) / n,
            "data_wait_seconds": wait / n,
            "loader_wait_fraction": wait / (wait + compute) if wait + compute > 0 else 0.0,
        }
        return record, steps

    def checkpoint(self, record: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": record["epoch"],
            "config": config,
            "record": record,
        }


def epoch_line(record: dict[str, Any]) -> str:
    """The one-line summary of an epoch printed to stderr."""
    val_text = ""
    if "val" in record:
        v = record["val"]
        val_text = (
            f" | val dice {v['dice']:.4f} clDice {v['cldice']:.4f}"
            f" b0err {v['betti0_error']:.2f} b1err {v['betti1_error']:.2f}"
        )
    return (
        f"epoch {record['epoch']}: loss {record['train']['total']:.4f}{val_text} | "
        f"{record['step_seconds'] * 1000:.0f} ms/step, loader wait {record['loader_wait_fraction']:.0%}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run training; returns the content of ``metrics.json``."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    store = args.store or default_store_path(args.dataset)
    check_images(args.dataset)
    ensure_store(args.dataset, store, allow_build=not args.no_build)

    n_classes, ignore = class_count(args.dataset, store)
    ndim, in_channels = data_shape(args.dataset, store)
    model = UNet(ndim, in_channels, n_classes, args.base_channels, args.levels, not args.no_deep_supervision)
    train_ds, val_ds, patch_size = make_datasets(args, store, ndim, model.divisor)
    loader = make_loader(args, train_ds, device)
    trainer = Trainer(args, model, n_classes, ignore, device)
    config = {
        "ndim": ndim,
        "in_channels": in_channels,
        "n_classes": n_classes,
        "base": args.base_channels,
        "levels": args.levels,
        "deep_supervision": model.deep_supervision,
        "patch_size": list(patch_size),  # pipelines/predict.py's sliding window
    }

    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "args": {k: os.fspath(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "ndim": ndim,
        "n_classes": n_classes,
        "patch_size": list(patch_size),
        "train_cases": train_ds.case_ids,
        "val_cases": val_ds.case_ids if val_ds is not None else [],
        "streamed_from_store": train_ds.streamed,
        "epochs": [],
        "steps": [],
    }
    print(
        f"{ndim}D, {in_channels} channel(s), {n_classes} classes, {len(train_ds)} train / "
        f"{len(summary['val_cases'])} val cases, patch {patch_size}, device {summary['device']}, "
        f"recall weight {args.recall_weight}",
        file=sys.stderr,
    )
    best_score = -math.inf
    for epoch in range(1, args.epochs + 1):
        record, steps = trainer.epoch(loader, epoch)
        summary["steps"].extend({"epoch": epoch, "step": i, **s} for i, s in enumerate(steps))
        if val_ds is not None:
            record["val"] = validate(model, val_ds, n_classes, patch_size, device, args.val_max_voxels)
            score = record["val"]["cldice"]
        else:
            score = -record["train"]["total"]
        summary["epochs"].append(record)
        checkpoint = trainer.checkpoint(record, config)
        torch.save(checkpoint, args.out / "last.pt")
        if score > best_score:
            best_score = score
            summary["best_epoch"] = epoch
            torch.save(checkpoint, args.out / "best.pt")
        print(epoch_line(record), file=sys.stderr)
        write_summary(summary, args.out)
    print(
        f"mean time per training step: {summary['mean_step_seconds'] * 1000:.1f} ms wall,"
        f" {summary['mean_step_cpu_seconds'] * 1000:.1f} ms CPU, loader wait {summary['loader_wait_fraction']:.1%}"
        f" of the step time ({len(summary['steps'])} steps, {summary['device']}); outputs in {args.out}",
    )
    return summary


def write_summary(summary: dict[str, Any], out: Path) -> None:
    """Fill in the run's means over every step so far; write ``metrics.json`` and ``curves.png``."""
    steps = summary["steps"]
    wait = sum(s["wait_seconds"] for s in steps)
    compute = sum(s["compute_seconds"] for s in steps)
    summary["mean_step_seconds"] = compute / len(steps) if steps else None
    summary["mean_step_cpu_seconds"] = sum(s["cpu_seconds"] for s in steps) / len(steps) if steps else None
    summary["mean_data_wait_seconds"] = wait / len(steps) if steps else None
    summary["loader_wait_fraction"] = wait / (wait + compute) if wait + compute > 0 else 0.0
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curves(summary["epochs"], out / "curves.png")


if __name__ == "__main__":
    main()
