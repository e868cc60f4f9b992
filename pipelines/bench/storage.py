"""Storage: a built store's bytes against the raw voxel bytes and the mask files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .common import Comparison, Dataset, fmt_bytes, tree_bytes


def measure(ds: Dataset, store: str, arrays: list[np.ndarray]) -> dict[str, Any]:
    """Bytes of ``store`` (apparent and as du counts them), of the raw voxels and of the mask files."""
    apparent, allocated = tree_bytes(Path(store))
    return {
        "store_apparent": apparent,
        "store_du": allocated,
        "raw_voxel_bytes": int(sum(a.nbytes for a in arrays)),
        "mask_file_bytes": int(sum(m.stat().st_size for m in ds.masks)),
    }


def comparison(name: str, st: dict[str, Any]) -> Comparison:
    return Comparison(
        section="storage",
        what=name,
        ours="store (du)",
        baseline="raw voxel bytes",
        ours_value=st["store_du"],
        baseline_value=st["raw_voxel_bytes"],
        unit="B",
        target=50.0,
        target_text="store <= 2 % (>= 50x)",
    )


def report_lines(s: dict[str, Any]) -> list[str]:
    if "storage" not in s:
        return []
    lines = [
        "## Storage",
        "",
        "| dataset | store (du) | store (apparent) | raw voxels | mask files | store / raw | store / mask files |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, st in s["storage"].items():
        lines.append(
            f"| {name} | {fmt_bytes(st['store_du'])} | {fmt_bytes(st['store_apparent'])} | "
            f"{fmt_bytes(st['raw_voxel_bytes'])} | {fmt_bytes(st['mask_file_bytes'])} | "
            f"{100 * st['store_du'] / st['raw_voxel_bytes']:.2f} % | "
            f"{100 * st['store_du'] / st['mask_file_bytes']:.0f} % |"
        )
    return lines + [""]
