"""Topology: the losses from stored targets against their references computing the targets per step.

Two parts (section ``topology``, run when named in ``--sections``):

* **losses** - forward + backward of ``CbDiceLoss``, ``ClDiceLoss``, ``BoundaryLoss`` and
  ``HausdorffDTLoss`` (:mod:`skelprep.torch.topology`) on targets computed beforehand, as a
  store delivers them with the patch, against the same losses with the ground-truth side
  derived every step as the authors' code derives it (the parity tests hold the losses equal
  to that code's numbers): cbDice (``SoftcbDiceLoss``) the foreground's soft skeleton and
  MONAI's EDT, clDice (``soft_cldice``) the soft skeleton of the one-hot, the boundary loss
  (``one_hot2dist``) SciPy's EDT outside and inside each class of each sample, and MONAI's
  ``HausdorffDTLoss`` itself (an EDT of the prediction and of each class of the ground truth
  every call, where ours computes the prediction's alone). Batches of 2D ``512^2`` and 3D
  ``128^3`` in full mode. Time in this process (the label and our stored maps already on the
  device), peak memory in a fresh subprocess per batch (peak RSS above the inputs, high-water
  mark reset per loss) or ``torch.cuda.max_memory_allocated`` with ``--device cuda``.
* **targets** - the compute time of each target of :mod:`skelprep.targets` on one generated
  vessel case (160x320x320 in full mode) against the tube's (``skeleton_targets``): what each
  adds to a build. The radius takes the thin skeleton the tube's computation already made.
"""

from __future__ import annotations

import gc
import os
from functools import partial
from typing import Any

import numpy as np
from synthetic import vessel_tree_volume

from .common import Comparison, Config, Part, fmt_t, interleaved, log, loss_rows, medians
from .loss import _rss_bytes, memory_child_run

# (B, C, *spatial) of the loss batches and the shape of the targets' case, per mode
SIZES = {
    "tiny": {"2D": (1, 3, 64, 64), "3D": (1, 3, 16, 16, 16), "case": (32, 64, 64), "reps": 1},
    "quick": {"2D": (2, 3, 128, 128), "3D": (1, 3, 32, 32, 32), "case": (64, 128, 128), "reps": 3},
    "full": {"2D": (2, 3, 512, 512), "3D": (2, 3, 128, 128, 128), "case": (160, 320, 320), "reps": 5},
}
LOSSES = ("cbDice", "clDice", "boundary", "Hausdorff")
# the losses whose speed and memory are targets: <= 0.5x the reference's time, memory not higher
HEADLINE = ("cbDice", "Hausdorff")
OURS, REFERENCE = "stored targets (skelprep)", "targets per step, as the reference"


def _labels(shape: tuple[int, ...], n_classes: int, seed: int) -> np.ndarray:
    """``(B, *spatial)`` vessel label maps: generated trees (3D) or their maximum projections (2D)."""
    batch, spatial = shape[0], shape[2:]
    out = []
    for b in range(batch):
        if len(spatial) == 3:
            out.append(vessel_tree_volume(spatial, n_classes=n_classes, target_fraction=0.03, seed=seed + b))
        else:
            volume = vessel_tree_volume(
                (24, *spatial), n_classes=n_classes, target_fraction=0.01, seed=seed + b
            )
            out.append(volume.max(axis=0))
    return np.stack(out)


def _inputs(shape: tuple[int, ...], device: str) -> dict[str, Any]:
    """Logits, the label, and every stored target of the batch (computed here, outside the timings)."""
    import torch

    from skelprep.skeleton import thin_skeleton
    from skelprep.targets import signed_distance, skeleton_radius

    n_classes = shape[1] - 1
    label = _labels(shape, n_classes, seed=1)
    foreground = tuple(range(1, n_classes + 1))
    thin = np.stack([thin_skeleton(lab) for lab in label])
    stored = {
        "thin": thin[:, None],
        "sdf_fg": np.stack([signed_distance(lab, [foreground], spacing=None) for lab in label]),
        "radius": np.stack(
            [skeleton_radius(lab, t, spacing=None) for lab, t in zip(label, thin, strict=True)]
        )[:, None],
        "sdf": np.stack([signed_distance(lab, list(foreground), spacing=None) for lab in label]),
    }
    g = torch.Generator().manual_seed(0)
    target = torch.from_numpy(label).long()[:, None]
    onehot = torch.zeros(shape).scatter_(1, target, 1.0)
    logits = (2.0 * onehot + torch.randn(shape, generator=g)).to(device).requires_grad_(True)
    out = {"logits": logits, "label": target.to(device)}
    out.update({k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in stored.items()})
    out["thin"] = out["thin"].long()
    return out


def _sides(ndim: int) -> dict[str, Any]:
    """name -> f(inputs) returning the loss: ours on stored targets, and the same loss on the ground-truth side
    derived per step as the authors' code derives it (imported lazily: torch, MONAI)."""
    import torch
    from monai.losses import HausdorffDTLoss as MonaiHausdorffDTLoss
    from monai.transforms import distance_transform_edt as monai_edt
    from scipy.ndimage import distance_transform_edt as scipy_edt

    from skelprep.torch.topology import BoundaryLoss, CbDiceLoss, ClDiceLoss, HausdorffDTLoss, soft_skeleton

    cb, cl, hd = CbDiceLoss(), ClDiceLoss(), HausdorffDTLoss()
    hd_reference = MonaiHausdorffDTLoss(include_background=False, to_onehot_y=True, softmax=True)
    boundary, boundary_shifted = BoundaryLoss(), BoundaryLoss(inside_offset=0.0)

    def cbdice_per_step(x):
        # SoftcbDiceLoss: the foreground's soft skeleton and MONAI's EDT of the foreground, every call
        with torch.no_grad():
            mask = (x["label"] > 0).float()
            skel = soft_skeleton(mask, 10)
            inside = monai_edt(mask[:, 0]).float().unsqueeze(1)
            sdf = torch.where(mask > 0, -inside, torch.ones_like(inside))
        return cb(x["logits"], sdf, inside * skel)

    def cldice_per_step(x):
        # soft_cldice: the soft skeleton of the one-hot ground truth, every call
        with torch.no_grad():
            onehot = torch.zeros_like(x["logits"]).scatter_(1, x["label"], 1.0)[:, 1:]
            skel = soft_skeleton(onehot, 10)
            ids = torch.arange(1, onehot.shape[1] + 1, device=skel.device).view(1, -1, *(1,) * ndim)
            thin = (skel * ids).amax(1, keepdim=True).long()
        return cl(x["logits"], x["label"], thin)

    def boundary_per_step(x):
        # one_hot2dist: SciPy's EDT outside and inside each class of each sample, inside shifted by 1
        label = x["label"][:, 0].cpu().numpy()
        maps = []
        for lab in label:
            per_class = []
            for c in range(1, x["logits"].shape[1]):
                pos = lab == c
                phi = np.zeros(lab.shape, np.float32)
                if pos.any():
                    phi = scipy_edt(~pos) * ~pos - (scipy_edt(pos) - 1) * pos
                per_class.append(phi.astype(np.float32))
            maps.append(np.stack(per_class))
        return boundary_shifted(x["logits"], torch.from_numpy(np.stack(maps)).to(x["logits"].device))

    return {
        f"cbDice, {OURS}": lambda x: cb(x["logits"], x["sdf_fg"], x["radius"]),
        f"cbDice, {REFERENCE}": cbdice_per_step,
        f"clDice, {OURS}": lambda x: cl(x["logits"], x["label"], x["thin"]),
        f"clDice, {REFERENCE}": cldice_per_step,
        f"boundary, {OURS}": lambda x: boundary(x["logits"], x["sdf"]),
        f"boundary, {REFERENCE}": boundary_per_step,
        f"Hausdorff, {OURS}": lambda x: hd(x["logits"], x["sdf"]),
        f"Hausdorff, {REFERENCE}": lambda x: hd_reference(x["logits"], x["label"]),
    }


def _step(sides: dict[str, Any], name: str, x: dict[str, Any], device: str) -> None:
    import torch

    x["logits"].grad = None
    sides[name](x).backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_child(spec: dict[str, Any]) -> dict[str, int]:
    """In a fresh process: peak RSS of one forward + backward of each side, above the inputs (Linux)."""
    import torch

    torch.set_num_threads(spec["threads"])
    shape = tuple(spec["shape"])
    sides = _sides(len(shape) - 2)
    x = _inputs(shape, "cpu")
    for name in sides:  # warm-up: one-off allocations are no loss's
        _step(sides, name, x, "cpu")
    out = {}
    for name in sides:
        x["logits"].grad = None
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_bytes("VmRSS")
        _step(sides, name, x, "cpu")
        out[name] = _rss_bytes("VmHWM") - base
    return out


def _memory(shape: tuple[int, ...], sides: dict[str, Any], x: dict[str, Any], device: str, threads: int):
    import torch

    if device.startswith("cuda"):
        out = {}
        for name in sides:
            x["logits"].grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            _step(sides, name, x, device)
            out[name] = torch.cuda.max_memory_allocated() - base
        return out, "torch.cuda.max_memory_allocated above the inputs"
    how = "peak RSS above the inputs, fresh subprocess, high-water mark reset per loss"
    return memory_child_run("--topology-memory-child", {"shape": list(shape), "threads": threads}), how


def bench_losses(sizes: dict[str, Any], reps: int, device: str) -> dict[str, Any]:
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    results: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "threads": threads,
        "configs": {},
    }
    for key in ("2D", "3D"):
        shape = sizes[key]
        log(f"topology losses {key} {shape}")
        x = _inputs(shape, device)
        sides = _sides(len(shape) - 2)
        for name in sides:  # warm-up
            _step(sides, name, x, device)
        timings = interleaved({name: partial(_step, sides, name, x, device) for name in sides}, reps)
        memory, how = _memory(shape, sides, x, device, threads)
        results["configs"][key] = {"shape": list(shape), "timings": timings, "peak_bytes": memory}
        results["memory_method"] = how
    return results


def bench_targets(shape: tuple[int, int, int], reps: int) -> dict[str, Any]:
    """Each target's compute time on one case against the tube's."""
    from skelprep.skeleton import skeleton_targets
    from skelprep.targets import components, signed_distance, skeleton_radius

    label = vessel_tree_volume(shape, n_classes=3, seed=3)
    classes = [int(c) for c in np.unique(label) if c]
    thin = skeleton_targets(label).thin
    sides = {
        "tube (skeleton_targets)": lambda: skeleton_targets(label),
        "sdf per class": lambda: signed_distance(label, classes, spacing=None),
        "sdf of the foreground": lambda: signed_distance(label, [tuple(classes)], spacing=None),
        "radius": lambda: skeleton_radius(label, thin, spacing=None),
        "components": lambda: components(label),
    }
    for fn in sides.values():  # warm-up: imports and first calls (numba's cache, edt, cc3d)
        fn()
    return {
        "shape": list(shape),
        "classes": classes,
        "foreground": float((label > 0).mean()),
        "timings": interleaved(sides, reps),
    }


def run(cfg: Config, device: str) -> Part:
    sizes = SIZES[cfg.mode]
    reps = sizes["reps"]
    log("topology")
    losses = bench_losses(sizes, reps, device)
    log(f"topology targets {sizes['case']}")
    targets = bench_targets(sizes["case"], reps)
    part = Part(sections={"topology losses": losses, "topology targets": targets})
    for key, conf in losses["configs"].items():
        t, mem = medians(conf["timings"]), conf["peak_bytes"]
        for loss in LOSSES:
            ours, ref = f"{loss}, {OURS}", f"{loss}, {REFERENCE}"
            if ref not in t:
                continue
            headline = loss in HEADLINE
            for what, values, unit, target, text in (
                ("time", t, "s", 2.0, "<= 0.5x (>= 2x)"),
                ("peak memory", mem, "B", 1.0, "not higher"),
            ):
                part.comparisons.append(
                    Comparison(
                        section="topology",
                        what=f"{loss} {key} {what}",
                        ours=OURS,
                        baseline=REFERENCE,
                        ours_value=values[ours],
                        baseline_value=values[ref],
                        unit=unit,
                        target=target if headline else None,
                        target_text=text if headline else "",
                    )
                )
    t = medians(targets["timings"])
    tube = t["tube (skeleton_targets)"]
    for name, value in t.items():
        if name.startswith("tube"):
            continue
        part.comparisons.append(
            Comparison(
                section="topology",
                what=f"target {name}, {'x'.join(map(str, targets['shape']))} case",
                ours=name,
                baseline="tube",
                ours_value=value,
                baseline_value=tube,
                target=1.0,
                target_text="<= the tube's time",
            )
        )
    return part


def report_lines(s: dict[str, Any]) -> list[str]:
    if "topology losses" not in s:
        return []
    lo, tg = s["topology losses"], s["topology targets"]
    lines = [
        f"## Topology losses, forward + backward ({lo['device']}, torch {lo['torch']}, {lo['threads']} threads)",
        "",
        "| batch (B, C, spatial) | loss | time (n) | peak memory, forward + backward |",
        "|---|---|---|---|",
    ]
    lines += loss_rows(lo["configs"], ("peak_bytes",))
    lines += ["", f"Peak memory: {lo['memory_method']}.", ""]
    lines += [
        f"## Topology targets, one case {'x'.join(map(str, tg['shape']))} "
        f"({100 * tg['foreground']:.2f} % foreground, classes {tg['classes']})",
        "",
        "| target | time |",
        "|---|---|",
        *[f"| {name} | {fmt_t(t)} |" for name, t in tg["timings"].items()],
        "",
    ]
    return lines
