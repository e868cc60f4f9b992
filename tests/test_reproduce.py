"""pipelines/reproduce.py --quick end to end on the real CHASE_DB1 data: outputs, resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import SHARED, needs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pipelines" / "reproduce.py"
# A checkout whose ../shared is elsewhere names the folder in SKELPREP_CHASE_FULL.
DATA = Path(os.environ.get("SKELPREP_CHASE_FULL", SHARED / "real" / "chase_db1_full"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cmd(data: Path, tmp: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--quick", "--data", str(data), "--work", str(tmp / "work")] + [
        "--out",
        str(tmp / "out"),
        "--no-progress",
    ]


def _linked_copy(tmp: Path) -> Path:
    """The dataset as links, so that a test can remove a file from its copy."""
    data = tmp / "chase"
    for folder in ("images", "labels", "labels_2ndHO", "fov"):
        (data / folder).mkdir(parents=True)
        for f in (needs(DATA) / folder).iterdir():
            (data / folder / f.name).symlink_to(f)
    shutil.copy(DATA / "splits.json", data / "splits.json")
    return data


def test_quick_run_resumes_after_kill_and_never_retrains(tmp_path):
    cmd = _cmd(needs(DATA), tmp_path)
    checkpoint = tmp_path / "work" / "runs" / "a-seed0" / "last.pt"
    # Kill the whole run (driver and its training process) once arm a has checkpointed its first epoch.
    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True, stderr=subprocess.PIPE, text=True)
    while not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "work" / "runs" / "a-seed0" / "run.json").exists(), (
        "arm a finished before the kill"
    )

    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "a seed 0: resuming after epoch 1/2" in rerun.stderr
    out = tmp_path / "out"
    for name in ("table.md", "results.json", "curves.png", "examples.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert {"config", "versions", "commit", "data", "human_reference", "summary", "runs"} <= set(results)
    assert set(results["runs"]) == {"a", "b"} and set(results["runs"]["a"]) == {"0"}
    run_a = results["runs"]["a"]["0"]
    assert run_a["resumed_after_epochs"] == [1] and [h["epoch"] for h in run_a["history"]] == [1, 2]
    assert results["runs"]["b"]["0"]["resumed_after_epochs"] == []
    assert set(run_a["test"]) == set(results["data"]["test"]) == set(results["human_reference"]["per_image"])
    assert not set(results["data"]["test"]) & set(results["data"]["train"] + results["data"]["val"])
    for metric in ("dice", "cldice", "betti0_error", "betti1_error"):
        assert metric in run_a["test"][results["data"]["test"][0]]
        assert set(results["summary"]["b"]["vs_baseline"][metric]) == {"mean", "ci95", "per_image"}
    for key in ("median_step_seconds", "mean_loader_wait_seconds", "peak_memory_bytes"):
        assert results["summary"]["a"][key] > 0 or key == "mean_loader_wait_seconds"
    assert "second observer vs first" in (out / "table.md").read_text()

    # A third run trains nothing: both runs are finished.
    finished = {
        arm: (tmp_path / "work" / "runs" / f"{arm}-seed0" / "run.json").stat().st_mtime_ns for arm in "ab"
    }
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("finished earlier, not retrained") == 2 and "epoch" not in again.stderr
    for arm, mtime in finished.items():
        assert (tmp_path / "work" / "runs" / f"{arm}-seed0" / "run.json").stat().st_mtime_ns == mtime

    # The side-by-side step timing of every arm lands in the table at the next summary, trained runs untouched.
    timed = subprocess.run(cmd + ["--timing", "1"], env=ENV, capture_output=True, text=True, timeout=300)
    assert timed.returncode == 0, timed.stderr
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing["arms"]) == {"a", "b"} and timing["arms"]["a"]["step_vs_baseline"] == 1.0
    assert all(t["steps"] == 10 and t["median_step_seconds"] > 0 for t in timing["arms"].values())
    assert subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300).returncode == 0
    assert "Training steps side by side (1 rounds of 10 steps" in (out / "table.md").read_text()
    assert json.loads((out / "results.json").read_text())["timing_side_by_side"]["arms"] == timing["arms"]
    for arm, mtime in finished.items():
        assert (tmp_path / "work" / "runs" / f"{arm}-seed0" / "run.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        (None, "missing-folder"),
        ("images/Image_03L.png", "images/Image_03L.png: missing (named in"),
        ("labels/Image_03L.png", "labels/Image_03L.png: missing (the mask of"),
        ("fov/Image_12R.png", "fov/Image_12R.png: missing (the field-of-view mask of"),
    ],
)
def test_bad_input_is_one_line_and_trains_nothing(tmp_path, remove, named):
    if remove is None:
        data = tmp_path / "missing-folder"
    else:
        data = _linked_copy(tmp_path)
        (data / remove).unlink()
    result = subprocess.run(_cmd(data, tmp_path), env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce: error: ") and named in lines[0], result.stderr
    assert not (tmp_path / "work").exists()
