"""The engines benchmark runs end to end on its tiny configuration and writes its tables and JSON.

No timing is asserted (the figures depend on the machine): only that every side ran, each
reported a finite, positive figure, and the ratios the store's targets are stated in exist.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("torch")
pytest.importorskip("tensorstore")
pytest.importorskip("blosc2")
pytest.importorskip("nnunetv2")


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_bench_engines_tiny_writes_tables_and_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipelines" / "bench_engines.py"),
            "--tiny",
            "--out",
            str(out),
            "--chase",
            str(tmp_path / "no-chase"),  # the drawn images: no shared data needed
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "bench_engines.json").read_text())
    for case in ("ct", "2d"):
        engines = data[case]["engines"]
        for name in ("image", "label", "tube"):
            array = engines["arrays"][name]
            reads = array["reads"]
            assert {"zarr, today", "tensorstore, today", "blosc2, nnU-Net layout", "memory copy"} <= set(
                reads
            )
            assert all(_positive(t["median"]) and len(t["times"]) == 2 for t in reads.values()), (case, name)
            for layout in array["layouts"].values():
                assert layout["bytes"] > 0 and all(_positive(s) for s in layout["write_s"].values())
        batched = engines["batched"]
        assert any(side.endswith("futures") for side in batched)
        assert any(side.endswith("asyncio.gather") for side in batched)
        assert all(_positive(t["median"]) for t in batched.values())
    for case in ("ct", "2d", "octa"):
        items = data[case]["items"]
        assert _positive(items["item / nnU-Net stock read"]), case
        assert _positive(items["item / (nnU-Net read + recipe)"]), case
        assert all(_positive(t["median"]) for t in items["timings"].values())
    assert data["ct"]["items"]["prototype / nnU-Net stock read"]
    table = (out / "bench_engines.md").read_text()
    assert table.startswith("# Engines and items benchmark") and table.count("nnU-Net stock read") >= 6
