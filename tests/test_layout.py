"""Dataset discovery: nnU-Net raw, generic folders, globs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skelprep.layout import LayoutError, discover

from .helpers import EXAMPLES, SHARED, needs, write_png

MASK = np.zeros((8, 8), np.uint8)


def test_nnunet_shared_datasets():
    cracks = discover(needs(SHARED / "nnunet" / "Dataset001_RoadCracks"))
    assert cracks.kind == "nnunet" and len(cracks.cases) == 6 and not cracks.problems
    assert cracks.cases[0].case_id == "crack_000" and cracks.cases[0].images[0].name == "crack_000_0000.png"
    assert cracks.label_names[3] == "crack"
    octa = discover(needs(SHARED / "nnunet" / "Dataset002_OCTA"))
    assert [c.case_id for c in octa.cases] == [f"octa_{i:03d}" for i in range(4)]


def _nnunet(tmp_path, labels, channels=("CT",), ending=".png"):
    root = tmp_path / "ds"
    (root / "labelsTr").mkdir(parents=True)
    (root / "imagesTr").mkdir()
    meta = {"labels": labels, "channel_names": dict(enumerate(channels)), "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_ignore_label_multichannel_and_missing_images(tmp_path):
    root = _nnunet(tmp_path, {"background": 0, "vessel": 1, "ignore": 2}, channels=("T1", "T2"))
    for case in ("a", "b", "c"):
        write_png(root / "labelsTr" / f"{case}.png", MASK)
    for ch in (0, 1):
        write_png(root / "imagesTr" / f"a_{ch:04d}.png", MASK)
    write_png(root / "imagesTr" / "b_0000.png", MASK)  # b lacks channel 1, c has no image
    layout = discover(root)
    assert layout.ignore_label == 2 and not layout.problems
    # every mask is a case (its targets need no image); b and c name the image files they lack
    a, b, c = layout.cases
    assert len(a.images) == 2 and a.image_problem is None
    assert b.images == () and b.image_problem.path == root / "imagesTr" / "b_0001.png"
    assert "channel 1 of case 'b'" in b.image_problem.reason
    assert c.images == () and c.image_problem.path == root / "imagesTr" / "c_0000.png"


def test_nnunet_bad_dataset_json(tmp_path):
    root = _nnunet(tmp_path, {"background": 0})
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(LayoutError, match="invalid dataset.json"):
        discover(root)
    (root / "dataset.json").write_text(json.dumps({"labels": {}, "file_ending": ".png"}))
    (root / "labelsTr").rmdir()
    with pytest.raises(LayoutError, match="labelsTr"):
        discover(root)


def test_generic_nested_ids_duplicates_and_images(tmp_path):
    root = tmp_path / "g"
    write_png(root / "masks" / "left" / "img_07.png", MASK)
    write_png(root / "masks" / "right" / "img_01.png", MASK)
    write_png(root / "masks" / "dup.png", MASK)
    write_png(root / "masks" / "dup.tif", MASK)
    write_png(root / "images" / "left" / "img_07.png", MASK)
    write_png(root / "images" / "right" / "img_01_0000.png", MASK)
    (root / "masks" / ".hidden.png").write_bytes(b"x")
    (root / "masks" / "notes.txt").write_text("x")
    layout = discover(root)
    assert layout.kind == "generic"
    assert [c.case_id for c in layout.cases] == ["left/img_07", "right/img_01"]
    assert [p.case_id for p in layout.problems] == ["dup"] and "duplicate" in layout.problems[0].reason


def test_generic_without_images_and_store_is_skipped(tmp_path):
    layout = discover(EXAMPLES / "chase_vessels")
    assert len(layout.cases) == 2 and all(c.images == () for c in layout.cases)


def test_globs(tmp_path):
    layout = discover(needs(SHARED / "real"), masks="chase_db1/*_1stHO.png")
    assert layout.kind == "glob" and len(layout.cases) == 8
    assert layout.cases[0].case_id == "Image_11L_1stHO"
    root = tmp_path / "x"
    write_png(root / "seg" / "a" / "c1.png", MASK)
    write_png(root / "img" / "a" / "c1_0000.png", MASK)
    layout = discover(root, masks="seg/**/*.png", images="img/**/*.png")
    assert [c.case_id for c in layout.cases] == ["a/c1"] and layout.cases[0].images


def test_dataset_errors(tmp_path):
    with pytest.raises(LayoutError, match="not found"):
        discover(tmp_path / "nope")
    with pytest.raises(LayoutError, match="no dataset.json"):
        discover(tmp_path)
    with pytest.raises(LayoutError, match="no mask files match"):
        discover(tmp_path, masks="*.png")


def test_dataset_errors_name_the_parameter_not_a_cli_option(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(LayoutError, match="no dataset.json, labels/ or masks/ folder found") as raised:
        discover(tmp_path)
    assert raised.value.param == "masks" and "--" not in str(raised.value)
    with pytest.raises(LayoutError, match="an images glob needs a masks glob") as raised:
        discover(tmp_path, images="*.png")
    assert raised.value.param == "masks" and "--" not in str(raised.value)
    assert LayoutError("x").param is None


@pytest.mark.parametrize(
    "labels, reason",
    [
        ({"background": 0, "vessel": 1, "ignore": True}, "label 'ignore' is true"),
        ({"background": 0, "vessel": True}, "label 'vessel' is true"),
        ({"background": 0, "vessel": 1.5}, "label 'vessel' is 1.5"),
        ({"background": 0, "vessel": "1"}, "label 'vessel' is \"1\""),
        ({"background": 0, "vessel": -1}, "label 'vessel' is -1"),
        ({"background": 0, "vessel": 1, "ignore": 0}, "'ignore' label is 0; it must be a positive"),
        ({"background": 0, "a": 1, "b": 2, "ignore": [1, 2]}, "'ignore' label is \\[1, 2\\]"),
    ],
)
def test_nnunet_label_values_that_are_no_labels_are_refused(tmp_path, labels, reason):
    """JSON's true would pass an int check as label 1 (as an ignore label: every tube empty)."""
    root = _nnunet(tmp_path, labels)
    write_png(root / "labelsTr" / "a.png", MASK)
    with pytest.raises(LayoutError, match=reason) as raised:
        discover(root)
    assert str(raised.value).startswith(f"{root / 'dataset.json'}: invalid dataset.json")


def test_nnunet_region_entries_name_no_label(tmp_path):
    root = _nnunet(tmp_path, {"background": 0, "a": 1, "b": 2, "whole": [1, 2], "ignore": 3})
    write_png(root / "labelsTr" / "a.png", MASK)
    layout = discover(root)
    assert layout.label_names == {0: "background", 1: "a", 2: "b", 3: "ignore"} and layout.ignore_label == 3


def test_files_of_a_label_folder_that_are_no_masks_are_listed_as_skipped(tmp_path):
    root = tmp_path / "g"
    write_png(root / "labels" / "a.png", MASK)
    (root / "labels" / "x.jpg").write_bytes(b"x")
    (root / "labels" / "sub").mkdir()
    (root / "labels" / "sub" / "notes.txt").write_text("x")
    (root / "labels" / ".DS_Store").write_text("x")  # hidden: not an input
    (root / "labels" / "old.zarr").mkdir()  # a store: not walked
    (root / "labels" / "old.zarr" / "zarr.json").write_text("{}")
    layout = discover(root)
    assert [c.case_id for c in layout.cases] == ["a"]
    reason = "not a mask file (.nii.gz, .nii, .png, .tif, .tiff)"
    assert [str(s) for s in layout.skipped] == [
        f"{root / 'labels' / 'sub' / 'notes.txt'}: {reason}",
        f"{root / 'labels' / 'x.jpg'}: {reason}",
    ]
    nn = _nnunet(tmp_path, {"background": 0, "a": 1})
    write_png(nn / "labelsTr" / "a.png", MASK)
    write_png(nn / "labelsTr" / "b.tif", MASK)
    assert [(s.path.name, s.reason) for s in discover(nn).skipped] == [
        ("b.tif", "not a '.png' mask (the file_ending of dataset.json)")
    ]


def _problems(layout):
    return {p.case_id: p.reason for p in layout.problems}


def test_case_ids_that_would_leave_the_store_are_problems_in_every_layout(tmp_path):
    root = tmp_path / "p" / "ds"
    write_png(root / "labels" / "a" / "x.png", MASK)
    write_png(tmp_path / "p" / "victim.png", MASK)
    write_png(root / "labels" / "back\\slash.png", MASK)
    # a glob that climbs out of its folder: the id would be "a/../../../victim"
    layout = discover(root, masks="labels/*/../../../*.png")
    assert not layout.cases and "'..' part" in _problems(layout)["a/../../../victim"]
    # the walk of a labels folder (generic) and of labelsTr (nnU-Net): a backslash is a separator elsewhere
    generic = discover(root)
    assert [c.case_id for c in generic.cases] == ["a/x"]
    assert "a backslash" in _problems(generic)["back\\slash"]
    nnunet = _nnunet(tmp_path / "n", {"background": 0, "vessel": 1})
    write_png(nnunet / "labelsTr" / "ok.png", MASK)
    write_png(nnunet / "labelsTr" / "b\\c.png", MASK)
    layout = discover(nnunet)
    assert "a backslash" in _problems(layout)["b\\c"] and "rename the mask" in str(layout.problems[0])


def test_ids_that_differ_only_by_case_are_a_collision_naming_both(tmp_path):
    root = tmp_path / "g"
    for name in ("Case1", "case1", "other", "Folder", "folder/inner"):
        write_png(root / "labels" / f"{name}.png", MASK)
    layout = discover(root)
    problems = _problems(layout)
    assert [c.case_id for c in layout.cases] == ["folder/inner", "other"]
    assert "differs only by case from 'case1'" in problems["Case1"]
    assert "differs only by case from 'Case1'" in problems["case1"]
    assert "also the folder of other cases" in problems["Folder"]  # "folder/" on a case-insensitive disk


def test_globs_do_not_follow_symlinked_folders(tmp_path):
    root = tmp_path / "ds"
    for name in ("a", "b", "deep/c"):
        write_png(root / "seg" / f"{name}.png", MASK)
    (root / "seg" / "loop").symlink_to(".")  # glob's ** would go round it for ever (to its depth limit)
    for pattern in ("seg/**/*.png", "seg/*/*.png", "**/*.png"):
        ids = [c.case_id for c in discover(root, masks=pattern).cases]
        assert "loop" not in "/".join(ids), (pattern, ids)
    assert [c.case_id for c in discover(root, masks="seg/**/*.png").cases] == ["a", "b", "deep/c"]
    # a symlinked folder the glob names itself is the user's choice
    (root / "linked").symlink_to(root / "seg" / "deep")
    assert [c.case_id for c in discover(root, masks="linked/*.png").cases] == ["c"]


def test_a_dataset_spelled_like_a_url_with_one_slash_is_refused(tmp_path):
    with pytest.raises(LayoutError, match="looks like a URL with one slash; write s3://bkt/raw"):
        discover("s3:/bkt/raw")
