"""A corpus of broken inputs: every bad case fails alone with one line naming its file and the reason.

One build over a folder holding all the bad cases and a few good ones (so the suite stays
fast), run as a real ``skelprep`` process; then the whole-dataset errors, which stop before
anything is built.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from skelprep import open_store, skeleton_targets
from skelprep.cli import cli
from skelprep.io import InputError, image_shape, read_mask

from .helpers import CLI, drop_dac_capabilities, permissions_enforceable, write_png


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height pixels, with a few bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def _vessel_2d(shape=(24, 32), value=1) -> np.ndarray:
    mask = np.zeros(shape, np.uint8 if value <= 255 else np.uint16)
    mask[shape[0] // 2 - 1 : shape[0] // 2 + 2, 2:-2] = value
    return mask


def make_corpus(
    root: Path, *, with_permissions: bool
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, str]]]:
    """Write a generic dataset (labels/ + images/) of good and bad cases.

    Returns
    -------
    good : dict
        case id -> the label map its mask holds (these must be built).
    bad : dict
        kind -> (the file the failure line must name, a regex of the reason).
    """
    labels, images = root / "labels", root / "images"
    labels.mkdir(parents=True)
    images.mkdir(parents=True)
    good: dict[str, np.ndarray] = {}
    bad: dict[str, tuple[str, str]] = {}

    def image_for(name: str, shape: tuple[int, ...]) -> None:
        if len(shape) == 2:
            write_png(images / f"{name}.png", np.full((*shape, 3), 90, np.uint8))
        else:
            _nifti(images / f"{name}.nii.gz", np.zeros(shape, np.int16))

    def bad_file(kind: str, name: str, content: bytes, reason: str, shape=(4, 4)) -> None:
        (labels / name).write_bytes(content)
        image_for(name.split(".")[0], shape)
        bad[kind] = (str(labels / name), reason)

    # --- good cases, built beside the bad ones (edge cases that are valid) ---
    for name, mask in {
        "good_2d": _vessel_2d(),
        "one_pixel": np.ones((1, 1), np.uint8),
        "strip_1px": np.ones((1, 40), np.uint8),
        "all_background": np.zeros((16, 16), np.uint8),
        "labels_16bit": _vessel_2d(value=60000),
        "name with spaces é": _vessel_2d(value=2),
    }.items():
        write_png(labels / f"{name}.png", mask)
        image_for(name, mask.shape)
        good[name] = mask
    volume = np.zeros((20, 22, 24), np.uint8)
    volume[8:12, 9:13, 2:22] = 3
    _nifti(labels / "good_3d.nii.gz", volume)
    image_for("good_3d", volume.shape)
    good["good_3d"] = volume
    grey_rgb = np.repeat(_vessel_2d()[..., None], 3, axis=-1)
    tifffile.imwrite(labels / "rgb_equal_channels.tif", grey_rgb, photometric="rgb")
    image_for("rgb_equal_channels", grey_rgb.shape[:2])
    good["rgb_equal_channels"] = _vessel_2d()
    write_png(labels / "nest" / "inner.png", _vessel_2d())
    image_for("nest/inner", (24, 32))
    good["nest/inner"] = _vessel_2d()

    # --- bad files (unreadable, not masks) ---
    valid = _png_bytes(_vessel_2d())
    bad_file("empty file", "empty.png", b"", "file is empty")
    bad_file("truncated PNG", "truncated.png", valid[: len(valid) // 2], "cannot read image")
    middle = bytearray(valid)
    idat = middle.index(b"IDAT") + 8
    middle[idat : idat + 12] = b"\xa5" * 12
    bad_file("PNG with a corrupted middle", "corrupt_middle.png", bytes(middle), "cannot read image")
    bad_file("text named .png", "text.png", b"this is a README, not a mask\n" * 3, "cannot read image")
    bad_file("garbage named .nii.gz", "garbage.nii.gz", os.urandom(600), "cannot read NIfTI")
    bad_file("zero-size NIfTI", "zero.nii.gz", b"", "file is empty")
    stream = bytearray(
        gzip.compress(
            nib.Nifti1Image(np.arange(4096, dtype=np.int16).reshape(16, 16, 16), np.eye(4)).to_bytes()
        )
    )
    stream[len(stream) // 2 : len(stream) // 2 + 32] = b"\x00" * 32
    bad_file("NIfTI with a broken gzip stream", "bad_gzip.nii.gz", bytes(stream), "cannot read NIfTI")
    whole = nib.Nifti1Image(np.ones((16, 16, 16), np.uint8), np.eye(4)).to_bytes()
    bad_file("truncated uncompressed NIfTI", "short.nii", whole[: len(whole) - 1000], "cannot read NIfTI")
    bad_file("garbage named .tif", "garbage_tiff.tif", b"II*\x00" + os.urandom(300), "cannot read TIFF")
    bad_file(
        "PNG decompression bomb header",
        "bomb.png",
        _bomb_png(100_000, 100_000),
        "decompression bomb|exceeds limit",
    )
    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)).header.copy()
    header.set_data_shape((4000, 4000, 4000))
    header["vox_offset"] = 352
    (labels / "bomb3d.nii").write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    image_for("bomb3d", (4, 4, 4))
    bad["NIfTI header declaring 64 G voxels"] = (str(labels / "bomb3d.nii"), "more than .* voxels")

    # --- readable files that would be used partly or whose geometry is no number ---
    frames = [Image.fromarray(_vessel_2d(value=v)) for v in (1, 2)]
    frames[0].save(labels / "animated.png", save_all=True, append_images=frames[1:])
    image_for("animated", (24, 32))
    bad["animated PNG"] = (str(labels / "animated.png"), "has 2 frames")
    tifffile.imwrite(labels / "two_series.tif", _vessel_2d())
    tifffile.imwrite(labels / "two_series.tif", _vessel_2d((20, 30)), append=True)
    image_for("two_series", (24, 32))
    bad["TIFF of two series"] = (str(labels / "two_series.tif"), "has 2 image series")
    nan_spacing = nib.Nifti1Image(np.ones((6, 6, 6), np.uint8), np.eye(4))
    nan_spacing.header["pixdim"][2] = np.nan
    nan_spacing.header["vox_offset"] = 352
    (labels / "nan_spacing.nii").write_bytes(
        nan_spacing.header.binaryblock + b"\x00" * 4 + np.ones((6, 6, 6), np.uint8).tobytes()
    )
    image_for("nan_spacing", (6, 6, 6))
    bad["NaN spacing in the NIfTI header"] = (str(labels / "nan_spacing.nii"), "pixdim has NaN")

    # --- readable files that are not label maps ---
    _nifti(labels / "probabilities.nii.gz", np.random.default_rng(0).random((6, 6, 6)).astype(np.float32))
    bad["float probability map"] = (str(labels / "probabilities.nii.gz"), "fractional values")
    nan = np.zeros((6, 6, 6), np.float32)
    nan[2, 2, 2] = np.nan
    _nifti(labels / "nan.nii.gz", nan)
    bad["NaN"] = (str(labels / "nan.nii.gz"), "NaN")
    _nifti(labels / "negative.nii.gz", np.full((6, 6, 6), -1, np.int16))
    bad["negative labels"] = (str(labels / "negative.nii.gz"), "negative labels")
    _nifti(labels / "time.nii.gz", np.ones((6, 6, 6, 3), np.uint8))
    bad["4D volume with a real 4th axis"] = (str(labels / "time.nii.gz"), "2D or 3D")
    _nifti(labels / "complex.nii.gz", np.ones((6, 6, 6), np.complex64))
    bad["complex-valued NIfTI"] = (str(labels / "complex.nii.gz"), "unsupported mask dtype|cannot read NIfTI")
    tifffile.imwrite(labels / "huge_labels.tif", np.full((6, 6), 70_000, np.int32))
    bad["labels above 65535"] = (str(labels / "huge_labels.tif"), "exceeds 65535")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[2, 2] = (200, 10, 10)
    write_png(labels / "colour.png", colour)
    bad["RGB mask with distinct channels"] = (str(labels / "colour.png"), "distinct channels")
    tifffile.imwrite(labels / "colour_tiff.tif", colour, photometric="rgb")
    bad["RGB TIFF mask with distinct channels"] = (str(labels / "colour_tiff.tif"), "distinct channels")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    write_png(labels / "alpha.png", rgba)
    bad["RGBA mask with a varying alpha"] = (str(labels / "alpha.png"), "varying alpha")
    for name in ("probabilities", "nan", "negative", "time", "complex"):
        image_for(name, (6, 6, 6))
    for name, shape in {
        "huge_labels": (6, 6),
        "colour": (8, 8),
        "colour_tiff": (8, 8),
        "alpha": (8, 8),
    }.items():
        image_for(name, shape)

    # --- file-system oddities ---
    os.mkfifo(labels / "fifo.png")  # opening it would block: it must be refused unopened
    image_for("fifo", (4, 4))
    bad["FIFO named like a mask"] = (str(labels / "fifo.png"), "FIFO")
    (labels / "folder.png").mkdir()
    image_for("folder", (4, 4))
    bad["folder named x.png"] = (str(labels / "folder.png"), "is a folder")
    os.symlink("loop_b.png", labels / "loop_a.png")
    os.symlink("loop_a.png", labels / "loop_b.png")
    image_for("loop_a", (4, 4))
    image_for("loop_b", (4, 4))
    bad["symlink loop"] = (str(labels / "loop_a.png"), "symbolic link loop")
    os.symlink("gone.png", labels / "dangling.png")
    image_for("dangling", (4, 4))
    bad["dangling symlink"] = (str(labels / "dangling.png"), "dangling symbolic link")
    (labels / "bad\nname.png").write_bytes(b"not a png")
    image_for("bad\nname", (4, 4))
    bad["control character in the file name"] = (str(labels / "bad\\nname.png"), "cannot read image")
    if with_permissions:
        write_png(labels / "no_permission.png", _vessel_2d())
        (labels / "no_permission.png").chmod(0)
        image_for("no_permission", (24, 32))
        bad["unreadable permissions"] = (str(labels / "no_permission.png"), "permission denied")

    # --- cases that discovery or the image check rejects, and a file that is no mask ---
    (labels / "README.txt").write_text("how these masks were drawn\n")
    write_png(labels / "shape_mismatch.png", _vessel_2d((20, 30)))
    image_for("shape_mismatch", (20, 31))
    bad["image/mask shape mismatch"] = (
        str(images / "shape_mismatch.png"),
        r"image shape \(20, 31\) differs .*\(20, 30\)",
    )
    good["no_image"] = _vessel_2d()  # a target needs no image
    write_png(labels / "no_image.png", good["no_image"])
    write_png(labels / "twice.png", _vessel_2d())
    _nifti(labels / "twice.nii.gz", np.ones((4, 4, 4), np.uint8))
    image_for("twice", (24, 32))
    bad["duplicate case ids"] = (str(labels / "twice"), "duplicate case id 'twice'")
    write_png(labels / "garbage_image.png", _vessel_2d())
    (images / "garbage_image.png").write_bytes(b"GIF89a" + os.urandom(40))
    bad["garbage image"] = (str(images / "garbage_image.png"), "cannot read image header")
    write_png(labels / "zarr.json.png", _vessel_2d())
    image_for("zarr.json", (24, 32))
    bad["case id that names the store's metadata"] = (str(labels / "zarr.json.png"), "reserved")
    write_png(labels / "nest.png", _vessel_2d())
    image_for("nest", (24, 32))
    bad["case id that is another case's folder"] = (
        str(labels / "nest.png"),
        "also the folder of other cases",
    )
    return good, bad


def _build_cli(args: list[str], *, drop_dac: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLI + args,
        capture_output=True,
        text=True,
        timeout=120,  # a reader that blocks (e.g. on a FIFO) must fail the test, not hang it
        preexec_fn=drop_dac_capabilities if drop_dac else None,
    )


def test_bad_input_corpus_fails_case_by_case(tmp_path):
    enforce = permissions_enforceable()
    root = tmp_path / "corpus"
    good, bad = make_corpus(root, with_permissions=enforce)
    assert len(bad) >= 30
    out = tmp_path / "corpus.zarr"
    result = _build_cli(
        ["build", str(root), "--out", str(out), "--workers", "2", "--no-progress"],
        drop_dac=enforce and os.geteuid() == 0,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and " object at 0x" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    skipped = [
        f"skipped: {root / 'labels' / 'README.txt'}: not a mask file (.nii.gz, .nii, .png, .tif, .tiff)"
    ]
    # nothing but one line per failure, and one per file that is no mask
    assert sorted(failed + skipped) == sorted(result.stderr.splitlines()), result.stderr
    assert (
        f"{len(good)} built, 0 up to date, {len(bad) + 1} failed, 1 skipped" in result.stdout
    )  # +1: loop_b, the loop's other end
    unmatched = []
    for kind, (path, reason) in bad.items():
        pattern = re.compile(re.escape(f"failed: {path}") + r"[^\n]*: .*(" + reason + ")")
        if not any(pattern.match(line) for line in failed):
            unmatched.append(f"{kind}: expected {path}: /{reason}/")
    assert not unmatched, "\n".join(unmatched + ["--- stderr:", result.stderr])

    store = open_store(out)
    assert sorted(store.case_ids) == sorted(good)
    for case_id, mask in good.items():
        expected = skeleton_targets(mask)
        np.testing.assert_array_equal(store[case_id].tube[...], expected.tube)
        np.testing.assert_array_equal(store[case_id].thin[...], expected.thin)
    assert store["one_pixel"].thin[...].tolist() == [[1]]  # a lone pixel is its own skeleton
    assert store["labels_16bit"].tube.dtype == np.uint16

    # --debug: the same failures, with a traceback for anything unexpected (here: none)
    again = _build_cli(
        ["--debug", "build", str(root), "--out", str(out), "--workers", "1", "--no-progress"],
        drop_dac=enforce and os.geteuid() == 0,
    )
    assert again.returncode == 1 and f"0 built, {len(good)} up to date, {len(bad) + 1} failed" in again.stdout


def test_reader_never_opens_a_fifo(tmp_path):
    """A FIFO named like a mask is refused without opening it (opening would block for ever)."""
    os.mkfifo(tmp_path / "pipe.nii.gz")
    for read in (read_mask, image_shape):
        with pytest.raises(InputError, match="FIFO"):
            read(tmp_path / "pipe.nii.gz")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda r: (r / "dataset.json").write_text('{"file_ending": ".png", '), "invalid dataset.json"),
        (
            lambda r: (r / "dataset.json").write_text('{"file_ending": ".png", "labels": {"bg": 0}}'),
            "labelsTr: labels folder",
        ),
        (lambda r: (r / "dataset.json").write_text('["not", "an", "object"]'), "not a JSON object"),
        (
            lambda r: (r / "dataset.json").write_text('{"file_ending": ".png", "labels": ["bg", "x"]}'),
            "'labels' must map",
        ),
        (
            lambda r: (
                (r / "labelsTr").mkdir(),
                (r / "dataset.json").write_text('{"file_ending": ".nii.gz"}'),
            ),
            "no '.nii.gz' masks found",
        ),
        (lambda r: (r / "dataset.json").write_text('{"file_ending": ".bmp"}'), "unsupported file_ending"),
        (lambda r: (r / "dataset.json").mkdir(), "not a regular file"),
        (lambda r: os.mkfifo(r / "dataset.json"), "not a regular file"),
        (lambda r: (r / "stuff").mkdir(), "no dataset.json, labels/ or masks/ folder"),
        (lambda r: (r / "labels").mkdir(), "no masks found"),
    ],
    ids=[
        "invalid-json",
        "missing-labels-folder",
        "json-not-object",
        "labels-not-mapping",
        "no-masks-of-file-ending",
        "unsupported-ending",
        "json-is-folder",
        "json-is-fifo",
        "no-labels-folder",
        "empty-labels-folder",
    ],
)
def test_whole_dataset_errors_stop_before_building(tmp_path, setup, message):
    root = tmp_path / "ds"
    root.mkdir()
    setup(root)
    result = CliRunner().invoke(cli, ["build", str(root), "--no-progress"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("skelprep: error: ")
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (root / "skeletons.zarr").exists()  # nothing built, not even an empty store


def test_unusable_store_and_options_are_one_line_errors(tmp_path):
    root = tmp_path / "ds"
    write_png(root / "labels" / "a.png", _vessel_2d())
    runner = CliRunner()
    not_a_store = tmp_path / "photos"
    (not_a_store / "holiday").mkdir(parents=True)
    (not_a_store / "holiday" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    (not_a_store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    cases = {
        ("--out", str(not_a_store)): "is not a skelprep store",
        ("--out", str(root / "labels" / "a.png")): "skelprep: error:",
        ("--memory-limit", "lots"): "invalid memory limit 'lots'",
    }
    for extra, message in cases.items():
        result = runner.invoke(cli, ["build", str(root), "--no-progress", *extra])
        assert result.exit_code == 1, (extra, result.output)
        assert result.stderr.count("\n") == 1 and message in result.stderr, (extra, result.stderr)
    assert (root / "labels" / "a.png").read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(
        cli, ["build", str(root), "--memory-limit", "1GB", "--scheduler", "tcp://127.0.0.1:1"]
    )
    assert result.exit_code == 2 and "exclude each other" in result.stderr


def test_image_shape_reads_headers_and_agrees_with_the_readers(tmp_path):
    from skelprep.io import read_image

    rgb = write_png(tmp_path / "rgb.png", np.zeros((5, 7, 3), np.uint8))
    grey = write_png(tmp_path / "grey.png", np.zeros((5, 7), np.uint8))
    vol = _nifti(tmp_path / "v.nii.gz", np.zeros((4, 5, 6, 1), np.int16))
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((5, 7, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 5, 7), np.uint8), photometric="minisblack")
    expected = {
        rgb: (5, 7),
        grey: (5, 7),
        vol: (4, 5, 6),
        tmp_path / "rgb.tif": (5, 7),
        tmp_path / "stack.tif": (3, 5, 7),
    }
    for path, shape in expected.items():
        assert image_shape(path) == shape, path
        assert read_image(path).array.shape[1:] == shape, path
    # a colour TIFF mask with equal channels is a label map, not a volume of depth 3
    tifffile.imwrite(tmp_path / "m.tif", np.repeat(_vessel_2d()[..., None], 3, axis=-1), photometric="rgb")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif").array, _vessel_2d())
