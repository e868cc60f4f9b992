"""Every CLI command, its output streams and exit codes."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from skelprep.cli import cli

from .helpers import CLI, write_png


@pytest.fixture
def runner():
    return CliRunner()


def test_build_info_verify_preview(runner, cracks_dataset, tmp_path):
    result = runner.invoke(cli, ["build", str(cracks_dataset), "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 built, 0 up to date, 0 failed" in result.stdout
    result = runner.invoke(cli, ["build", str(cracks_dataset), "--json"])
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and sorted(summary["up_to_date"]) == ["crack_000", "crack_001", "crack_002"]

    store = str(cracks_dataset / "skeletons.zarr")
    result = runner.invoke(cli, ["info", store])
    assert result.exit_code == 0 and "crack_001" in result.stdout and "3 complete" in result.stdout
    info = json.loads(runner.invoke(cli, ["info", store, "--json"]).stdout)
    assert info["attrs"]["params"]["mode"] == "joint" and set(info["cases"]) == {
        "crack_000",
        "crack_001",
        "crack_002",
    }

    result = runner.invoke(cli, ["verify", str(cracks_dataset)])
    assert result.exit_code == 0 and "3 ok, 0 with problems" in result.stdout

    out = tmp_path / "p.png"
    result = runner.invoke(cli, ["preview", store, "crack_000", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rgb = np.asarray(Image.open(out))
    # the case (640 x 1024) above a legend band; white skeleton pixels in it
    assert rgb.shape[1:] == (1024, 3) and rgb.shape[0] > 640 and (rgb[:640] == 255).all(axis=-1).any()

    result = runner.invoke(cli, ["preview", store, "nope", "-o", str(out)])
    assert result.exit_code == 1 and "no complete case 'nope'" in result.stderr


def test_preview_3d_is_a_projection(runner, octa_dataset, tmp_path):
    assert runner.invoke(cli, ["build", str(octa_dataset), "--workers", "1", "--no-progress"]).exit_code == 0
    out = tmp_path / "p.png"
    result = runner.invoke(
        cli, ["preview", str(octa_dataset / "skeletons.zarr"), "octa_000", "-o", str(out), "--axis", "2"]
    )
    assert result.exit_code == 0
    # the 64 x 64 projection and the middle slice side by side, enlarged (nearest) so a person can see them
    rgb = np.asarray(Image.open(out))
    assert rgb.shape[1] == 2 * 384 + 4 and rgb.shape[0] > 384
    result = runner.invoke(
        cli, ["preview", str(octa_dataset / "skeletons.zarr"), "octa_000", "-o", str(out), "--slice", "64"]
    )
    assert result.exit_code == 2 and "--slice" in result.stderr and "0..63" in result.stderr


def test_failures_give_one_line_and_exit_1(runner, tmp_path):
    root = tmp_path / "ds"
    write_png(root / "labels" / "ok.png", np.eye(20, dtype=np.uint8))
    (root / "labels" / "bad.png").write_text("not a png")
    result = runner.invoke(cli, ["build", str(root), "--workers", "1", "--no-progress"])
    assert result.exit_code == 1
    assert "1 built, 0 up to date, 1 failed" in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(lines) == 1 and "bad.png" in lines[0] and "Traceback" not in result.stderr
    verify = runner.invoke(cli, ["verify", str(root)])
    assert verify.exit_code == 1 and "missing" in verify.stdout and "bad" in verify.stdout


def test_usage_and_dataset_errors(runner, tmp_path):
    assert runner.invoke(cli, ["build"]).exit_code == 2
    assert runner.invoke(cli, ["build", str(tmp_path), "--mode", "both"]).exit_code == 2
    result = runner.invoke(cli, ["build", str(tmp_path / "missing")])
    assert (
        result.exit_code == 1
        and result.stderr.startswith("skelprep: error:")
        and "Traceback" not in result.stderr
    )
    result = runner.invoke(cli, ["info", str(tmp_path / "none.zarr")])
    assert result.exit_code == 1 and "no skelprep store" in result.stderr
    result = runner.invoke(cli, ["build", str(tmp_path), "--workers", "2", "--scheduler", "tcp://x:1"])
    assert result.exit_code == 2


def test_console_script_and_debug_traceback(tmp_path):
    exe = CLI
    plain = subprocess.run(exe + ["info", str(tmp_path / "x.zarr")], capture_output=True, text=True)
    assert plain.returncode == 1 and len(plain.stderr.strip().splitlines()) == 1
    debug = subprocess.run(
        exe + ["--debug", "info", str(tmp_path / "x.zarr")], capture_output=True, text=True
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    # the library's error keeps its cause (zarr's), so --debug shows where it came from
    assert "FileNotFoundError" in debug.stderr and "direct cause" in debug.stderr
    version = subprocess.run(exe + ["--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "skelprep" in version.stdout


def test_library_errors_get_the_option_that_fixes_them(runner, tmp_path):
    (tmp_path / "stuff").mkdir()
    for args in ([], ["--images", "*.png"]):
        result = runner.invoke(cli, ["build", str(tmp_path), "--no-progress", *args])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.rstrip().endswith("masks glob (option --masks)"), result.stderr


def test_preview_finds_the_mask_of_a_store_moved_with_its_dataset(runner, cracks_dataset, tmp_path):
    assert (
        runner.invoke(cli, ["build", str(cracks_dataset), "--workers", "1", "--no-progress"]).exit_code == 0
    )
    moved = tmp_path / "moved" / "cracks"
    moved.parent.mkdir()
    cracks_dataset.rename(moved)
    store = str(moved / "skeletons.zarr")
    out = tmp_path / "p.png"
    result = runner.invoke(cli, ["preview", store, "crack_000", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "note" not in result.stderr
    rgb = np.asarray(Image.open(out))
    assert (rgb == 70).all(axis=-1).any()  # the mask's grey: it was read from its new place
    info = runner.invoke(cli, ["info", store])
    assert f"dataset   {moved} (nnunet)" in info.stdout
    assert json.loads(runner.invoke(cli, ["info", store, "--json"]).stdout)["dataset_path"] == str(moved)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("x", "not a skelprep store (attributes 'skelprep' is not an object)"),
        ({"format_version": "2"}, "invalid store format_version '2' (a str)"),
    ],
)
def test_a_store_root_of_the_wrong_types_gives_one_line(runner, tmp_path, meta, message):
    out = tmp_path / "s.zarr"
    out.mkdir()
    (out / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"skelprep": meta}})
    )
    write_png(tmp_path / "ds" / "labels" / "a.png", np.eye(8, dtype=np.uint8))
    dataset = str(tmp_path / "ds")
    for args in (["build", dataset, "--out", str(out), "--no-progress"], ["info", str(out)]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, args
        assert result.stderr.startswith(f"skelprep: error: {out}: "), result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    result = runner.invoke(cli, ["verify", dataset, "--out", str(out)])
    assert result.exit_code == 1 and message in result.stderr and result.stderr.count("\n") == 1


def test_info_on_a_dataset_folder_shows_its_default_store(runner, cracks_dataset, tmp_path):
    result = runner.invoke(cli, ["info", str(cracks_dataset)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1  # not built yet: one line
    assert (
        runner.invoke(cli, ["build", str(cracks_dataset), "--workers", "1", "--no-progress"]).exit_code == 0
    )
    result = runner.invoke(cli, ["info", str(cracks_dataset)])
    assert result.exit_code == 0, result.output
    assert "3 complete" in result.stdout and str(cracks_dataset / "skeletons.zarr") in result.stderr


def test_preview_shows_the_image_classes_in_colours_and_a_legend(
    runner, cracks_dataset, tmp_path, monkeypatch
):
    from skelprep.preview import class_colour

    build = ["build", str(cracks_dataset), "--workers", "1", "--no-progress", "--with-images"]
    assert runner.invoke(cli, build).exit_code == 0
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["preview", str(cracks_dataset / "skeletons.zarr"), "crack_000"])
    assert result.exit_code == 0, result.output
    rgb = np.asarray(Image.open(tmp_path / "crack_000.png")).astype(int)  # the default name
    label = np.asarray(Image.open(cracks_dataset / "labelsTr" / "crack_000.png"))
    picture, legend = rgb[:640], rgb[640:]
    # the photo is under the overlay: background pixels are not one flat colour
    assert picture[label == 0].std(axis=0).min() > 10
    # each class its own colour: the mean colour of class 1 (road) and class 3 (crack) pixels differ
    means = {c: picture[label == c].mean(axis=0) for c in (1, 3)}
    assert np.abs(means[1] - means[3]).max() > 40
    # the legend band carries a swatch of every class colour of the case
    for c in np.unique(label[label > 0]):
        assert (legend == class_colour(c)).all(axis=-1).any(), c
