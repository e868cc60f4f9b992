"""``skelprep verify`` finds every kind of damage, says how to repair it, and the repairs work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from skelprep import open_store, skeleton_targets
from skelprep.cli import cli
from skelprep.store import StoreError

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
    shard = store / "altered" / "labels" / "tube" / "0" / "c.0.0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x5A
    shard.write_bytes(bytes(data))
    # chunks removed: reads give the fill value, only the SHA-256 of the array tells
    for path in shard_files(store / "removed" / "labels" / "thin" / "0"):
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


def _small_dataset(root, names=("a", "b", "c")) -> dict[str, np.ndarray]:
    masks = {name: _mask(i) for i, name in enumerate(names)}
    for name, mask in masks.items():
        write_png(root / "labels" / f"{name}.png", mask)
    return masks


def _assert_targets(store_path, masks) -> None:
    opened = open_store(store_path)
    assert sorted(opened) == sorted(masks)
    for name, mask in masks.items():
        expected = skeleton_targets(mask)
        np.testing.assert_array_equal(opened[name].tube[...], expected.tube)
        np.testing.assert_array_equal(opened[name].thin[...], expected.thin)


def test_repair_mends_a_missing_array_and_damaged_array_metadata(runner, tmp_path):
    root = tmp_path / "ds"
    masks = _small_dataset(root)
    assert runner.invoke(cli, ["build", str(root), "--no-progress"]).exit_code == 0
    store = root / "skeletons.zarr"
    shutil.rmtree(store / "a" / "labels" / "thin")  # an array folder gone
    doc = store / "b" / "labels" / "tube" / "0" / "zarr.json"
    doc.write_bytes(doc.read_bytes()[:20])  # an array's metadata truncated

    # the other cases stay readable: listing, info, open_store and the dataset of the store
    result = runner.invoke(cli, ["verify", str(root)])
    assert result.exit_code == 1, result.output
    lines = _lines(result.stdout)
    assert set(lines) == {"a", "b"}
    assert lines["a"].startswith("corrupt") and "array 'thin' is missing" in lines["a"]
    assert lines["b"].startswith("corrupt") and "array 'tube' cannot be read" in lines["b"]
    assert "--repair' rebuilds the corrupt cases" in result.stdout
    info = runner.invoke(cli, ["info", str(store)])
    assert info.exit_code == 0 and "3 complete" in info.stdout, info.output
    opened = open_store(store)
    assert sorted(opened.case_ids) == ["a", "b", "c"]
    np.testing.assert_array_equal(opened["c"].tube[...], skeleton_targets(masks["c"]).tube)
    for name in ("a", "b"):
        with pytest.raises(StoreError, match=f"case '{name}' is damaged.*repairing build"):
            opened[name]

    result = runner.invoke(cli, ["build", str(root), "--repair", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 built, 1 up to date, 0 failed" in result.stdout
    assert runner.invoke(cli, ["verify", str(root)]).exit_code == 0
    _assert_targets(store, masks)


@pytest.mark.parametrize("repair", [False, True])
@pytest.mark.parametrize("damage", [b'{"zarr', None])
def test_damaged_root_is_rebuilt_from_the_cases(runner, tmp_path, repair, damage):
    root = tmp_path / "ds"
    masks = _small_dataset(root)
    out = tmp_path / "s.zarr"
    assert runner.invoke(cli, ["build", str(root), "--out", str(out), "--no-progress"]).exit_code == 0
    if damage is None:
        (out / "zarr.json").unlink()
    else:
        (out / "zarr.json").write_bytes(damage)

    result = runner.invoke(cli, ["verify", str(root), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert _lines(result.stdout)["zarr.json"].startswith("corrupt-root")
    command = f"skelprep build {root} --out {out} --repair"
    assert f"to fix: '{command}' rebuilds the root metadata from the cases" in result.stdout
    assert "3 ok, 1 with problems" in result.stdout
    with pytest.raises(StoreError, match="root metadata zarr.json is .*'skelprep build DATASET --out"):
        open_store(out)

    result = runner.invoke(cli, command.split()[1:] if repair else command.split()[1:-1] + ["--no-progress"])
    assert result.exit_code == 0, result.output
    assert "0 built, 3 up to date, 0 failed" in result.stdout
    result = runner.invoke(cli, ["verify", str(root), "--out", str(out)])
    assert result.exit_code == 0 and "3 ok, 0 with problems" in result.stdout, result.output
    _assert_targets(out, masks)
    assert open_store(out).attrs["params"]["radius"] == 2
    assert sorted(zarr.open_group(str(out), mode="r").attrs["skelprep"]["cases"]) == ["a", "b", "c"]


def test_case_folder_without_metadata_is_reported_and_removed(runner, tmp_path):
    """A build killed before it wrote a case's group metadata leaves a folder of arrays."""
    root = tmp_path / "ds"
    masks = _small_dataset(root)
    assert runner.invoke(cli, ["build", str(root), "--no-progress"]).exit_code == 0
    store = root / "skeletons.zarr"
    shutil.copytree(store / "a", store / "gone")  # its mask is not in the dataset
    (store / "gone" / "zarr.json").unlink()
    (store / "b" / "zarr.json").unlink()  # its mask is

    result = runner.invoke(cli, ["verify", str(root)])
    assert result.exit_code == 1, result.output
    lines = _lines(result.stdout)
    assert set(lines) == {"b", "gone"}
    assert lines["gone"].startswith("orphan") and lines["b"].startswith("incomplete")
    assert "--prune' deletes the orphans" in result.stdout and "builds what is missing" in result.stdout

    result = runner.invoke(cli, ["build", str(root), "--prune", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1 built, 2 up to date" in result.stdout and "pruned 1: gone" in result.stdout
    assert not (store / "gone").exists()
    assert runner.invoke(cli, ["verify", str(root)]).exit_code == 0
    _assert_targets(store, masks)
