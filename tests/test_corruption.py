"""``skelprep verify`` finds every kind of damage, says how to repair it, and the repairs work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from skelprep import open_store, skeleton_targets
from skelprep.cli import cli

from .helpers import shard_files, write_png


def _mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((48, 64), np.uint8)
    for _ in range(3):
        row = rng.integers(4, 44)
        mask[row - 1 : row + 2, 4:60] = rng.integers(1, 4)
    return mask


def _lines(text: str) -> dict[str, str]:
    """verify's problem lines: case id -> the whole line."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].endswith(":") and not line.startswith("to fix:"):
            found[parts[1][:-1]] = line
    return found


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_verify_detects_damage_and_build_repairs_it(runner, tmp_path):
    root = tmp_path / "ds"
    masks = {
        name: _mask(i) for i, name in enumerate(["altered", "removed", "stale", "vanished", "half", "fine"])
    }
    for name, mask in masks.items():
        write_png(root / "labels" / f"{name}.png", mask)
    result = runner.invoke(cli, ["build", str(root), "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    store = root / "skeletons.zarr"

    # chunk bytes altered (the CRC-32C of the chunk no longer matches)
    shard = store / "altered" / "tube" / "c.0.0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x5A
    shard.write_bytes(bytes(data))
    # chunks removed: reads give the fill value, only the SHA-256 of the array tells
    for path in shard_files(store / "removed" / "thin"):
        path.unlink()
    masks["stale"] = _mask(99)
    write_png(root / "labels" / "stale.png", masks["stale"])
    (root / "labels" / "vanished.png").unlink()
    group = zarr.open_group(str(store / "half"), mode="r+")  # as a build killed mid-case leaves it
    group.attrs.update({"skelprep": {**group.attrs["skelprep"], "complete": False}})
    write_png(root / "labels" / "new.png", _mask(7))
    masks["new"] = _mask(7)

    result = runner.invoke(cli, ["verify", str(root)])
    assert result.exit_code == 1
    lines = _lines(result.stdout)
    assert set(lines) == {"altered", "removed", "stale", "vanished", "half", "new"}
    assert lines["altered"].startswith("corrupt") and "tube: unreadable data" in lines["altered"]
    assert lines["removed"].startswith("corrupt") and "thin: data checksum mismatch" in lines["removed"]
    assert lines["stale"].startswith("stale") and "mask changed" in lines["stale"]
    assert lines["vanished"].startswith("orphan")
    assert lines["half"].startswith("incomplete")
    assert lines["new"].startswith("missing")
    assert "1 ok, 6 with problems" in result.stdout
    for hint in (
        "--repair' rebuilds the corrupt cases",
        "--prune' deletes the orphans",
        "builds what is missing or out of date",
    ):
        assert hint in result.stdout
    states = json.loads(runner.invoke(cli, ["verify", str(root), "--json"]).stdout)["cases"]
    assert {k: v["state"] for k, v in states.items()} == {
        "altered": "corrupt",
        "removed": "corrupt",
        "stale": "stale",
        "vanished": "orphan",
        "half": "incomplete",
        "new": "missing",
        "fine": "ok",
    }
    # without reading the data, the damage cannot be seen
    no_data = _lines(runner.invoke(cli, ["verify", str(root), "--no-data"]).stdout)
    assert "altered" not in no_data and "removed" not in no_data

    # a plain build brings stale / incomplete / missing cases up to date; --prune drops the orphan
    result = runner.invoke(cli, ["build", str(root), "--prune", "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 built, 3 up to date, 0 failed" in result.stdout and "pruned 1: vanished" in result.stdout
    result = runner.invoke(cli, ["verify", str(root)])
    assert result.exit_code == 1 and set(_lines(result.stdout)) == {"altered", "removed"}
    assert "--repair" in result.stdout and "--prune" not in result.stdout

    # --repair reads every up-to-date case and rebuilds exactly the damaged ones
    result = runner.invoke(cli, ["build", str(root), "--repair", "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 built, 4 up to date, 0 failed" in result.stdout
    result = runner.invoke(cli, ["verify", str(root)])
    assert (
        result.exit_code == 0 and "6 ok, 0 with problems" in result.stdout and "to fix" not in result.stdout
    )
    opened = open_store(store)
    assert sorted(opened) == sorted(set(masks) - {"vanished"})
    for name in opened:
        expected = skeleton_targets(masks[name])
        np.testing.assert_array_equal(opened[name].tube[...], expected.tube)
        np.testing.assert_array_equal(opened[name].thin[...], expected.thin)
