"""Loss: ``SkeletonRecallLoss`` forward + backward against soft-clDice and the one-hot reference.

soft-clDice after Shit et al. (CVPR 2021), 3 and 10 iterations; the reference one-hot
formulation of the nnU-Net Skeleton Recall fork; the same loss on softmax (unfused).
Time in this process, peak memory in a fresh subprocess per configuration (peak RSS
above the inputs, reset between losses) or ``torch.cuda.max_memory_allocated`` with
``--device cuda``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .common import SCRIPT, Comparison, Config, Part, fmt_bytes, interleaved, log, loss_rows, medians

OURS = "SkeletonRecallLoss"
ONE_HOT = "one-hot recall (reference)"


UNFUSED = "SkeletonRecallLoss on softmax (unfused)"


def _loss_functions(n_dims: int):
    """name -> f(logits, label, tube) for the losses compared; imported lazily (torch)."""
    import torch
    import torch.nn.functional as F

    from skelprep.torch.loss import SkeletonRecallLoss

    recall = SkeletonRecallLoss()  # on logits: the fused path (no softmax kept)
    unfused_recall = SkeletonRecallLoss(apply_softmax=False)
    source = "skelprep.torch.loss.SkeletonRecallLoss"

    if n_dims == 2:
        pool = F.max_pool2d

        def soft_erode(img):
            p1 = -pool(-img, (3, 1), (1, 1), (1, 0))
            p2 = -pool(-img, (1, 3), (1, 1), (0, 1))
            return torch.min(p1, p2)
    else:
        pool = F.max_pool3d

        def soft_erode(img):
            p1 = -pool(-img, (3, 1, 1), (1, 1, 1), (1, 0, 0))
            p2 = -pool(-img, (1, 3, 1), (1, 1, 1), (0, 1, 0))
            p3 = -pool(-img, (1, 1, 3), (1, 1, 1), (0, 0, 1))
            return torch.min(torch.min(p1, p2), p3)

    def soft_dilate(img):
        return pool(img, 3, 1, 1)

    def soft_open(img):
        return soft_dilate(soft_erode(img))

    def soft_skel(img, iterations):
        skel = F.relu(img - soft_open(img))
        for _ in range(iterations):
            img = soft_erode(img)
            delta = F.relu(img - soft_open(img))
            skel = skel + F.relu(delta - skel * delta)
        return skel

    def soft_cldice(iterations: int):
        # Shit et al. (CVPR 2021), reference soft_cldice: y_true one-hot, y_pred softmax, background excluded
        def loss(logits, label, tube):
            probs = torch.softmax(logits.float(), 1)
            onehot = torch.zeros_like(probs).scatter_(1, label.long(), 1)
            skel_pred = soft_skel(probs, iterations)
            skel_true = soft_skel(onehot, iterations)
            smooth = 1.0
            tprec = ((skel_pred * onehot)[:, 1:].sum() + smooth) / (skel_pred[:, 1:].sum() + smooth)
            tsens = ((skel_true * probs)[:, 1:].sum() + smooth) / (skel_true[:, 1:].sum() + smooth)
            return 1.0 - 2.0 * (tprec * tsens) / (tprec + tsens)

        return loss

    def onehot_recall(logits, label, tube):
        # nnU-Net Skeleton Recall fork, SoftSkeletonRecallLoss: one-hot of the whole batch
        probs = torch.softmax(logits.float(), 1)
        onehot = torch.zeros(probs.shape, device=probs.device, dtype=probs.dtype).scatter_(1, tube.long(), 1)
        axes = tuple(range(2, probs.ndim))
        inter = (probs[:, 1:] * onehot[:, 1:]).sum(axes)
        count = onehot[:, 1:].sum(axes)
        return -((inter + 1e-5) / torch.clamp(count + 1e-5, min=1e-8)).mean()

    def unfused(logits, label, tube):
        # softmax, then the loss on probabilities (gather path; what CompoundLoss does)
        return unfused_recall(torch.softmax(logits.float(), 1), tube)

    sides = {
        "SkeletonRecallLoss": lambda logits, label, tube: recall(logits, tube),
        "one-hot recall (reference)": onehot_recall,
        "soft-clDice 3 it": soft_cldice(3),
        "soft-clDice 10 it": soft_cldice(10),
        UNFUSED: unfused,
    }
    return source, sides


def _loss_inputs(shape: Sequence[int], device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    b, c, *spatial = shape
    logits = torch.randn(b, c, *spatial, generator=g).to(device).requires_grad_(True)
    label = torch.randint(0, c, (b, 1, *spatial), generator=g)
    tube = label * (torch.rand(b, 1, *spatial, generator=g) < 0.1)  # a sparse tube inside the label
    return logits, label.to(device), tube.to(device)


def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def loss_memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: peak memory of forward + backward of each loss, above the inputs.

    Linux: the RSS high-water mark is reset (``/proc/self/clear_refs`` = 5) before
    each loss; glibc is made to mmap large blocks (``MALLOC_MMAP_THRESHOLD_``, set
    by the parent) so freed tensors leave RSS at once and losses do not share pages.
    """
    import torch

    torch.set_num_threads(spec["threads"])
    _, losses = _loss_functions(len(spec["shape"]) - 2)
    logits, label, tube = _loss_inputs(spec["shape"], "cpu")
    for name in spec["methods"]:  # warm-up: one-off allocations (kernels, thread pools) are no loss's
        if name.startswith("soft-clDice"):
            continue  # its peak is hundreds of MiB; one-offs do not matter, and it is slow
        logits.grad = None
        losses[name](logits, label, tube).backward()
    out: dict[str, dict[str, int]] = {"train": {}, "forward": {}}
    for name in spec["methods"]:
        for phase in ("train", "forward"):
            logits.grad = None
            gc.collect()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _rss_bytes("VmRSS")
            if phase == "train":
                losses[name](logits, label, tube).backward()
            else:
                with torch.no_grad():  # validation-style: no graph kept
                    losses[name](logits, label, tube)
            out[phase][name] = _rss_bytes("VmHWM") - base
    return out


def _bench_loss_config(
    shape: Sequence[int], methods: list[str], cfg: Config, device: str, threads: int
) -> tuple[str, dict[str, Any]]:
    """Time (this process) and peak memory (subprocess, or CUDA counters) of the losses on one batch."""
    import torch

    source, losses = _loss_functions(len(shape) - 2)
    logits, label, tube = _loss_inputs(shape, device)

    def run(name: str) -> Callable[[], None]:
        def fn() -> None:
            logits.grad = None
            losses[name](logits, label, tube).backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        return fn

    for name in methods:  # warm-up (allocator, kernels); soft-clDice is slow enough not to need it
        if not name.startswith("soft-clDice"):
            run(name)()
    timings = interleaved({name: run(name) for name in methods}, cfg.loss.reps, budget_s=cfg.loss.budget_s)
    if device.startswith("cuda"):
        memory: dict[str, dict[str, int]] = {"train": {}, "forward": {}}
        for name in methods:
            for phase in ("train", "forward"):
                logits.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                if phase == "train":
                    run(name)()
                else:
                    with torch.no_grad():
                        losses[name](logits, label, tube)
                torch.cuda.synchronize()
                memory[phase][name] = torch.cuda.max_memory_allocated() - base
        how = "torch.cuda.max_memory_allocated above the inputs"
    else:
        memory = _memory_in_subprocess(shape, methods, threads)
        how = "peak RSS above the inputs, fresh subprocess, high-water mark reset per loss"
    return source, {
        "shape": list(shape),
        "timings": timings,
        "peak_bytes": memory["train"],
        "peak_bytes_forward": memory["forward"],
        "memory_method": how,
    }


def bench_loss(cfg: Config, device: str) -> dict[str, Any]:
    import torch

    # distributed's LocalCluster sets OMP_NUM_THREADS=1 in this process's environment (for its
    # workers), which torch would inherit: train-like settings use every core.
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    results: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "threads": threads,
        "configs": {},
    }
    configs = {
        "2D": (
            cfg.loss.batch_2d,
            ["SkeletonRecallLoss", "one-hot recall (reference)", "soft-clDice 3 it", "soft-clDice 10 it"],
        ),
        "3D": (
            cfg.loss.batch_3d,
            ["SkeletonRecallLoss", "one-hot recall (reference)", "soft-clDice 3 it", "soft-clDice 10 it"],
        ),
        "3D, 13 classes": (cfg.loss.batch_13, ["SkeletonRecallLoss", "one-hot recall (reference)"]),
    }
    for _, methods in configs.values():  # the fused path against softmax + gather, same class ids
        methods.insert(1, UNFUSED)
    for key, (shape, methods) in configs.items():
        log(f"loss {key} {shape}")
        results["source"], results["configs"][key] = _bench_loss_config(shape, methods, cfg, device, threads)
    return results


def _memory_in_subprocess(
    shape: Sequence[int], methods: list[str], threads: int
) -> dict[str, dict[str, int]]:
    return memory_child_run(
        "--loss-memory-child", {"shape": list(shape), "methods": methods, "threads": threads}
    )


def memory_child_run(flag: str, spec: dict[str, Any]) -> Any:
    """What a memory child (``bench.py FLAG SPEC``) prints as JSON on its last line.

    glibc is made to mmap large blocks, so that freed tensors leave RSS at once and
    the child's losses do not share pages.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), flag, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess {flag} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------


def comparisons(key: str, conf: dict[str, Any]) -> list[Comparison]:
    """The summary rows of one batch configuration."""
    t = medians(conf["timings"])
    mem, fwd = conf["peak_bytes"], conf["peak_bytes_forward"]
    is3d, thirteen = key == "3D", key == "3D, 13 classes"

    row = partial(Comparison, section="loss", ours=OURS)

    # Headline memory row: peak memory beyond the logits gradient, which every loss must allocate.
    # Not whole peaks against the one-hot reference: both sides hold the float32 gradient of the
    # logits (B*C*spatial*4 bytes), which bounds the ratio of whole peaks; what a loss adds on top
    # is what it costs.
    grad = math.prod(conf["shape"]) * 4
    rows = [
        row(
            what=f"{key} extra memory beyond the logits gradient ({fmt_bytes(grad)})",
            baseline="one-hot recall",
            ours_value=max(mem[OURS] - grad, 1),
            baseline_value=max(mem[ONE_HOT] - grad, 1),
            unit="B",
            target=3.0 if thirteen else None,
            target_text=">= 3x less" if thirteen else "",
        )
    ]
    if "soft-clDice 10 it" in t:
        rows += [
            row(
                what=f"{key} time",
                baseline="soft-clDice 10 it",
                ours_value=t[OURS],
                baseline_value=t["soft-clDice 10 it"],
                target=50.0 if is3d else None,
                target_text="<= 2 % (>= 50x)" if is3d else "",
            ),
            row(
                what=f"{key} peak memory",
                baseline="soft-clDice 10 it",
                ours_value=mem[OURS],
                baseline_value=mem["soft-clDice 10 it"],
                unit="B",
                target=10.0 if is3d else None,
                target_text="<= 10 % (>= 10x)" if is3d else "",
            ),
        ]
    rows += [
        row(
            what=f"{key} time",
            baseline="one-hot recall",
            ours_value=t[OURS],
            baseline_value=t[ONE_HOT],
            target=1.0 if thirteen else None,
            target_text="faster (> 1x)" if thirteen else "",
        ),
        row(
            what=f"{key} peak memory",
            baseline="one-hot recall",
            ours_value=mem[OURS],
            baseline_value=mem[ONE_HOT],
            unit="B",
        ),
        row(what=f"{key} time", baseline=UNFUSED, ours_value=t[OURS], baseline_value=t[UNFUSED]),
        row(
            what=f"{key} peak memory",
            baseline=UNFUSED,
            ours_value=mem[OURS],
            baseline_value=mem[UNFUSED],
            unit="B",
        ),
        row(
            what=f"{key} peak memory, forward only",
            baseline="one-hot recall",
            ours_value=fwd[OURS],
            baseline_value=fwd[ONE_HOT],
            unit="B",
        ),
    ]
    return rows


def run(cfg: Config, device: str) -> Part:
    log("loss")
    lo = bench_loss(cfg, device)
    part = Part(sections={"loss": lo})
    for key, conf in lo["configs"].items():
        part.comparisons += comparisons(key, conf)
    return part


def report_lines(s: dict[str, Any]) -> list[str]:
    if "loss" not in s:
        return []
    lo = s["loss"]
    lines = [
        f"## Loss forward + backward ({lo['device']}, torch {lo['torch']}, {lo['threads']} threads; "
        f"SkeletonRecallLoss from {lo['source']})",
        "",
        "| batch (B, C, spatial) | loss | time (n) | peak memory, forward + backward | "
        "peak memory, forward only (no_grad) |",
        "|---|---|---|---|---|",
    ]
    lines += loss_rows(lo["configs"], ("peak_bytes", "peak_bytes_forward"))
    return lines + ["", f"Peak memory: {next(iter(lo['configs'].values()))['memory_method']}.", ""]
