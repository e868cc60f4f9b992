"""The conventions of `skelprep eval`, each on a hand-made case whose numbers are worked out here.

Shapes are one-pixel lines wherever a skeleton matters: Zhang thinning never deletes a pixel of a
one-pixel line (an end pixel has one neighbour, an interior one two 0->1 transitions around it), so a
line is its own skeleton and every clDice ratio below is a count of line pixels.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from skelprep.build import BuildParams, build
from skelprep.cli import cli
from skelprep.evaluate import evaluate_folders
from skelprep.io import read_mask
from skelprep.metrics import METRIC_NAMES, betti_numbers, evaluate_case, mean_metrics

from .helpers import EXAMPLES, copy_dataset, write_png


def scores(dice, cldice, tprec, tsens, b0_error, b1_error) -> dict[str, float]:
    return dict(zip(METRIC_NAMES, map(float, (dice, cldice, tprec, tsens, b0_error, b1_error)), strict=True))


PERFECT = scores(1, 1, 1, 1, 0, 0)


def lines_case() -> tuple[np.ndarray, np.ndarray]:
    """gt: class 1 = 12-pixel line, class 2 = 8-pixel line. pred: class 1 exact, class 2 missed, class 3 spurious."""
    gt = np.zeros((12, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[2, 2:14] = pred[2, 2:14] = 1  # 12 pixels, found exactly
    gt[6, 2:10] = 2  # 8 pixels, not predicted
    pred[9, 2:6] = 3  # 4 pixels, no such class in gt
    return pred, gt


def test_class_mean_and_merged_binary():
    pred, gt = lines_case()
    res = evaluate_case(pred, gt)
    # Default classes: those in gt or pred, {1, 2, 3}.
    assert sorted(res["classes"]) == [1, 2, 3] and res["empty_classes"] == [] and not res["blank"]
    # Class 1: perfect.
    assert res["classes"][1] == PERFECT
    # Class 2 (missed): Dice 2*0/(8+0) = 0; Tprec: skel(pred) empty while gt is not -> 0; Tsens 0/8 = 0;
    # clDice 0; b0: pred 0 components, gt 1 -> error 1.
    # Class 3 (spurious): Dice 0; Tprec 0/4 = 0; Tsens: skel(gt) empty while pred is not -> 0; b0 error 1.
    for c in (2, 3):
        assert res["classes"][c] == scores(0, 0, 0, 0, 1, 0)
    # Class mean: (1 + 0 + 0) / 3 for the ratios, (0 + 1 + 1) / 3 for the b0 error.
    mean = res["mean"]
    for key in METRIC_NAMES[:4]:
        assert mean[key] == pytest.approx(1 / 3)
    assert mean["betti0_error"] == pytest.approx(2 / 3) and mean["betti1_error"] == 0.0
    # Merged binary: G = rows 2 and 6 (12 + 8 = 20 px), P = rows 2 and 9 (12 + 4 = 16 px), G ∩ P = 12.
    # Dice 2*12/36 = 2/3; Tprec |P ∩ G| / |P| = 12/16 = 0.75; Tsens |G ∩ P| / |G| = 12/20 = 0.6;
    # clDice 2*0.75*0.6/1.35 = 2/3; two components on either side: b0 error 0 (the class mean says 2/3).
    binary = res["binary"]
    assert binary["dice"] == pytest.approx(2 / 3)
    assert binary["topology_precision"] == pytest.approx(0.75)
    assert binary["topology_sensitivity"] == pytest.approx(0.6)
    assert binary["cldice"] == pytest.approx(2 / 3)
    assert binary["betti0_error"] == 0.0 and binary["betti1_error"] == 0.0


def test_empty_class_scores_as_perfect_and_is_listed():
    pred, gt = lines_case()
    # Class 4 is in neither mask: Dice (2*0)/(0+0) and both topology ratios have empty denominators
    # with both masks empty -> 1; clDice 1; b0 and b1 of two empty masks are 0 -> errors 0.
    res = evaluate_case(pred, gt, classes=[2, 4])
    assert res["empty_classes"] == [4]
    assert res["classes"][4] == PERFECT
    # It counts in the class mean, beside the missed class 2 (all ratios 0, b0 error 1):
    # ratios (0 + 1) / 2 = 0.5, b0 error (1 + 0) / 2 = 0.5, b1 error 0.
    assert res["mean"] == scores(0.5, 0.5, 0.5, 0.5, 0.5, 0)


def test_blank_case_scores_as_perfect_in_every_mean():
    blank = np.zeros((6, 6), np.uint8)
    res = evaluate_case(blank, blank)
    # No class present: none scored. Merged binary: both masks empty -> every ratio 1, errors 0;
    # the class mean has nothing to average and takes those values (it is not left empty).
    assert res["blank"] and res["classes"] == {} and res["empty_classes"] == []
    assert res["binary"] == PERFECT and res["mean"] == PERFECT
    # Asked for classes 1 and 2, both are empty classes, scored and listed.
    res = evaluate_case(blank, blank, classes=[1, 2])
    assert res["empty_classes"] == [1, 2] and res["mean"] == PERFECT


def test_mean_of_nothing_is_nan_for_every_metric():
    # The docstring's promise: no results, no score (NaN), not an empty dict.
    empty = mean_metrics([])
    assert sorted(empty) == sorted(METRIC_NAMES) and all(math.isnan(v) for v in empty.values())
    # Scoring no class of a non-blank case leaves its class mean nothing to average: NaN.
    pred = np.zeros((6, 6), np.uint8)
    pred[2, 1:5] = 1
    assert math.isnan(evaluate_case(pred, np.zeros_like(pred), classes=[])["mean"]["dice"])


@pytest.fixture
def folders(tmp_path):
    """Case 'lines' (see lines_case) and case 'blank' (all background on both sides)."""
    pred, gt = lines_case()
    write_png(tmp_path / "gt" / "lines.png", gt)
    write_png(tmp_path / "pred" / "lines.png", pred)
    write_png(tmp_path / "gt" / "blank.png", np.zeros_like(gt))
    write_png(tmp_path / "pred" / "blank.png", np.zeros_like(gt))
    return tmp_path / "pred", tmp_path / "gt"


def test_folders_count_blank_cases_in_the_means(folders, tmp_path):
    pred_dir, gt_dir = folders
    report = evaluate_folders(pred_dir, gt_dir)
    assert report.blank_cases == ["blank"] and report.empty_class_scores == 0
    # Mean over both cases of the class mean: Dice (1/3 + 1) / 2 = 2/3, b0 error (2/3 + 0) / 2 = 1/3.
    assert report.mean["dice"] == pytest.approx(2 / 3)
    assert report.mean["betti0_error"] == pytest.approx(1 / 3)
    # Merged binary: Dice (2/3 + 1) / 2 = 5/6, Tsens (0.6 + 1) / 2 = 0.8, b0 error 0.
    assert report.binary_mean["dice"] == pytest.approx(5 / 6)
    assert report.binary_mean["topology_sensitivity"] == pytest.approx(0.8)
    assert report.binary_mean["betti0_error"] == 0.0
    # Per class, over the cases that score it: only 'lines' has classes 1-3 (the blank case none).
    assert report.class_cases == {1: 1, 2: 1, 3: 1}
    assert report.class_mean[1]["dice"] == 1.0 and report.class_mean[2]["dice"] == 0.0
    # --classes 1,2,3: the blank case scores three empty classes, so each class has 2 cases:
    # class 2 Dice (0 + 1) / 2 = 0.5. The case means do not move (the blank one is perfect either way).
    out = tmp_path / "e.json"
    result = CliRunner().invoke(
        cli, ["eval", str(pred_dir), str(gt_dir), "--classes", "1,2,3", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "1 blank case(s) and 3 empty class score(s) counted as perfect" in result.output
    data = json.loads(out.read_text())
    assert data["counts"] == {
        "cases": 2,
        "scored": 2,
        "failed": 0,
        "blank_cases": 1,
        "empty_class_scores": 3,
        "unmatched_predictions": 0,
    }
    assert data["conventions"]["empty"].startswith("nothing to find and nothing found is perfect")
    assert "classes 1, 2, 3" in data["conventions"]["classes"]
    assert data["cases"]["blank"]["empty_classes"] == [1, 2, 3]
    assert data["class_cases"] == {"1": 2, "2": 2, "3": 2}
    assert data["class_mean"]["2"]["dice"] == pytest.approx(0.5)
    assert data["mean"]["dice"] == pytest.approx(2 / 3)


def test_no_case_scored_gives_null_means_and_counts_the_failures(folders, tmp_path):
    pred_dir, gt_dir = folders
    for path in pred_dir.iterdir():
        path.unlink()
    out = tmp_path / "e.json"
    result = CliRunner().invoke(cli, ["eval", str(pred_dir), str(gt_dir), "--json", str(out)])
    assert result.exit_code == 1
    data = json.loads(out.read_text())
    # Nothing scored: the means are NaN, written as JSON null; both cases are counted as failed.
    assert data["mean"] == dict.fromkeys(METRIC_NAMES) and data["binary_mean"] == dict.fromkeys(METRIC_NAMES)
    assert data["counts"]["failed"] == 2 and data["counts"]["scored"] == 0


def test_duplicate_case_ids_fail_that_case_as_in_a_build(folders):
    pred_dir, gt_dir = folders
    # 'lines.png' and 'lines.nii.gz' both name case 'lines' (the layout's rule): that case fails, the
    # blank one is still scored.
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.uint8), np.eye(4)), gt_dir / "lines.nii.gz")
    report = evaluate_folders(pred_dir, gt_dir)
    assert [c.case_id for c in report.cases] == ["blank"]
    assert "duplicate case id 'lines'" in report.failed["lines"]


def test_skeleton_choice_on_a_rod_lee_deletes():
    # A 3D rod of 2x2 cross-section: Lee thinning deletes even-width bars whole (scikit-image#3757).
    gt = np.zeros((6, 6, 20), np.uint8)
    gt[2:4, 2:4, 2:18] = 1
    # skimage: skel(gt) and skel(pred) are empty for non-empty masks -> Tprec = Tsens = 0 -> clDice 0,
    # for a perfect prediction. skelprep: the fallback skeleton lies inside gt = pred -> both ratios 1.
    # Dice (1) and the Betti errors (0) do not depend on skeletons.
    plain = evaluate_case(gt, gt, skeleton_method="skimage")
    ours = evaluate_case(gt, gt)
    for res, expected in ((plain, 0.0), (ours, 1.0)):
        for scores in (res["classes"][1], res["binary"]):
            assert scores["cldice"] == scores["topology_sensitivity"] == expected
            assert scores["dice"] == 1.0 and scores["betti0_error"] == 0.0
    # Beside a component that keeps its skeleton, a deleted one goes uncounted: add a one-voxel line
    # (Lee keeps it: each voxel is an end point or holds the line together) and predict only the line.
    gt = np.pad(gt, ((0, 4), (0, 0), (0, 0)))
    gt[8, 3, 2:18] = 2
    line_only = np.where(gt == 2, gt, 0)
    # skimage: skel(gt) = the 16-voxel line, all predicted -> Tsens 16/16 = 1; skel(pred) = the line,
    # inside gt -> Tprec 1; merged clDice 1 although the rod is missed. skelprep: skel(gt) also holds
    # the rod's fallback skeleton, outside pred -> Tsens 16/(16 + rod's) < 1.
    plain = evaluate_case(line_only, gt, skeleton_method="skimage")["binary"]
    ours = evaluate_case(line_only, gt)["binary"]
    assert plain["cldice"] == plain["topology_sensitivity"] == 1.0
    assert ours["topology_sensitivity"] < 1.0 and ours["topology_precision"] == 1.0


def _nifti(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def test_singleton_axis_choice(tmp_path):
    # A 2-pixel-wide bar stored as a one-slice NIfTI (8, 20, 1); prediction = ground truth.
    bar = np.zeros((8, 20, 1), np.uint8)
    bar[2:4, 2:18, 0] = 1
    _nifti(tmp_path / "gt" / "bar.nii.gz", bar)
    _nifti(tmp_path / "pred" / "bar.nii.gz", bar)
    args = ["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", str(tmp_path / "e.json")]

    def run(*extra):
        result = CliRunner().invoke(cli, args + list(extra))
        assert result.exit_code == 0, result.output
        data = json.loads((tmp_path / "e.json").read_text())
        return data["cases"]["bar"], data["conventions"]["singleton_axes"]

    # Default: squeezed to (8, 20) and thinned with Zhang, whose first sub-iteration deletes the bar's
    # south row (a south neighbour is missing) and keeps the north row (east, south and west present),
    # a line it keeps: the skeleton is non-empty and inside gt = pred -> clDice 1, even with skimage.
    case, note = run("--skeleton", "skimage")
    assert case["shape"] == [8, 20] and "Zhang" in note
    assert case["binary"]["cldice"] == 1.0
    # --keep-singleton-axes: the (8, 20, 1) volume, thinned with Lee as 3D scorers do. Lee deletes the
    # even-width bar whole: plain scikit-image gives an empty skeleton -> clDice 0 (Tsens = Tprec = 0);
    # skelprep's fallback keeps one inside the bar -> 1. The Betti numbers are the slice's: errors 0.
    case, note = run("--skeleton", "skimage", "--keep-singleton-axes")
    assert case["shape"] == [8, 20, 1] and "Lee" in note
    assert case["binary"]["cldice"] == 0.0 and case["classes"]["1"]["cldice"] == 0.0
    assert case["binary"]["betti0_error"] == case["binary"]["betti1_error"] == 0.0
    case, _ = run("--keep-singleton-axes")
    assert case["binary"]["cldice"] == 1.0


def test_store_skeletons_used_only_where_they_equal_the_computed_ones(tmp_path):
    dataset = copy_dataset(EXAMPLES / "road_cracks", tmp_path / "cracks")
    labels = dataset / "labelsTr"
    # Joint mode: thin > 0 is skeletonize(gt > 0), the merged binary skeleton; thin == c is not class
    # c's skeleton where there are several classes. Per-class mode: the other way round.
    for mode, used in (("joint", "store (merged binary)"), ("per-class", "store (classes)")):
        assert build(dataset, params=BuildParams(mode=mode), workers=1, force=True).ok
        report = evaluate_folders(labels, labels)
        multi = [c for c in report.cases if len(c.scores["classes"]) > 1]
        assert report.store is not None and multi and {c.gt_skeleton for c in multi} == {used}
        for case in report.cases:
            gt = read_mask(labels / f"{case.case_id}.png").array
            assert case.scores == evaluate_case(gt, gt)  # skeletonized here, without the store


def test_one_slice_volume_has_its_slice_betti_numbers():
    # Keeping the singleton axis changes the thinning, not the topology: a one-voxel-thick slab's
    # 26-connected components are the slice's 8-connected ones, it encloses no cavity (b2 = 0: every
    # background voxel touches the padding above or below), and a 4-connected hole of the slice is a
    # tunnel through the slab (b1). Ring: (1, 1); diamond of diagonal steps: one 4-connected hole, (1, 1);
    # two blobs touching at a corner: one component, (1, 0).
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    diamond = np.zeros((7, 7), bool)
    for y, x in [(1, 3), (2, 2), (3, 1), (4, 2), (5, 3), (4, 4), (3, 5), (2, 4)]:
        diamond[y, x] = True
    corner = np.zeros((6, 6), bool)
    corner[1:3, 1:3] = corner[3:5, 3:5] = True
    for mask, expected in ((ring, (1, 1)), (diamond, (1, 1)), (corner, (1, 0))):
        assert betti_numbers(mask) == expected
        assert betti_numbers(mask[:, :, np.newaxis]) == (*expected, 0)


@pytest.mark.parametrize("value", ["0", "1,x", ""])
def test_eval_refuses_bad_classes(folders, value):
    pred_dir, gt_dir = folders
    result = CliRunner().invoke(cli, ["eval", str(pred_dir), str(gt_dir), "--classes", value])
    assert result.exit_code == 2 and "--classes" in result.output


def test_a_dataset_folder_is_ground_truth_through_its_label_folder(tmp_path):
    # nnU-Net raw (labelsTr/ beside imagesTr/) and generic (labels/ beside images/): the label folder
    # is found as a build finds it; the images are no ground truth.
    cracks = copy_dataset(EXAMPLES / "road_cracks", tmp_path / "cracks")
    generic = tmp_path / "generic"
    (generic / "labels").mkdir(parents=True)
    (generic / "images").mkdir()
    for path in (cracks / "labelsTr").iterdir():
        (generic / "labels" / path.name).write_bytes(path.read_bytes())
    for path in (cracks / "imagesTr").iterdir():
        (generic / "images" / path.name.replace("_0000", "")).write_bytes(path.read_bytes())
    for dataset, labels in ((cracks, "labelsTr"), (generic, "labels")):
        report = evaluate_folders(dataset / labels, dataset)
        assert report.gt_dir == str(dataset / labels)
        assert report.failed == {} and len(report.cases) == 3 and report.mean["dice"] == 1.0
        result = CliRunner().invoke(cli, ["eval", str(dataset / labels), str(dataset)])
        assert result.exit_code == 0, result.output
    # A folder with neither label maps nor a dataset layout says what it expected, in one line.
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["eval", str(cracks / "labelsTr"), str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "expected label maps, or a dataset folder" in result.stderr


def test_eval_table_names_every_column_and_the_thinning_per_dimensionality(tmp_path):
    octa = copy_dataset(EXAMPLES / "octa3d", tmp_path / "octa")
    result = CliRunner().invoke(cli, ["eval", str(octa / "labelsTr"), str(octa / "labelsTr")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header, first = lines[0], lines[1]
    # the header names the note column too: as many names as the first case row has cells
    assert header.split()[-1] == "notes" and first.split()[-1] == "computed"
    footer = lines[-1]
    assert "Lee for 3D (4 cases)" in footer and "Zhang" not in footer and "(2D" not in footer
