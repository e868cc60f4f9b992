"""Dice, clDice and Betti numbers on hand-made shapes with known values; the eval CLI and folder evaluation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from skelprep.build import build
from skelprep.cli import cli
from skelprep.evaluate import evaluate_folders, find_masks
from skelprep.metrics import betti_errors, betti_numbers, cldice, dice, evaluate_case, skeleton
from skelprep.store import open_store

from .helpers import EXAMPLES

DATA = EXAMPLES  # the bundled copies of the shared nnU-Net datasets: no ../shared needed


# --- hand-made shapes ------------------------------------------------------------------------


def ring2d(size=21, outer=8, inner=4):
    y, x = np.mgrid[:size, :size] - size // 2
    r = np.hypot(y, x)
    return (r <= outer) & (r > inner)


def ball(size, radius, centre=None):
    centre = np.full(3, size // 2) if centre is None else np.asarray(centre)
    z, y, x = np.indices((size,) * 3)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def torus(size=32, major=9.0, minor=3.5):
    z, y, x = np.indices((size,) * 3) - size / 2 + 0.5
    return (np.hypot(y, x) - major) ** 2 + z**2 < minor**2


def test_betti_2d():
    assert betti_numbers(ring2d()) == (1, 1)
    blobs = np.zeros((20, 20), bool)
    blobs[2:6, 2:6] = blobs[12:18, 10:16] = True
    assert betti_numbers(blobs) == (2, 0)
    # 8-connected foreground: a diagonal line is one component ...
    diag = np.eye(6, dtype=bool)
    assert betti_numbers(diag) == (1, 0)
    # ... and a diamond of diagonal steps encloses a 4-connected hole.
    diamond = np.zeros((7, 7), bool)
    for y, x in [(1, 3), (2, 2), (3, 1), (4, 2), (5, 3), (4, 4), (3, 5), (2, 4)]:
        diamond[y, x] = True
    assert betti_numbers(diamond) == (1, 1)
    # Background touching the border is no hole; a figure eight has two.
    cup = np.zeros((6, 6), bool)
    cup[1:5, 1] = cup[4, 1:5] = cup[1:5, 4] = True
    assert betti_numbers(cup) == (1, 0)
    eight = np.zeros((5, 7), bool)
    eight[0:5, 0:7] = True
    eight[2, 1:3] = eight[2, 4:6] = False
    assert betti_numbers(eight) == (1, 2)
    assert betti_numbers(np.zeros((4, 4), bool)) == (0, 0)


def test_betti_3d():
    assert betti_numbers(torus()) == (1, 1, 0)
    shell = ball(25, 10) & ~ball(25, 6)
    assert betti_numbers(shell) == (1, 0, 1)
    assert betti_numbers(ball(15, 5)) == (1, 0, 0)
    two = ball(30, 5, (8, 8, 8)) | ball(30, 5, (21, 21, 21))
    assert betti_numbers(two) == (2, 0, 0)
    # A cube with a tunnel through it: one handle.
    tunnel = np.zeros((12, 12, 12), bool)
    tunnel[2:10, 2:10, 2:10] = True
    tunnel[5:7, 5:7, :] = False
    assert betti_numbers(tunnel) == (1, 1, 0)
    # 26-connected: voxels touching at a corner are one component.
    diag = np.zeros((5, 5, 5), bool)
    diag[np.arange(5), np.arange(5), np.arange(5)] = True
    assert betti_numbers(diag) == (1, 0, 0)


def test_betti_errors():
    blobs = np.zeros((21, 21), bool)
    blobs[1:4, 1:4] = blobs[15:19, 15:19] = True
    assert betti_errors(blobs, ring2d()) == (1, 1)
    assert betti_errors(ring2d(), ring2d()) == (0, 0)
    assert betti_errors(torus(), ball(32, 6)) == (0, 1)


def test_dice_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:4] = True  # 40 voxels
    b[2:6] = True  # 40 voxels, 20 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:5])


def test_cldice_known_values():
    gt = np.zeros((9, 30), bool)
    gt[4, 2:26] = True  # a one-pixel line: its own skeleton, 24 pixels
    half = gt.copy()
    half[:, 14:] = False  # 12 of 24 found
    cl, tprec, tsens = cldice(half, gt)
    assert (tprec, tsens) == (1.0, 0.5)
    assert cl == pytest.approx(2 / 3)
    # A prediction with a spurious branch: precision drops, sensitivity stays.
    spur = gt.copy()
    spur[5:9, 10] = True
    cl, tprec, tsens = cldice(spur, gt)
    assert tsens == 1.0 and tprec < 1.0
    skel = skeleton(spur)
    assert tprec == pytest.approx(int((skel & gt).sum()) / int(skel.sum()))
    # A precomputed gt skeleton is used as given.
    custom = np.zeros_like(gt)
    custom[4, 2:6] = True
    custom[0, 0] = True  # outside every prediction: sensitivity 4/5
    assert cldice(gt, gt, gt_skeleton=custom)[2] == pytest.approx(0.8)
    # Empty cases.
    empty = np.zeros_like(gt)
    assert cldice(empty, empty) == (1.0, 1.0, 1.0)
    assert cldice(empty, gt) == (0.0, 0.0, 0.0)


def test_cldice_3d_tube():
    gt = np.zeros((16, 16, 40), bool)
    gt[5:10, 5:10, 4:36] = True  # odd width: Lee keeps a centreline
    assert skeleton(gt).sum() > 20
    assert cldice(gt, gt) == (1.0, 1.0, 1.0)
    cut = gt.copy()
    cut[:, :, 18:22] = False  # a gap in the vessel: topology sensitivity drops
    assert cldice(cut, gt)[2] < 1.0
    assert betti_errors(cut, gt) == (1, 0)


def test_evaluate_case_per_class_and_mean():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:8, 2:8] = 1
    gt[12:18, 12:18] = 2
    gt[14:16, 14:16] = 0  # class 2 is a ring
    pred = gt.copy()
    pred[pred == 2] = 0
    pred[12:18, 12:18] = 2  # class 2 filled: hole lost
    res = evaluate_case(pred, gt)
    assert set(res["classes"]) == {1, 2}
    assert res["classes"][1]["dice"] == 1.0 and res["classes"][1]["betti1_error"] == 0.0
    assert res["classes"][2]["betti1_error"] == 1.0 and res["classes"][2]["betti0_error"] == 0.0
    assert res["classes"][2]["dice"] == pytest.approx(2 * 32 / (32 + 36))
    for key, value in res["mean"].items():
        assert value == pytest.approx((res["classes"][1][key] + res["classes"][2][key]) / 2)
    # Explicit classes, a class absent from both counts as perfect.
    only = evaluate_case(pred, gt, classes=[2, 3])
    assert set(only["classes"]) == {2, 3} and only["classes"][3]["dice"] == 1.0
    # A labelled gt thin skeleton is split per class.
    thin = np.zeros_like(gt)
    thin[5, 3:7] = 1
    thin[0, 0] = 2  # class 2's "skeleton" lies outside the prediction
    res = evaluate_case(pred, gt, gt_thin=thin)
    assert res["classes"][1]["topology_sensitivity"] == 1.0
    assert res["classes"][2]["topology_sensitivity"] == 0.0


def test_evaluate_case_3d():
    gt = torus().astype(np.uint8)
    pred = ball(32, 6).astype(np.uint8)
    res = evaluate_case(pred, gt)
    assert res["classes"][1]["betti1_error"] == 1.0
    assert res["mean"]["betti0_error"] == 0.0


def test_import_skelprep_stays_light():
    code = (
        "import sys, skelprep, skelprep.metrics, skelprep.evaluate, skelprep.cli, skelprep.store;"
        "bad = [m for m in ('torch', 'dask.distributed') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- folders and CLI -------------------------------------------------------------------------


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    ring = ring2d(31, 12, 6).astype(np.uint8)
    line = np.zeros((31, 31), np.uint8)
    line[15, 3:28] = 2
    _write(gt_dir / "a.png", ring)
    _write(pred_dir / "a.png", ring)
    _write(gt_dir / "sub" / "b.png", line)
    broken = line.copy()
    broken[15, 14:17] = 0
    _write(pred_dir / "sub" / "b.png", broken)
    return pred_dir, gt_dir


def test_find_masks_pairs_by_relative_name(folders):
    pred_dir, _ = folders
    masks, problems = find_masks(pred_dir)
    assert sorted(masks) == ["a", "sub/b"] and problems == {}


def test_eval_cli_json(folders, tmp_path):
    pred_dir, gt_dir = folders
    out = tmp_path / "res" / "eval.json"
    result = CliRunner().invoke(cli, ["eval", str(pred_dir), str(gt_dir), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "sub/b" in result.output and "mean" in result.output
    data = json.loads(out.read_text())
    a, b = data["cases"]["a"], data["cases"]["sub/b"]
    assert a["mean"]["dice"] == 1.0 and a["mean"]["betti1_error"] == 0.0
    assert b["classes"]["2"]["betti0_error"] == 1.0  # the gap splits the line in two
    assert b["classes"]["2"]["topology_precision"] == 1.0
    assert b["classes"]["2"]["topology_sensitivity"] == pytest.approx(22 / 25)
    assert data["mean"]["dice"] == pytest.approx((1.0 + b["mean"]["dice"]) / 2)
    assert b["gt_skeleton"] == "computed" and data["failed"] == {}


def test_eval_cli_failures(folders):
    pred_dir, gt_dir = folders
    (pred_dir / "a.png").unlink()
    result = CliRunner().invoke(cli, ["eval", str(pred_dir), str(gt_dir)])
    assert result.exit_code == 1
    assert "no prediction for case 'a'" in result.output
    _write(pred_dir / "a.png", np.zeros((5, 5)))
    result = CliRunner().invoke(cli, ["eval", str(pred_dir), str(gt_dir)])
    assert result.exit_code == 1 and "differs from ground truth shape" in result.output
    result = CliRunner().invoke(cli, ["eval", str(pred_dir), str(gt_dir / "nope")])
    assert result.exit_code != 0 and "nope" in result.output


def test_eval_reuses_the_store(tmp_path):
    dataset = tmp_path / "octa"
    (dataset / "labelsTr").mkdir(parents=True)
    shutil.copy(DATA / "octa3d" / "dataset.json", dataset)
    for i in range(2):
        shutil.copy(DATA / "octa3d" / "labelsTr" / f"octa_00{i}.nii.gz", dataset / "labelsTr")
    assert build(dataset, workers=1).ok
    pred_dir = tmp_path / "pred"
    shutil.copytree(dataset / "labelsTr", pred_dir)
    # Found at GT_DIR/../skeletons.zarr; stale cases fall back to skeletonizing.
    report = evaluate_folders(pred_dir, dataset / "labelsTr")
    assert {c.gt_skeleton for c in report.cases} == {"store"}
    store = open_store(dataset / "skeletons.zarr")
    from skelprep.io import read_mask

    gt = read_mask(dataset / "labelsTr" / "octa_000.nii.gz").array
    expected = evaluate_case(gt, gt, gt_thin=store["octa_000"].thin[...])
    case = next(c for c in report.cases if c.case_id == "octa_000")
    assert case.scores["mean"] == expected["mean"]
    # Plain scikit-image skeletons: a stored thin equals them only where the build needed no fallback
    # (octa_000 has one component Lee deletes whole, octa_001 none).
    plain = {
        c.case_id: c
        for c in evaluate_folders(pred_dir, dataset / "labelsTr", skeleton_method="skimage").cases
    }
    assert plain["octa_000"].gt_skeleton == "computed" and plain["octa_001"].gt_skeleton == "store"
    assert (
        store["octa_000"].attrs["fallback_components"] > 0 == store["octa_001"].attrs["fallback_components"]
    )
    gt = read_mask(dataset / "labelsTr" / "octa_001.nii.gz").array
    assert plain["octa_001"].scores == evaluate_case(gt, gt, skeleton_method="skimage")
    # Touch a ground truth: its stored skeleton is stale and not used.
    shutil.copy(DATA / "octa3d" / "labelsTr" / "octa_002.nii.gz", dataset / "labelsTr" / "octa_001.nii.gz")
    shutil.copy(dataset / "labelsTr" / "octa_001.nii.gz", pred_dir / "octa_001.nii.gz")
    out = tmp_path / "e.json"
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            str(pred_dir),
            str(dataset / "labelsTr"),
            "--store",
            str(dataset / "skeletons.zarr"),
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["cases"]["octa_000"]["gt_skeleton"] == "store"
    assert data["cases"]["octa_001"]["gt_skeleton"] == "computed"
    result = CliRunner().invoke(
        cli, ["eval", str(pred_dir), str(dataset / "labelsTr"), "--store", str(tmp_path / "none.zarr")]
    )
    assert result.exit_code == 1 and "no skelprep store" in result.output
