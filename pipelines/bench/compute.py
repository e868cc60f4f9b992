"""Per-case compute: ``skelprep.skeleton_targets`` against the reference recipe on in-memory arrays.

Identical output is asserted (where no component needed skelprep's fallback skeleton,
which only adds voxels to the reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skelprep.skeleton import skeleton_targets

from .common import Comparison, Config, Part, interleaved, log, medians, reference_recipe, sides_table

DATASETS = ("real2d", "vessels3d")


def bench_compute(name: str, arrays: list[np.ndarray], reps: int) -> dict[str, Any]:
    """skeleton_targets against the recipe on in-memory arrays, identical output asserted."""
    fallbacks = 0
    for labels in arrays:
        ours = skeleton_targets(labels)
        ref = reference_recipe(labels)
        fallbacks += ours.fallback_components
        if ours.fallback_components == 0:
            if not np.array_equal(ours.tube, ref):
                raise AssertionError(f"{name}: skelprep tube differs from the reference recipe")
        elif not (ours.tube >= ref).all():  # fallback skeletons only add to the reference
            raise AssertionError(f"{name}: skelprep tube misses reference voxels")
    sides = {
        "reference recipe": lambda: [reference_recipe(a) for a in arrays],
        "skelprep.skeleton_targets": lambda: [skeleton_targets(a) for a in arrays],
    }
    timings = interleaved(sides, reps)
    return {
        "timings": timings,
        "cases": len(arrays),
        "fallback_components": fallbacks,
        "identical": fallbacks == 0,
    }


def run(cfg: Config, arrays: dict[str, list[np.ndarray]]) -> Part:
    part = Part()
    for name in DATASETS:
        if name not in arrays:
            continue
        log(f"per-case compute {name}")
        c = bench_compute(name, arrays[name], cfg.reps)
        part.sections[f"compute {name}"] = c
        t = medians(c["timings"])
        target = 3.0 if name == "vessels3d" else None
        part.comparisons.append(
            Comparison(
                section="compute",
                what=name,
                ours="skeleton_targets",
                baseline="reference recipe",
                ours_value=t["skelprep.skeleton_targets"],
                baseline_value=t["reference recipe"],
                target=target,
                target_text=">= 3x" if target else "",
            )
        )
    return part


def report_lines(s: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key in [k for k in s if k.startswith("compute ")]:
        b = s[key]
        lines += [
            f"## Per-case compute, {key[8:]} ({b['cases']} arrays, total per repetition; "
            f"identical output: {b['identical']}, fallback components: {b['fallback_components']})",
            "",
            *sides_table(b["timings"], "time"),
        ]
    return lines
