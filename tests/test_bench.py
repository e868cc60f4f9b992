"""The benchmark script runs end to end on its tiny configuration and writes parseable outputs.

No timing is asserted: the numbers depend on the machine; only that every
section ran and reported what it should.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "pipelines" / "bench.py"

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def run_bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``pipelines/bench.py --tiny ARGS`` in a subprocess, its output captured."""
    cmd = [sys.executable, str(BENCH), "--tiny", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_bench_tiny_writes_table_chart_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = run_bench("--out", str(out), "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    data = json.loads((out / "bench.json").read_text())
    assert data["meta"]["mode"] == "tiny"
    sections = data["sections"]
    for key in ("cluster", "build vessels3d", "compute vessels3d", "loading", "loss", "storage"):
        assert key in sections, key
    build = sections["build vessels3d"]["timings"]
    for side in (
        "reference serial loop",
        "I/O floor (read_mask + np.save zeros)",
        "skelprep build 1w",
        "skelprep build 2w",
        "Dask cluster start + close (2 workers, no work)",
    ):
        assert build[side]["median"] > 0 and len(build[side]["times"]) >= 1
    assert sections["compute vessels3d"]["identical"] is True
    # whole CLI builds: every side ran, and the 1-worker run reported its phases
    for key in ("cli build sparse3d 48x64x64", "cli build crops"):
        cli = sections[key]
        assert all(t["median"] > 0 for t in cli["timings"].values()), key
        assert cli["phases"]["1w"]["core"] > 0 and cli["phases"]["1w"]["start"] > 0, key
    assert any(c["section"] == "cli build" and c["target"] for c in data["comparisons"])
    probe = sections["cluster"]["worker_probe"][0]
    assert len(probe) == 2 and all("first_call_s" in p for p in probe)
    loss = sections["loss"]["configs"]
    assert set(loss) == {"2D", "3D", "3D, 13 classes"}
    for conf in loss.values():
        assert set(conf["peak_bytes"]) == set(conf["timings"]) == set(conf["peak_bytes_forward"])
    comparisons = data["comparisons"]
    assert {c["section"] for c in comparisons} >= {"build", "compute", "loading", "loss", "storage"}
    # NaN where a side measured zero (e.g. no visible peak memory on a tiny batch)
    assert all(c["ratio"] > 0 or math.isnan(c["ratio"]) for c in comparisons)

    table = (out / "bench.md").read_text()
    assert table.startswith("# skelprep benchmark") and "| section | comparison |" in table
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_bench_rejects_unknown_section(tmp_path: Path) -> None:
    proc = run_bench("--sections", "nope", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "unknown sections" in proc.stderr


@pytest.mark.slow
def test_bench_topology_times_every_loss_both_ways_and_every_target(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    out = tmp_path / "bench"
    proc = run_bench("--sections", "topology", "--out", str(out), "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    data = json.loads((out / "bench.json").read_text())
    losses = data["sections"]["topology losses"]["configs"]
    assert set(losses) == {"2D", "3D"}
    for conf in losses.values():
        for loss in ("cbDice", "clDice", "boundary", "Hausdorff"):
            for side in ("stored targets (skelprep)", "targets per step, as the reference"):
                assert conf["timings"][f"{loss}, {side}"]["median"] > 0, (loss, side)
        assert set(conf["peak_bytes"]) == set(conf["timings"])
    targets = data["sections"]["topology targets"]["timings"]
    assert {"tube (skeleton_targets)", "sdf per class", "radius", "components"} <= set(targets)
    # cbDice and Hausdorff carry the targets, in time and in memory
    headline = {c["what"] for c in data["comparisons"] if c["section"] == "topology" and c["target"]}
    assert {"cbDice 3D time", "Hausdorff 3D peak memory"} <= headline
