"""pipelines/predict.py: train -> predict -> eval on the bundled data, the sliding window, bad inputs."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from skelprep.build import build
from skelprep.cli import cli
from skelprep.io import read_mask

from .helpers import EXAMPLES, copy_cases, copy_dataset

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"skelprep_{name}_pipeline", ROOT / "pipelines" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


predict = _load("predict")


def _checkpoint(path: Path, ndim: int, in_channels: int, n_classes: int, patch: list[int]) -> Path:
    """A checkpoint as pipelines/train.py saves it, of an untrained small model."""
    torch.manual_seed(0)
    model = predict.train.UNet(ndim, in_channels, n_classes, base=4, levels=3)
    config = {"ndim": ndim, "in_channels": in_channels, "n_classes": n_classes, "base": 4, "levels": 3}
    torch.save({"model": model.state_dict(), "config": {**config, "patch_size": patch}}, path)
    return path


def test_train_predict_eval_on_the_bundled_cracks(tmp_path):
    """The README's chain, as commands: a tiny CPU training run, predict, score (no accuracy asked)."""
    dataset = copy_dataset(EXAMPLES / "road_cracks", tmp_path / "road_cracks")
    run, pred = tmp_path / "run", tmp_path / "pred"
    python = [sys.executable]
    train_args = ["--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64", "--num-workers", "0"]
    train_args += ["--base-channels", "4", "--levels", "3", "--device", "cpu", "--no-progress"]
    subprocess.run(
        [*python, "pipelines/train.py", str(dataset), "--out", str(run), *train_args], cwd=ROOT, check=True
    )
    done = subprocess.run(
        [*python, "pipelines/predict.py", str(run / "best.pt"), str(dataset), "--out", str(pred)]
        + ["--patch-size", "256", "--overlap", "0.25", "--device", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "3 predicted, 0 failed" in done.stdout and "predict:" in done.stderr  # the progress bar
    assert sorted(p.name for p in pred.iterdir()) == ["crack_000.png", "crack_001.png", "crack_002.png"]
    for path in pred.iterdir():
        gt = read_mask(dataset / "labelsTr" / path.name).array
        assert read_mask(path).array.shape == gt.shape
    scored = subprocess.run(
        [*python, "-m", "skelprep.cli", "eval", str(pred), str(dataset)], capture_output=True, text=True
    )
    assert scored.returncode == 0, scored.stderr
    assert "3 scored, 0 failed" in scored.stdout


def test_windows_cover_the_case_and_weights_peak_in_the_middle():
    for length, window, overlap in ((100, 32, 0.5), (64, 64, 0.5), (20, 64, 0.0), (97, 16, 0.25)):
        starts = predict.window_starts(length, window, overlap)
        assert starts[0] == 0 and starts[-1] == max(length - window, 0)
        steps = np.diff(starts)
        assert (steps <= window * (1 - overlap)).all()  # neighbours overlap at least as asked
    gauss = predict.importance_map((16, 24), "gaussian")
    assert gauss.max() == 1 and gauss.min() > 0 and gauss[8, 12] > gauss[0, 0]
    assert torch.equal(predict.importance_map((4, 4), "uniform"), torch.ones(4, 4))


@pytest.mark.parametrize("weighting", ["gaussian", "uniform"])
def test_sliding_window_gives_probabilities_of_the_case_shape(weighting):
    torch.manual_seed(0)
    model = predict.train.UNet(3, 1, 3, base=4, levels=3).eval()
    image = torch.randn(1, 21, 13, 30)
    cpu = torch.device("cpu")
    whole = predict.predict_case(model, image, (32, 32, 32), cpu, weighting=weighting)
    tiled = predict.predict_case(model, image, (16, 16, 16), cpu, weighting=weighting, overlap=0.5)
    for probs in (whole, tiled):
        assert probs.shape == (3, 21, 13, 30)
        torch.testing.assert_close(probs.sum(0), torch.ones(21, 13, 30))
    assert not torch.allclose(tiled, whole)  # windows see less context than the whole case


def test_3d_predictions_are_nifti_with_the_source_affine_from_folder_and_store(tmp_path):
    octa = copy_cases(EXAMPLES / "octa3d", tmp_path / "octa", ["octa_000", "octa_001"])
    ckpt = _checkpoint(tmp_path / "m.pt", 3, 1, 2, [64, 64, 64])
    # an image folder (channel suffixes _0000 name the case), and a store built --with-images
    assert (
        predict.main([str(ckpt), str(octa / "imagesTr"), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    )
    assert build(octa, workers=1, with_images=True).ok
    store = octa / "skeletons.zarr"
    assert predict.main([str(ckpt), str(store), "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    for out in (tmp_path / "a", tmp_path / "b"):
        assert sorted(p.name for p in out.iterdir()) == ["octa_000.nii.gz", "octa_001.nii.gz"]
        for i in range(2):
            source = nib.load(octa / "imagesTr" / f"octa_00{i}_0000.nii.gz")
            written = nib.load(out / f"octa_00{i}.nii.gz")
            assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "b"), str(octa)])
    assert result.exit_code == 0, result.output


def test_bad_inputs_are_one_line_each_and_the_others_are_predicted(tmp_path, capsys):
    cracks = copy_dataset(EXAMPLES / "road_cracks", tmp_path / "cracks")
    (cracks / "imagesTr" / "crack_001_0000.png").write_bytes(b"not a png")
    (cracks / "imagesTr" / "crack_002_0000.png").unlink()
    ckpt = _checkpoint(tmp_path / "m.pt", 2, 3, 4, [256, 256])
    out = tmp_path / "pred"
    assert predict.main([str(ckpt), str(cracks), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("failed: ") for line in err)
    assert "crack_001_0000.png" in err[0] and "crack_002" in err[1] and "no image" in err[1]
    assert [p.name for p in out.iterdir()] == ["crack_000.png"]
    # a model of another channel count or dimensionality: each case says so
    wrong = _checkpoint(tmp_path / "w.pt", 3, 1, 2, [32, 32, 32])
    assert predict.main([str(wrong), str(cracks / "imagesTr"), "--out", str(out), "--no-progress"]) == 1
    assert "2D image, the model is 3D" in capsys.readouterr().err
    # no checkpoint, not a checkpoint, no input: one line, exit 1, nothing written
    (tmp_path / "junk.pt").write_text("junk")
    for args in (
        [str(tmp_path / "none.pt"), str(cracks)],
        [str(tmp_path / "junk.pt"), str(cracks)],
        [str(ckpt), str(tmp_path / "nowhere")],
    ):
        shutil.rmtree(out, ignore_errors=True)
        assert predict.main([*args, "--out", str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("predict: error: ") and not out.exists()
    with pytest.raises(SystemExit) as usage:
        predict.main([str(ckpt), str(cracks), "--out", str(out), "--overlap", "1"])
    assert usage.value.code == 2 and "--overlap" in capsys.readouterr().err
