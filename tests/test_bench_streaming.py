"""The streaming benchmark runs end to end on its tiny configuration and writes its table and JSON.

No timing is asserted (the figures depend on the machine): only that every comparison ran and
reported a finite, positive figure.
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
pytest.importorskip("matplotlib")


def test_bench_streaming_tiny_writes_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "bench_streaming.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "bench_streaming.json").read_text())
    for name in ("ct", "octa"):
        section = data[name]
        figures = [
            section["items"]["item / recipe"],
            section["items"]["whole-file / item"],
            section["loader"]["items_per_second"],
            section["storage"]["ratio"],
            section["build"]["median"]["build --with-images"],
        ]
        assert all(math.isfinite(f) and f > 0 for f in figures), (name, figures)
    assert 0.0 <= data["ct"]["train"]["loader_wait_fraction"] < 1.0
    table = (out / "bench_streaming.md").read_text()
    assert table.count("\n| ") >= 12 and "loader wait" in table
