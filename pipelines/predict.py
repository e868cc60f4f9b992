#!/usr/bin/env python
"""Predict label maps with a checkpoint of ``pipelines/train.py``, for ``skelprep eval``.

Input, one of:

* a dataset folder, as ``skelprep build`` takes it (nnU-Net raw ``imagesTr/`` + ``labelsTr/``, generic
  ``images/`` + ``labels/``): every case with an image;
* an image folder (``DATASET/imagesTs``, your own): PNG, NIfTI or TIFF images, channels of one case named
  ``<case>_0000``, ``<case>_0001``, ... as in nnU-Net (a file without such a suffix is one channel);
* a skelprep store built ``--with-images``: the images it holds.

Output, in ``--out``: one label map per case in the mask format, named by the case id that ``skelprep eval``
pairs with the ground truth (the path relative to the image or label folder, without extension and channel
suffix): ``<case>.png`` for 2D (8-bit, 16-bit past 256 classes), ``<case>.nii.gz`` for 3D with the source
image's affine (the store's for a store; the spacing on the diagonal for TIFF). Each file is written to a
temporary name and renamed, so an interrupted run leaves no half-written prediction.

Images are z-scored per case and channel, as ``train.py`` trains (``SkeletonDataset``'s default). A case
larger than the patch in any axis is predicted with a sliding window of the training patch size (recorded in
the checkpoint; ``--patch-size`` otherwise), ``--overlap`` between neighbouring windows and Gaussian
(default, nnU-Net's: the window centre counts most) or uniform weighting; smaller cases are predicted whole.

A case that cannot be predicted (unreadable image, wrong number of channels or dimensions, no image) is one
line on stderr naming the file and the reason; the others are predicted and the exit code is 1.

This is a pipeline beside ``train.py`` and not a ``skelprep predict`` command: it needs torch and
``train.py``'s model class, while the ``skelprep`` package (and its command line) stays light, without
torch, and knows no model.

Examples
--------
Train briefly on the bundled road cracks, predict, score (CPU, about a minute)::

    python pipelines/train.py examples/road_cracks --out runs/cracks --epochs 1 --steps-per-epoch 10 \\
        --patch-size 128 --device cpu
    python pipelines/predict.py runs/cracks/best.pt examples/road_cracks --out runs/cracks/pred
    skelprep eval runs/cracks/pred examples/road_cracks
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from skelprep.io import IMAGE_SUFFIXES, InputError, read_image, split_suffix
from skelprep.layout import LayoutError, discover
from skelprep.store import StoreError, open_store
from skelprep.torch.dataset import normalize_image

_CHANNEL = re.compile(r"_(\d{4})$")


def _load_train():
    """``pipelines/train.py`` as a module (the pipelines folder is no package): its ``UNet`` and devices."""
    path = Path(__file__).resolve().parent / "train.py"
    spec = importlib.util.spec_from_file_location("skelprep_train_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load_train()


class PredictError(Exception):
    """The checkpoint or the input as a whole cannot be used (one line)."""


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Item:
    """One case to predict: its id and where its image comes from (files, or a store case)."""

    case_id: str
    images: tuple[Any, ...] = ()  # image files in channel order
    store_case: Any = None  # skelprep.store.CaseTargets with images
    problem: str | None = None  # why it cannot be predicted, "<file>: <reason>"

    def read(self) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...]]:
        """(channel-first image, 4x4 affine or None, spacing)."""
        if self.store_case is not None:
            case = self.store_case
            affine = case.attrs.get("affine")
            return case.image[...], None if affine is None else np.asarray(affine), case.spacing
        volumes = [read_image(path) for path in self.images]
        shapes = {v.array.shape[1:] for v in volumes}
        if len(shapes) > 1:
            raise InputError(self.images[0], f"channels of case '{self.case_id}' differ in shape ({shapes})")
        image = np.concatenate([v.array for v in volumes], axis=0)
        return image, volumes[0].affine, volumes[0].spacing


@dataclass
class Inputs:
    kind: str  # "dataset", "images" or "store"
    items: list[Item] = field(default_factory=list)


def _image_folder(folder: Path) -> Inputs:
    """Images below ``folder`` grouped by case id (``_0000`` channel suffixes), hidden entries skipped."""
    by_case: dict[str, list[tuple[int, Path]]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".zarr"))
        for name in filenames:
            if name.startswith(".") or not split_suffix(name, IMAGE_SUFFIXES)[1]:
                continue
            path = Path(dirpath) / name
            stem = split_suffix(path.relative_to(folder).as_posix(), IMAGE_SUFFIXES)[0]
            match = _CHANNEL.search(stem)
            case_id = stem[: match.start()] if match else stem
            by_case.setdefault(case_id, []).append((int(match.group(1)) if match else 0, path))
    if not by_case:
        raise PredictError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    items = []
    for case_id, found in sorted(by_case.items()):
        channels = sorted(found)
        numbers = [c for c, _ in channels]
        if numbers != list(range(len(numbers))):
            names = ", ".join(p.name for _, p in channels)
            items.append(
                Item(case_id, problem=f"{channels[0][1]}: channels must be _0000, _0001, ... ({names})")
            )
        else:
            items.append(Item(case_id, tuple(p for _, p in channels)))
    return Inputs("images", items)


def _store(path: Path) -> Inputs:
    store = open_store(path)
    items = []
    for case_id in store.case_ids:
        case = store[case_id]
        if case.has_images:
            items.append(Item(case_id, store_case=case))
        else:
            reason = "holds no image (built without --with-images); give the dataset folder instead"
            items.append(Item(case_id, problem=f"{path}/{case_id}: {reason}"))
    if not items:
        raise PredictError(f"{path}: the store holds no complete case")
    return Inputs("store", items)


def _dataset(folder: Path) -> Inputs:
    layout = discover(folder)
    items = [Item(c.case_id, c.images) for c in layout.cases if c.images]
    items += [
        Item(c.case_id, problem=str(c.image_problem or f"{c.mask}: no image for case '{c.case_id}'"))
        for c in layout.cases
        if not c.images
    ]
    items += [Item(p.case_id, problem=str(p)) for p in layout.problems]
    if all(item.problem for item in items) and not any(c.images for c in layout.cases):
        raise PredictError(f"{folder}: the dataset has no images (imagesTr/ or images/) to predict from")
    return Inputs("dataset", sorted(items, key=lambda i: i.case_id))


def find_inputs(source: Path) -> Inputs:
    """What to predict in ``source``: a store, a dataset folder (as ``skelprep build`` takes), or images."""
    if not source.exists():
        raise PredictError(f"{source}: not found")
    if not source.is_dir():
        raise PredictError(f"{source}: not a folder (expected a dataset folder, an image folder or a store)")
    if (source / "zarr.json").is_file():
        return _store(source)
    if (source / "dataset.json").exists() or any(
        (source / n).is_dir() for n in ("labels", "masks", "labelsTr")
    ):
        return _dataset(source)
    return _image_folder(source)


# --------------------------------------------------------------------------------------------
# Model


def load_model(checkpoint: Path, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """(the model in eval mode, its config) from a ``train.py`` checkpoint (``last.pt``, ``best.pt``)."""
    if not checkpoint.is_file():
        raise PredictError(f"{checkpoint}: checkpoint not found")
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many types for a file that is not a checkpoint
        raise PredictError(f"{checkpoint}: not a torch checkpoint ({type(exc).__name__})") from exc
    if not isinstance(saved, dict) or not {"model", "config"} <= saved.keys():
        raise PredictError(f"{checkpoint}: not a checkpoint of pipelines/train.py (no 'model' and 'config')")
    config = saved["config"]
    model = train.UNet(
        config["ndim"],
        config["in_channels"],
        config["n_classes"],
        config["base"],
        config["levels"],
        config.get("deep_supervision", True),
    )
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise PredictError(f"{checkpoint}: weights do not fit the model its config describes") from exc
    return model.to(device).eval(), config


def importance_map(size: tuple[int, ...], weighting: str) -> torch.Tensor:
    """Per-voxel weight of a window: a Gaussian (sigma 1/8 of the window, peak 1) or ones."""
    if weighting == "uniform":
        return torch.ones(size)
    weights = torch.ones(())
    for n in size:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        weights = weights[..., None] * torch.exp(-0.5 * (x / (n / 8)) ** 2)
    return weights / weights.max()


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Evenly spread window starts covering ``length``, neighbours overlapping by at least ``overlap``."""
    if length <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    n = math.ceil((length - window) / step) + 1
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


@torch.no_grad()
def predict_case(
    model: Any,
    image: torch.Tensor,
    patch_size: tuple[int, ...],
    device: torch.device,
    *,
    overlap: float = 0.5,
    weighting: str = "gaussian",
) -> torch.Tensor:
    """Class probabilities ``(C, *spatial)`` of one normalized image ``(channels, *spatial)``.

    The image is zero-padded to a multiple of the model's divisor; if it then fits in the patch it is
    predicted whole, else by windows of the patch size whose softmax outputs are averaged with the weights
    of :func:`importance_map`.
    """
    x = image[None].to(device)
    shape = x.shape[2:]
    padded = [math.ceil(s / model.divisor) * model.divisor for s in shape]
    pad = []
    for s, p in zip(reversed(shape), reversed(padded), strict=True):
        pad += [0, p - s]
    x = F.pad(x, pad)
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")
    window = tuple(min(p, s) for p, s in zip(patch_size, padded, strict=True))
    if window == tuple(padded):
        with autocast:
            probs = torch.softmax(model(x).float(), 1)[0]
    else:
        weights = importance_map(window, weighting).to(device)
        probs = None
        total = torch.zeros(padded, device=device)
        starts = [window_starts(s, w, overlap) for s, w in zip(padded, window, strict=True)]
        for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(window)):
            region = tuple(slice(int(c), int(c) + w) for c, w in zip(corner, window, strict=True))
            with autocast:
                out = torch.softmax(model(x[(slice(None), slice(None), *region)]).float(), 1)[0]
            if probs is None:
                probs = torch.zeros((out.shape[0], *padded), device=device)
            probs[(slice(None), *region)] += out * weights
            total[region] += weights
        probs = probs / total
    return probs[(slice(None), *(slice(0, s) for s in shape))].cpu()


# --------------------------------------------------------------------------------------------
# Output


def write_label_map(labels: np.ndarray, out: Path, case_id: str, affine: np.ndarray | None, spacing) -> Path:
    """Write ``labels`` as ``out/<case_id>.png`` (2D) or ``.nii.gz`` (3D), via a hidden temporary file."""
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    labels = labels.astype(dtype)
    suffix = ".png" if labels.ndim == 2 else ".nii.gz"
    path = out / (case_id + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden (skelprep eval skips it) and with the real suffix (nibabel compresses by the name).
    partial = path.with_name(f".{path.name[: -len(suffix)]}.partial{suffix}")
    if labels.ndim == 2:
        from PIL import Image

        Image.fromarray(labels).save(partial)
    else:
        import nibabel as nib

        if affine is None:
            affine = np.diag([*map(float, spacing), 1.0])
        nib.save(nib.Nifti1Image(labels, np.asarray(affine, dtype=np.float64)), partial)
    os.replace(partial, path)
    return path


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=train.HelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint of pipelines/train.py (best.pt, last.pt)")
    p.add_argument("input", type=Path, help="dataset folder, image folder, or store built --with-images")
    p.add_argument("--out", type=Path, required=True, help="folder for the predicted label maps")
    p.add_argument(
        "--patch-size", type=int, nargs="+", help="window size (default: the checkpoint's training patch)"
    )
    p.add_argument("--overlap", type=float, default=0.5, help="overlap of neighbouring windows, in [0, 1)")
    p.add_argument("--weighting", choices=("gaussian", "uniform"), default="gaussian", help="window weights")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="where the model runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not 0 <= args.overlap < 1:
        p.error(f"--overlap {args.overlap}: expected a value in [0, 1)")
    return args


def _patch_size(args: argparse.Namespace, config: dict[str, Any], divisor: int) -> tuple[int, ...]:
    ndim = config["ndim"]
    patch = args.patch_size or config.get("patch_size") or [256 if ndim == 2 else 64]
    patch = tuple(patch * ndim if len(patch) == 1 else patch)
    if len(patch) != ndim or any(p <= 0 or p % divisor for p in patch):
        raise PredictError(f"--patch-size {list(patch)}: expected {ndim} values divisible by {divisor}")
    return patch


def run(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """Predict every case; returns (files written, one line per case that failed)."""
    from tqdm import tqdm

    device = train.pick_device(args.device)
    model, config = load_model(args.checkpoint, device)
    patch = _patch_size(args, config, model.divisor)
    inputs = find_inputs(args.input)
    written, failed = [], []
    for item in tqdm(inputs.items, desc="predict", unit="case", file=sys.stderr, disable=args.no_progress):
        if item.problem:
            failed.append(item.problem)
            continue
        where = item.images[0] if item.images else f"{args.input}/{item.case_id}"
        try:
            image, affine, spacing = item.read()
        except InputError as exc:
            failed.append(str(exc))
            continue
        if image.ndim - 1 != config["ndim"]:
            failed.append(f"{where}: {image.ndim - 1}D image, the model is {config['ndim']}D")
            continue
        if image.shape[0] != config["in_channels"]:
            failed.append(f"{where}: {image.shape[0]} channel(s), the model takes {config['in_channels']}")
            continue
        tensor = torch.from_numpy(normalize_image(image))
        probs = predict_case(model, tensor, patch, device, overlap=args.overlap, weighting=args.weighting)
        written.append(write_label_map(probs.argmax(0).numpy(), args.out, item.case_id, affine, spacing))
    return written, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written, failed = run(args)
    except (PredictError, InputError, LayoutError, StoreError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 1
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    print(f"{len(written)} predicted, {len(failed)} failed -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
