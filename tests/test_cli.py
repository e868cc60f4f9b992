"""Every CLI command, its output streams and exit codes."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from skelprep.cli import cli

from .helpers import CLI, drop_dac_capabilities, permissions_enforceable, write_png


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


def _store_with_unbuilt_cases(runner, tmp_path, n_unbuilt: int):
    root = tmp_path / "ds"
    write_png(root / "labels" / "built.png", np.eye(8, dtype=np.uint8))
    assert runner.invoke(cli, ["build", str(root), "--no-progress"]).exit_code == 0
    for i in range(n_unbuilt):
        write_png(root / "labels" / f"new_{i:03d}.png", np.eye(8, dtype=np.uint8))
    return root


def test_verify_into_a_closed_pipe_exits_quietly(runner, tmp_path):
    """``skelprep verify ... | head -1``: the reader goes away before the output is written."""
    root = _store_with_unbuilt_cases(runner, tmp_path, 200)
    for args in (["verify", str(root)], ["verify", str(root), "--json"]):
        proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # as head does once it has its line: every write then meets a closed pipe
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 1
        assert stderr == "", stderr


def test_verify_names_an_unreadable_mask_instead_of_missing(runner, tmp_path):
    if not permissions_enforceable():
        pytest.skip("this process cannot be made to obey file permissions")
    root = _store_with_unbuilt_cases(runner, tmp_path, 1)
    (root / "labels" / "new_000.png").chmod(0)
    result = subprocess.run(
        CLI + ["verify", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=drop_dac_capabilities if os.geteuid() == 0 else None,
    )
    assert result.returncode == 1, result.stderr
    line = next(line for line in result.stdout.splitlines() if "new_000" in line)
    assert line.startswith("failed-input") and str(root / "labels" / "new_000.png") in line, line
    assert "ermission denied" in line, line


def test_files_that_are_no_masks_are_named_as_skipped(runner, tmp_path):
    root = tmp_path / "ds"
    write_png(root / "labels" / "ok.png", np.eye(20, dtype=np.uint8))
    (root / "labels" / "x.jpg").write_bytes(b"\xff\xd8 not a mask")
    (root / "labels" / "notes.txt").write_text("annotator notes")
    result = runner.invoke(cli, ["build", str(root), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output  # skipping fails no case
    assert "1 built, 0 up to date, 0 failed, 2 skipped in" in result.stdout
    reason = "not a mask file (.nii.gz, .nii, .png, .tif, .tiff)"
    assert result.stderr.splitlines() == [
        f"skipped: {root / 'labels' / 'notes.txt'}: {reason}",
        f"skipped: {root / 'labels' / 'x.jpg'}: {reason}",
    ]
    summary = json.loads(runner.invoke(cli, ["build", str(root), "--json"]).stdout)
    assert summary["skipped"] == {
        str(root / "labels" / "notes.txt"): reason,
        str(root / "labels" / "x.jpg"): reason,
    }


def test_case_ids_with_control_characters_are_printed_escaped(runner, tmp_path):
    """A mask named 'a\\nb.png' is a valid case; no output line may break at its newline."""
    root = tmp_path / "ds"
    write_png(root / "labels" / "a\nb.png", np.eye(20, dtype=np.uint8))
    write_png(root / "labels" / "ok.png", np.eye(20, dtype=np.uint8))
    assert runner.invoke(cli, ["build", str(root), "--workers", "1", "--no-progress"]).exit_code == 0
    info = runner.invoke(cli, ["info", str(root / "skeletons.zarr")])
    assert info.exit_code == 0 and "a\nb" not in info.stdout
    assert [line.split()[0] for line in info.stdout.splitlines()[-2:]] == ["a\\nb", "ok"]
    (root / "labels" / "a\nb.png").unlink()
    verify = runner.invoke(cli, ["verify", str(root), "--no-data"])
    assert verify.exit_code == 1 and "a\nb" not in verify.stdout
    assert verify.stdout.splitlines()[0].startswith("orphan          a\\nb: ")
    prune = runner.invoke(cli, ["build", str(root), "--prune", "--no-progress"])
    assert prune.exit_code == 0 and "pruned 1: a\\nb\n" in prune.stdout


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args, "--workers", "1", "--no-progress"], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _tree(folder) -> dict[str, bytes | None]:
    """Every entry below ``folder`` (its bytes, None for a folder), to compare before and after."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_a_case_id_that_climbs_out_of_the_store_touches_nothing_outside_it(tmp_path):
    write_png(tmp_path / "p" / "ds" / "labels" / "a" / "x.png", np.eye(8, dtype=np.uint8))
    write_png(tmp_path / "p" / "victim.png", np.eye(8, dtype=np.uint8))
    (tmp_path / "p" / "victim").mkdir()
    (tmp_path / "p" / "victim" / "keep.txt").write_text("keep")
    before = _tree(tmp_path / "p")
    for extra in ([], ["--force"]):
        result = _run("build", "p/ds", "--masks", "labels/*/../../../*.png", *extra, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert (
            "victim.png: case id 'a/../../../victim' is not a relative path of plain names" in result.stderr
        )
        after = _tree(tmp_path / "p")
        assert {k: v for k, v in after.items() if not k.startswith("ds/skeletons.zarr")} == before


def test_out_is_only_ever_a_store_of_ours(tmp_path):
    write_png(tmp_path / "k3d" / "labels" / "case_000.png", np.eye(8, dtype=np.uint8))
    work = tmp_path / "work"
    (work / "case_000").mkdir(parents=True)
    (work / "case_000" / "notes.txt").write_text("notes")
    result = _run("build", "k3d", "--out", "work", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "work: exists and is not a skelprep store" in result.stderr
    assert (work / "case_000" / "notes.txt").read_text() == "notes" and not (tmp_path / "work.lock").exists()
    (tmp_path / "empty").mkdir()  # an empty folder may become the store, and it is ours from then on
    assert _run("build", "k3d", "--out", "empty", cwd=tmp_path).returncode == 0
    assert _run("build", "k3d", "--out", "empty", "--force", cwd=tmp_path).returncode == 0


def test_out_never_holds_or_lies_among_the_inputs(tmp_path):
    ds = tmp_path / "ds"
    write_png(ds / "labels" / "images.png", np.eye(8, dtype=np.uint8))
    write_png(ds / "images" / "images.png", np.eye(8, dtype=np.uint8))
    before = _tree(ds)
    cases = {
        "ds": "ds: holds the dataset's inputs",
        ".": "'.': a store is a folder of its own",
        str(tmp_path): "holds the dataset's inputs",
        "ds/labels/s.png": "ds/labels/s.png: lies among the dataset's input files (ds/labels)",
        "ds/images/s.zarr": "lies among the dataset's input files (ds/images)",
    }
    for out, message in cases.items():
        result = _run("build", "ds", "--out", out, cwd=tmp_path)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, (out, result.stderr)
        assert message in result.stderr, (out, result.stderr)
    assert _tree(ds) == before and not list(tmp_path.glob("*.lock"))
    result = _run("build", "ds", "--masks", "labels/*.png", "--out", "ds/labels/s.png", cwd=tmp_path)
    assert result.returncode == 1 and "lies among the dataset's input files" in result.stderr
    result = _run("build", "ds", "--masks", "*/*.png", "--out", "ds/s.png", cwd=tmp_path)
    assert result.returncode == 1 and "lies among the dataset's input files (ds)" in result.stderr
    assert _run("build", "ds", cwd=tmp_path).returncode == 0  # the default store stays valid
    assert _run("build", "ds", "--masks", "*/*.png", cwd=tmp_path).returncode == 0


def test_out_and_dataset_spelled_like_a_url_with_one_slash_or_with_no_name_are_refused(tmp_path):
    write_png(tmp_path / "k3d" / "labels" / "a.png", np.eye(8, dtype=np.uint8))
    for args, message in (
        (
            ["k3d", "--out", "s3:/bkt/x.zarr"],
            "s3:/bkt/x.zarr: looks like a URL with one slash; write s3://bkt/x.zarr",
        ),
        (["gs:/bkt/raw"], "gs:/bkt/raw: looks like a URL with one slash; write gs://bkt/raw"),
        (["k3d", "--out", "/"], "'/': a store is a folder of its own"),
        (["k3d", "--out", ""], "'': a store is a folder of its own"),
    ):
        result = _run("build", *args, cwd=tmp_path)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, (args, result.stderr)
        assert result.stderr.startswith("skelprep: error: ") and message in result.stderr, (
            args,
            result.stderr,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k3d"]


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


def test_a_missing_image_is_named_and_fails_only_a_build_with_images(runner, tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "A", "1": "B"},
                "labels": {"background": 0, "v": 1},
                "file_ending": ".png",
            }
        )
    )
    for case_id in ("full", "partial", "bare"):
        write_png(root / "labelsTr" / f"{case_id}.png", np.eye(20, dtype=np.uint8))
    for name in ("full_0000", "full_0001", "partial_0000"):
        write_png(root / "imagesTr" / f"{name}.png", np.eye(20, dtype=np.uint8) * 100)
    # Targets need no image: every case is built.
    result = runner.invoke(cli, ["build", str(root), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 built, 0 up to date, 0 failed" in result.stdout
    # With images, each incomplete case fails in one line that names its missing file.
    out = tmp_path / "with_images.zarr"
    result = runner.invoke(
        cli, ["build", str(root), "--out", str(out), "--with-images", "--workers", "1", "--no-progress"]
    )
    assert result.exit_code == 1 and "1 built, 0 up to date, 2 failed" in result.stdout
    lines = sorted(line for line in result.stderr.splitlines() if line.strip())
    assert len(lines) == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"failed: {root / 'imagesTr' / 'bare_0000.png'}: ")
    assert lines[1].startswith(f"failed: {root / 'imagesTr' / 'partial_0001.png'}: ")
    assert "image channel 1 of case 'partial'" in lines[1]
    # verify: the targets-only store is complete; the one with images names the same files
    result = runner.invoke(cli, ["verify", str(root)])
    assert result.exit_code == 0 and "3 ok, 0 with problems" in result.stdout, result.output
    result = runner.invoke(cli, ["verify", str(root), "--out", str(out)])
    assert result.exit_code == 1 and "partial_0001.png" in result.stdout and "bare_0000.png" in result.stdout
