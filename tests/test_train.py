"""pipelines/train.py: one short epoch on CPU, 2D (road cracks) and 3D (OCT-A), with its outputs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from .helpers import EXAMPLES, copy_cases

ROOT = Path(__file__).resolve().parents[1]
DATA = EXAMPLES  # the bundled copies of the shared nnU-Net datasets: no ../shared needed


def _load_train():
    spec = importlib.util.spec_from_file_location("skelprep_train_pipeline", ROOT / "pipelines" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load_train()


def _check_outputs(out: Path, summary: dict, ndim: int, n_classes: int) -> None:
    for name in ("last.pt", "best.pt", "metrics.json", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["ndim"] == ndim and saved["n_classes"] == n_classes
    assert len(saved["epochs"]) == 1
    epoch = saved["epochs"][0]
    assert set(epoch["train"]) == {"total", "dice", "ce", "recall"}
    assert set(epoch["val"]) >= {"dice", "cldice", "betti0_error", "betti1_error"}
    assert 0.0 <= epoch["val"]["dice"] <= 1.0
    assert saved["mean_step_seconds"] > 0 and summary["mean_step_seconds"] == saved["mean_step_seconds"]
    # Patches come from the store's image arrays; every step records its loader wait beside its compute.
    assert saved["streamed_from_store"] is True
    assert len(saved["steps"]) == len(saved["epochs"]) * saved["args"]["steps_per_epoch"]
    for step in saved["steps"]:
        assert step["wait_seconds"] >= 0 and step["compute_seconds"] > 0
    assert 0.0 <= saved["loader_wait_fraction"] < 1.0 and 0.0 <= epoch["loader_wait_fraction"] < 1.0
    assert not set(saved["train_cases"]) & set(saved["val_cases"])
    checkpoint = torch.load(out / "last.pt", weights_only=False)
    config = checkpoint["config"]
    model = train.UNet(
        config["ndim"], config["in_channels"], config["n_classes"], config["base"], config["levels"]
    )
    model.load_state_dict(checkpoint["model"])


def test_train_2d_builds_store_and_writes_outputs(tmp_path, capsys):
    dataset = copy_cases(DATA / "road_cracks", tmp_path / "cracks", ["crack_000", "crack_001", "crack_002"])
    out = tmp_path / "runs" / "cracks"
    args = [str(dataset), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64"]
    args += [
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--val-fraction",
        "0.34",
        "--device",
        "cpu",
        "--no-progress",
    ]
    summary = train.main(args)
    assert (dataset / "skeletons.zarr").is_dir()  # the missing store was built first
    _check_outputs(out, summary, ndim=2, n_classes=4)
    assert summary["epochs"][0]["train"]["recall"] < 0  # the recall term is on
    assert "mean time per training step" in capsys.readouterr().out


def test_train_3d_octa_with_workers_and_baseline(tmp_path):
    dataset = copy_cases(DATA / "octa3d", tmp_path / "octa", ["octa_000", "octa_001"])
    out = tmp_path / "runs" / "octa"
    args = [str(dataset), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "32"]
    args += ["--batch-size", "2", "--num-workers", "2", "--val-fraction", "0.5", "--recall-weight", "0"]
    args += ["--device", "auto", "--no-progress", "--base-channels", "8"]
    summary = train.main(args)
    _check_outputs(out, summary, ndim=3, n_classes=2)
    assert summary["epochs"][0]["train"]["recall"] == 0.0  # baseline: Dice + CE only
    assert summary["patch_size"] == [32, 32, 32]


def test_train_refuses_missing_store_with_no_build(tmp_path):
    dataset = copy_cases(DATA / "octa3d", tmp_path / "octa", ["octa_000"])
    with pytest.raises(SystemExit, match="missing.*skelprep build"):
        train.main([str(dataset), "--out", str(tmp_path / "r"), "--no-build"])


def test_train_rejects_patch_not_divisible(tmp_path):
    dataset = copy_cases(DATA / "octa3d", tmp_path / "octa", ["octa_000", "octa_001"])
    with pytest.raises(SystemExit, match="divisible by 8"):
        train.main([str(dataset), "--out", str(tmp_path / "r"), "--patch-size", "30", "--device", "cpu"])


def test_split_is_by_case_and_seeded():
    ids = [f"c{i}" for i in range(10)]
    a = train.split_cases(ids, 0.3, seed=1)
    assert a == train.split_cases(ids, 0.3, seed=1)
    assert len(a[1]) == 3 and sorted(a[0] + a[1]) == ids
    assert train.split_cases(["x"], 0.5, 0) == (["x"], [])


@pytest.mark.parametrize("ndim", [2, 3])
def test_predict_whole_and_sliding_window(ndim):
    torch.manual_seed(0)
    model = train.UNet(ndim, 1, 3, base=4, levels=3)  # divisor 4
    shape = (21, 30) if ndim == 2 else (10, 13, 9)
    image = torch.randn(1, *shape)
    cpu = torch.device("cpu")
    whole = train.predict(model, image, (8,) * ndim, cpu, max_voxels=10**9)
    assert whole.shape == (3, *shape)
    torch.testing.assert_close(whole.sum(0), torch.ones(shape))
    # One window covering the padded volume is the whole-volume prediction.
    single = train.predict(model, image, (32,) * ndim, cpu, max_voxels=0)
    torch.testing.assert_close(single, whole)
    # Overlapping windows cover every voxel and average to probabilities.
    tiled = train.predict(model, image, (8,) * ndim, cpu, max_voxels=0)
    assert tiled.shape == (3, *shape)
    torch.testing.assert_close(tiled.sum(0), torch.ones(shape))
    assert not torch.allclose(tiled, whole)  # windows see less context than the whole volume


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--epochs", 10), ("--steps-per-epoch", 50), ("--batch-size", 2), ("--seed", 0)):
        assert f"{option} {option[2:].upper().replace('-', '_')} " in text
        assert f"(default: {default})" in text.split(option, 2)[2].split(" --", 1)[0]
    assert "(default: None)" not in text and "(default: False)" not in text


def test_train_on_a_labels_only_dataset_is_one_line(tmp_path):
    dataset = tmp_path / "chase"
    shutil.copytree(DATA / "chase_vessels", dataset, ignore=shutil.ignore_patterns("skeletons*"))
    with pytest.raises(SystemExit) as exc:
        train.main([str(dataset), "--out", str(tmp_path / "r"), "--device", "cpu"])
    message = str(exc.value.code)
    assert "\n" not in message and message.startswith(f"train: error: {dataset}: no images")
    assert not (dataset / "skeletons.zarr").exists()  # nothing built, nothing lost
