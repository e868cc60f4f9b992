"""nnU-Net v2 integration, end to end with the real nnU-Net (no mocks).

The bundled road cracks (2D, 4 classes) and OCT-A (3D) become nnU-Net raw datasets in a temporary folder,
are planned and preprocessed with nnunetv2's Python API (one worker process), get their sidecar from
``skelprep nnunet build``, and train a few iterations on the CPU with a tiny-epoch subclass of
``nnUNetTrainerSkeletonRecall`` (the plans are shrunk to a small network and patch so that it takes
seconds). The fingerprint samples 10^5 instead of 10^8 foreground voxels for its intensity statistics
(a subclass passed to nnunetv2's API): nnU-Net's z-score normalisation of these datasets does not use them.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from skelprep.cli import cli
from skelprep.skeleton import SkeletonTargets

from .conftest import EXAMPLES
from .test_skeleton import assert_parity_where_kept

pytest.importorskip("nnunetv2")
pytest.importorskip("blosc2")

torch = pytest.importorskip("torch")

CRACKS, OCTA = "Dataset991_RoadCracks", "Dataset992_OCTA"
CONFIGS = [(CRACKS, "2d"), (OCTA, "3d_fullres"), (OCTA, "2d")]


def _quick_fingerprint_class():
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )

    class QuickFingerprint(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = 1e5

    return QuickFingerprint


@pytest.fixture(scope="module")
def nnunet_dirs(tmp_path_factory):
    """nnUNet_raw / _preprocessed / _results with both datasets planned and preprocessed."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiments,
        preprocess,
    )

    base = tmp_path_factory.mktemp("nnunet")
    dirs = {name: base / name for name in ("raw", "preprocessed", "results")}
    for path in dirs.values():
        path.mkdir()
    for name, src in ((CRACKS, "road_cracks"), (OCTA, "octa3d")):
        shutil.copytree(EXAMPLES / src, dirs["raw"] / name, ignore=shutil.ignore_patterns("skeletons*"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_raw", str(dirs["raw"]))
        mp.setenv("nnUNet_preprocessed", str(dirs["preprocessed"]))
        mp.setenv("nnUNet_results", str(dirs["results"]))
        mp.setenv("nnUNet_n_proc_DA", "1")  # the planner sets torch's threads from it (0 is refused)
        mp.setenv("nnUNet_compile", "false")
        quick = _quick_fingerprint_class()
        for dataset_id in (991, 992):
            extract_fingerprint_dataset(
                dataset_id, quick, num_processes=1, verbose=False, show_progress_bar=False
            )
        plan_experiments([991, 992])
        preprocess([991], configurations=("2d",), num_processes=(1,), show_progress_bar=False)
        preprocess([992], configurations=("3d_fullres", "2d"), num_processes=(1, 1), show_progress_bar=False)
        mp.setenv("nnUNet_n_proc_DA", "0")  # training: nnU-Net's single-threaded augmenter, no workers
        yield dirs


def _run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


@pytest.fixture(scope="module")
def built(nnunet_dirs):
    """The sidecars of all three configurations, built once by the CLI."""
    for dataset, configuration in CONFIGS:
        result = _run("nnunet", "build", dataset, "-c", configuration, "--workers", "1", "--json")
        assert result.exit_code == 0, result.output
    return nnunet_dirs


def _deleted_components(labels: np.ndarray) -> int:
    """Foreground components that scikit-image's thinning deletes whole (skelprep gives them a fallback)."""
    comps, n = ndi.label(labels > 0, structure=np.ones((3,) * labels.ndim))
    kept = np.unique(comps[skeletonize(labels > 0)])
    return n - int(np.count_nonzero(kept))


@pytest.mark.slow
@pytest.mark.parametrize("dataset,configuration", CONFIGS)
def test_targets_are_the_recipe_on_the_preprocessed_seg(built, dataset, configuration):
    """thin/tube equal the reference recipe on nnU-Net's preprocessed seg (-1 as background; 2D per slice)."""
    import blosc2

    from skelprep.nnunet.preprocessed import locate
    from skelprep.store import open_store

    config = locate(dataset, configuration)
    store = open_store(config.sidecar)
    assert (
        config.sidecar
        == Path(os.environ["nnUNet_preprocessed"]) / dataset / "skelprep" / config.data_identifier
    )
    assert store.case_ids == config.case_ids() and len(store) >= 3
    # nothing was added to the folder nnU-Net owns
    assert not [p for p in config.case_folder.iterdir() if not p.name.endswith((".b2nd", ".pkl"))]
    for case_id in store:
        seg = blosc2.open(str(config.case_folder / f"{case_id}_seg.b2nd"), mode="r")[:]
        labels = np.where(seg[0] < 0, 0, seg[0])
        case = store[case_id]
        thin, tube = case.thin[...], case.tube[...]
        assert tube.shape == seg.shape[1:]
        slices = [(k,) for k in range(labels.shape[0])] if config.two_d else [()]
        for index in slices:
            part = labels[index]
            n = _deleted_components(part)
            assert_parity_where_kept(part, SkeletonTargets(thin[index], tube[index], n), n)
        assert case.attrs["params"]["slice_axis"] == (0 if config.two_d else None)


@pytest.mark.slow
def test_build_is_incremental_and_errors_are_one_line(built, tmp_path, monkeypatch):
    from skelprep.nnunet.preprocessed import locate

    sidecar = locate(CRACKS, "2d").sidecar
    before = {p: p.stat().st_mtime_ns for p in sidecar.rglob("*")}
    result = _run("nnunet", "build", "991", "-c", "2d", "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["built"] == [] and len(summary["up_to_date"]) == 3
    # a current sidecar is left as it is: a training reading it meanwhile sees no file change
    assert {p: p.stat().st_mtime_ns for p in sidecar.rglob("*")} == before

    # a copy of the preprocessed folder, so that the module's data stay intact
    pre = tmp_path / "preprocessed"
    shutil.copytree(built["preprocessed"] / CRACKS, pre / CRACKS)
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    config = locate(CRACKS, "2d")
    _rewrite_seg(config.seg_file("crack_001"))  # as re-running nnU-Net's preprocessing would
    summary = json.loads(_run("nnunet", "build", CRACKS, "-c", "2d", "--json").stdout)
    assert summary["built"] == ["crack_001"] and summary["up_to_date"] == ["crack_000", "crack_002"]
    # on a local Dask cluster of two workers, as skelprep build runs
    summary = json.loads(
        _run("nnunet", "build", CRACKS, "-c", "2d", "--force", "--workers", "2", "--json").stdout
    )
    assert len(summary["built"]) == 3
    for path in config.case_folder.glob("crack_000*"):  # nnU-Net no longer has this case
        path.unlink()
    summary = json.loads(_run("nnunet", "build", CRACKS, "-c", "2d", "--json").stdout)
    assert summary["pruned"] == ["crack_000"] and summary["up_to_date"] == ["crack_001", "crack_002"]

    config.seg_file("crack_002").write_bytes(b"not blosc2")
    result = _run("nnunet", "build", CRACKS, "-c", "2d", "--no-progress")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("failed: ") and "crack_002_seg.b2nd" in line

    for args, expected in [
        (("993", "-c", "2d"), "Could not find a dataset with the ID 993"),
        ((CRACKS, "-c", "3d_fullres"), "no configuration '3d_fullres'"),
        ((OCTA, "-c", "2d"), "Dataset992_OCTA is not preprocessed"),  # absent from this copy
    ]:
        result = _run("nnunet", "build", *args, "--no-progress")
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("skelprep: error: ") and expected in line
    shutil.rmtree(config.case_folder)  # planned, but its preprocessing is gone
    result = _run("nnunet", "build", CRACKS, "-c", "2d", "--no-progress")
    assert (
        result.exit_code == 1
        and "configuration '2d' is not preprocessed; run nnUNetv2_preprocess -d 991 -c 2d" in result.stderr
    )
    monkeypatch.delenv("nnUNet_preprocessed")
    result = _run("nnunet", "build", CRACKS, "-c", "2d")
    assert result.exit_code == 1 and "nnUNet_preprocessed is not set" in result.stderr


def _rewrite_seg(path: Path) -> None:
    """Rewrite a preprocessed seg with one voxel changed, as nnU-Net writes it."""
    import blosc2

    seg = blosc2.open(str(path), mode="r")[:]
    seg.reshape(-1)[np.flatnonzero(seg.reshape(-1) == 0)[0]] = 1
    path.unlink()
    blosc2.asarray(np.ascontiguousarray(seg), urlpath=str(path))


def _shrink(plans: dict, configuration: str, patch: list[int], n_stages: int = 5) -> dict:
    """Plans for a tiny network: few features, a small patch, batch size 2 (same data identifier)."""
    plans = copy.deepcopy(plans)
    conf = plans["configurations"][configuration]
    conf["patch_size"], conf["batch_size"] = patch, 2
    arch = conf["architecture"]["arch_kwargs"]
    arch["n_stages"] = n_stages
    for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
        arch[key] = arch[key][:n_stages]
    arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][: n_stages - 1]
    arch["features_per_stage"] = [min(4 * 2**i, 32) for i in range(n_stages)]
    return plans


def _trainer(
    dataset: str, configuration: str, patch: list[int], *, dataset_json: dict | None = None, **plan_edits
):
    from skelprep.nnunet.trainer import nnUNetTrainerSkeletonRecall

    class TinySkeletonRecall(nnUNetTrainerSkeletonRecall):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):  # noqa: B008
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch, self.num_val_iterations_per_epoch, self.num_epochs = 4, 1, 1
            self.oversample_foreground_percent = 1.0  # every patch centred on a labelled voxel

    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset
    plans = _shrink(json.loads((folder / "nnUNetPlans.json").read_text()), configuration, patch)
    plans["configurations"][configuration].update(plan_edits)
    plans["continue_training"] = False  # what nnU-Net's get_trainer_from_args adds
    dataset_json = dataset_json or json.loads((folder / "dataset.json").read_text())
    return TinySkeletonRecall(plans, configuration, "all", dataset_json, torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "dataset,configuration,patch", [(CRACKS, "2d", [128, 128]), (OCTA, "3d_fullres", [32] * 3)]
)
def test_training_gets_a_tube_at_every_deep_supervision_level(built, dataset, configuration, patch):
    from skelprep.nnunet.loss import DiceCERecallLoss
    from skelprep.torch.loss import downsample_tube

    trainer = _trainer(dataset, configuration, patch)
    trainer.initialize()
    weights = trainer.loss.weight_factors
    inner = trainer.loss.loss
    assert isinstance(inner, DiceCERecallLoss) and inner.recall_weight == 1.0
    calls = []
    forward = inner.forward

    def recording(output, target):
        calls.append((output.shape, target.detach().clone()))
        return forward(output, target)

    inner.forward = recording
    trainer.run_training()
    assert (Path(trainer.output_folder) / "checkpoint_final.pth").is_file()

    levels = [i for i, w in enumerate(weights) if w != 0]
    assert len(levels) >= 3
    iterations = trainer.num_iterations_per_epoch + trainer.num_val_iterations_per_epoch
    assert len(calls) == iterations * len(levels)
    for start in range(0, len(calls), len(levels)):
        group = calls[start : start + len(levels)]
        full = group[0][1]
        for output_shape, target in group:
            assert target.shape[1] == 2 and target.shape[2:] == output_shape[2:]  # seg + tube at this level
            # the tube at each level is the max-pooled full-resolution tube
            assert torch.equal(target[:, 1:], downsample_tube(full[:, 1:], target.shape[2:]))
    for level in range(len(levels)):
        assert any((call[1][:, 1] > 0).any() for call in calls[level :: len(levels)])
    # the augmented tube stays on the augmented labels: a tube voxel carries the label under it
    full_res = torch.cat([target for _, target in calls[:: len(levels)]])
    on_tube = full_res[:, 1] > 0
    assert (full_res[:, 1][on_tube] == full_res[:, 0][on_tube]).float().mean() > 0.9


@pytest.mark.slow
def test_missing_or_stale_sidecar_stops_training_with_the_command(built, tmp_path, monkeypatch):
    from skelprep.nnunet.sidecar import SidecarError

    pre = tmp_path / "preprocessed"
    shutil.copytree(built["preprocessed"] / OCTA, pre / OCTA)
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    _rewrite_seg(pre / OCTA / "nnUNetPlans_3d_fullres" / "octa_002_seg.b2nd")
    trainer = _trainer(OCTA, "3d_fullres", [32] * 3)
    with pytest.raises(SidecarError) as stale:
        trainer.on_train_start()
    message = str(stale.value)
    assert "\n" not in message and "octa_002" in message
    assert message.endswith(f"skelprep nnunet build {OCTA} -c 3d_fullres")

    shutil.rmtree(pre / OCTA / "skelprep")
    with pytest.raises(SidecarError, match=f"build them with: skelprep nnunet build {OCTA} -c 2d$"):
        _trainer(OCTA, "2d", [64, 64]).on_train_start()


@pytest.mark.slow
def test_regions_and_cascade_are_refused(built):
    from skelprep.nnunet.trainer import SkeletonRecallTrainerError

    folder = Path(os.environ["nnUNet_preprocessed"]) / OCTA
    regions = json.loads((folder / "dataset.json").read_text())
    regions["labels"] = {"background": 0, "vessel": [1, 2], "core": 2}
    regions["regions_class_order"] = [1, 2]
    with pytest.raises(SkeletonRecallTrainerError, match="region-based training is not supported"):
        _trainer(OCTA, "3d_fullres", [32] * 3, dataset_json=regions)
    with pytest.raises(SkeletonRecallTrainerError, match="the cascade .* is not supported"):
        _trainer(OCTA, "3d_fullres", [32] * 3, previous_stage="3d_lowres")


def test_nnunet_finds_the_trainer_in_the_trainer_dir():
    """nnU-Net's own lookup over nnUNet_extTrainer (as run_training does for external paths) finds the class.

    nnunetv2's full ``recursive_find_trainer_class_by_name`` first imports every trainer module inside
    nnunetv2 (some need torchvision, whose CUDA build fails against this CPU torch), so the external-path
    step is called directly, in a fresh interpreter.
    """
    result = _run("nnunet", "trainer-dir")
    assert result.exit_code == 0
    folder = result.stdout.strip().splitlines()[-1]
    assert sorted(p.name for p in Path(folder).glob("*.py")) == [
        "__init__.py",
        "nnUNetTrainerSkeletonRecall.py",
    ]
    code = (
        "import sys\n"
        "from nnunetv2.utilities.find_class_by_name import recursive_find_python_class\n"
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        f"cls = recursive_find_python_class({folder!r}, 'nnUNetTrainerSkeletonRecall', None, base_folder={folder!r},"
        " cleanup_imports_from_base_folder=True)\n"
        "assert cls is not None and issubclass(cls, nnUNetTrainer), cls\n"
        "assert cls.__module__ == 'skelprep.nnunet.trainer', cls.__module__\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "nnUNet_extTrainer": folder})


def test_help_does_not_import_nnunet_and_a_missing_nnunet_is_one_line():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from skelprep.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(cli, ['nnunet', '--help']).exit_code == 0\n"
        "assert 'nnunetv2' not in sys.modules\n"
        "sys.modules['nnunetv2'] = None  # as if it were not installed\n"
        "r = CliRunner().invoke(cli, ['nnunet', 'trainer-dir'])\n"
        "assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.output\n"
        # skelprep is installed from its repository: the hint names packages the registry has
        "assert \"pip install 'nnunetv2>=2.8' blosc2\" in r.stderr, r.stderr\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_recall_weight_from_environment(monkeypatch):
    from skelprep.nnunet.trainer import SkeletonRecallTrainerError, recall_weight

    assert recall_weight(1.0) == 1.0
    monkeypatch.setenv("SKELPREP_RECALL_WEIGHT", "0.25")
    assert recall_weight(1.0) == 0.25
    for bad in ("-1", "nan", "heavy"):
        monkeypatch.setenv("SKELPREP_RECALL_WEIGHT", bad)
        with pytest.raises(SkeletonRecallTrainerError, match="expected a number >= 0"):
            recall_weight(1.0)


def test_loss_splits_the_tube_and_masks_the_ignore_label():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from skelprep.nnunet.loss import DiceCERecallLoss
    from skelprep.torch.loss import SkeletonRecallLoss

    def dice_ce(ignore_label=None):
        return DC_and_CE_loss(
            {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
            {},
            ignore_label=ignore_label,
            dice_class=MemoryEfficientSoftDiceLoss,
        )

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=gen)
    seg = torch.randint(0, 3, (2, 1, 16, 16), generator=gen)
    tube = seg * (torch.rand(2, 1, 16, 16, generator=gen) > 0.6)
    target = torch.cat((seg, tube), 1).to(torch.int16)
    loss = DiceCERecallLoss(dice_ce(), recall_weight=0.5)
    expected = dice_ce()(logits, seg) + 0.5 * SkeletonRecallLoss(smooth=1e-5)(logits, tube)
    assert torch.allclose(loss(logits, target), expected)
    assert torch.allclose(
        DiceCERecallLoss(dice_ce(), recall_weight=0)(logits, target), dice_ce()(logits, seg)
    )

    # ignore label 2 in the segmentation: those voxels count in no term
    masked = DiceCERecallLoss(dice_ce(ignore_label=2), recall_weight=1.0, ignore_label=2)
    keep = seg != 2
    expected = dice_ce(ignore_label=2)(logits, seg) + SkeletonRecallLoss(smooth=1e-5)(
        logits, torch.where(keep, tube, 0), loss_mask=keep
    )
    assert torch.allclose(masked(logits, target), expected)
    with pytest.raises(ValueError, match="no tube channel"):
        loss(logits, seg)


@pytest.mark.slow
def test_numpy_format_preprocessing_is_read_too(built, tmp_path, monkeypatch):
    """Folders preprocessed by nnU-Net < 2.6 (``<id>.npz`` + ``.pkl``, still read by 2.8) get the same targets."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

    from skelprep.nnunet.preprocessed import locate
    from skelprep.nnunet.sidecar import build_sidecar, require_current
    from skelprep.store import open_store

    src = built["preprocessed"] / OCTA
    pre = tmp_path / "preprocessed"
    shutil.copytree(src, pre / OCTA, ignore=shutil.ignore_patterns("nnUNetPlans_*", "skelprep"))
    folder = pre / OCTA / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    for seg_file in sorted((src / "nnUNetPlans_3d_fullres").glob("*_seg.b2nd")):
        case_id = seg_file.name.removesuffix("_seg.b2nd")
        data = blosc2.open(str(seg_file.with_name(f"{case_id}.b2nd")), mode="r")[:]
        properties = pickle.loads(seg_file.with_name(f"{case_id}.pkl").read_bytes())
        nnUNetDatasetNumpy.save_case(
            data, blosc2.open(str(seg_file), mode="r")[:], properties, str(folder / case_id)
        )
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    report = build_sidecar(OCTA, "3d_fullres", workers=1)
    assert report.ok and len(report.built) == 4
    ours, reference = (
        open_store(pre / OCTA / "skelprep" / "nnUNetPlans_3d_fullres"),
        open_store(src / "skelprep" / "nnUNetPlans_3d_fullres"),
    )
    for case_id in reference:
        assert np.array_equal(ours[case_id].tube[...], reference[case_id].tube[...])
        assert ours[case_id].attrs["source"] == f"nnUNetPlans_3d_fullres/{case_id}.npz"
        seg = ours.source_path(case_id)  # recorded relative to the dataset, found from the store
        assert seg == str(pre / OCTA / "nnUNetPlans_3d_fullres" / f"{case_id}.npz")
    assert ours.attrs["dataset"] == "../.."
    require_current(locate(OCTA, "3d_fullres"))


@pytest.mark.slow
def test_documented_smoke_route_trains_two_iterations_on_the_cpu(built):
    """The nnU-Net guide's Python route on 4-or-fewer cases: fold 'all', the CPU, 2 iterations, unshrunk plans."""
    from skelprep.nnunet.trainer import make_trainer

    trainer = make_trainer(991, "2d", "all", device="cpu")
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
    trainer.run_training()
    assert (Path(trainer.output_folder) / "checkpoint_final.pth").is_file()
    assert trainer.output_folder.endswith("fold_all")


def test_run_length_from_environment(monkeypatch):
    from skelprep.nnunet.trainer import SkeletonRecallTrainerError, training_length

    assert training_length() == {}
    monkeypatch.setenv("SKELPREP_NUM_EPOCHS", "1")
    monkeypatch.setenv("SKELPREP_ITERATIONS_PER_EPOCH", "2")
    assert training_length() == {"num_epochs": 1, "num_iterations_per_epoch": 2}
    for bad in ("0", "-3", "two", "1.5"):
        monkeypatch.setenv("SKELPREP_VAL_ITERATIONS_PER_EPOCH", bad)
        with pytest.raises(
            SkeletonRecallTrainerError, match="SKELPREP_VAL_ITERATIONS_PER_EPOCH=.*integer >= 1"
        ):
            training_length()


@pytest.mark.slow
def test_environment_shortens_the_trainer_and_a_missing_sidecar_ends_in_one_line(built, tmp_path):
    """As nnUNetv2_train runs it (a process that creates the trainer and trains): no traceback, exit 1."""
    pre = tmp_path / "preprocessed"
    shutil.copytree(built["preprocessed"] / CRACKS, pre / CRACKS, ignore=shutil.ignore_patterns("skelprep"))
    code = (
        "from skelprep.nnunet.trainer import make_trainer\n"
        "t = make_trainer(991, '2d', 'all', device='cpu')\n"
        "assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (1, 2, 1)\n"
        "t.run_training()\n"
    )
    env = {**os.environ, "nnUNet_preprocessed": str(pre), "SKELPREP_NUM_EPOCHS": "1"}
    env |= {"SKELPREP_ITERATIONS_PER_EPOCH": "2", "SKELPREP_VAL_ITERATIONS_PER_EPOCH": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(f"no Skeleton Recall targets; build them with: skelprep nnunet build {CRACKS} -c 2d")
    )


@pytest.mark.slow
def test_info_on_a_sidecar_gives_sidecar_advice(built):
    sidecar = built["preprocessed"] / CRACKS / "skelprep" / "nnUNetPlans_2d"
    result = _run("info", str(sidecar))
    assert result.exit_code == 0, result.output
    assert "an nnU-Net sidecar" in result.stdout and "--with-images" not in result.stdout


def test_build_help_says_the_workers_are_threads():
    result = _run("nnunet", "build", "--help")
    text = " ".join(result.output.split())  # click wraps the help
    assert result.exit_code == 0
    assert "threads of this process" in text and "worker processes [default" not in text


ALL_TARGETS = "tube,thin,sdf,radius,components"


def _copy_preprocessed(built, tmp_path, monkeypatch, dataset: str, *, keep_sidecar: bool) -> Path:
    """A copy of one dataset's preprocessed folder (with or without its sidecar), nnUNet_preprocessed set to it."""
    pre = tmp_path / "preprocessed"
    skip = () if keep_sidecar else ("skelprep",)
    shutil.copytree(built["preprocessed"] / dataset, pre / dataset, ignore=shutil.ignore_patterns(*skip))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    return pre / dataset


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    "dataset,configuration,spacing",
    [(CRACKS, "2d", [0.5, 2.0]), (OCTA, "3d_fullres", [2.0, 1.0, 0.5])],
)
def test_targets_are_the_core_functions_on_the_preprocessed_seg_with_the_plans_spacing(
    built, tmp_path, monkeypatch, dataset, configuration, spacing
):
    """sdf/radius/components of the sidecar are skelprep.targets' on the preprocessed seg (-1 as background),
    with the plans' spacing and dataset.json's foreground labels; a 2D configuration's per slice along axis 0.
    The plans' spacing is edited (the data are unit-spaced), and road cracks' crack label made the ignore label."""
    import blosc2

    from skelprep.nnunet.preprocessed import locate
    from skelprep.store import open_store
    from skelprep.targets import components, signed_distance, skeleton_radius

    folder = _copy_preprocessed(built, tmp_path, monkeypatch, dataset, keep_sidecar=False)
    _edit_json(
        folder / "nnUNetPlans.json",
        lambda plans: plans["configurations"][configuration].update(spacing=spacing),
    )
    ignore = None
    if dataset == CRACKS:  # the highest label, as nnU-Net requires of the ignore label
        ignore = 3
        _edit_json(
            folder / "dataset.json",
            lambda d: d.update(labels={"background": 0, "road": 1, "pothole": 2, "ignore": 3}),
        )
    result = _run("nnunet", "build", dataset, "-c", configuration, "--targets", ALL_TARGETS, "--json")
    assert result.exit_code == 0, result.output
    config = locate(dataset, configuration)
    classes = [1, 2] if dataset == CRACKS else [1]
    assert config.foreground_labels == tuple(classes) and config.ignore_label == ignore
    store = open_store(config.sidecar)
    assert store.attrs["targets"] == ["sdf", "radius", "components"]
    per_slice = {"slice_axis": 0} if config.two_d else {}
    connectivity = 8 if config.two_d else 26
    for case_id in store:
        seg = blosc2.open(str(config.seg_file(case_id)), mode="r")[:][0]
        labels = np.where(seg < 0, 0, seg).astype(np.uint8)
        if ignore is not None:  # background for radius and components, in no class of the sdf
            labels[labels == ignore] = 0
        case = store[case_id]
        thin = case.thin[...]
        sdf, radius, comps = (case.array(n)[...] for n in ("sdf", "radius", "components"))
        slices = [(slice(None), k) for k in range(labels.shape[0])] if config.two_d else [(slice(None),)]
        count = 0
        for index in slices:
            part = labels[index[1:]]
            np.testing.assert_array_equal(sdf[index], signed_distance(part, classes, spacing=spacing))
            np.testing.assert_array_equal(
                radius[index[1:]], skeleton_radius(part, thin[index[1:]], spacing=spacing)
            )
            expected = components(part)
            np.testing.assert_array_equal(
                comps[index[1:]], np.where(expected.labels > 0, expected.labels + count, 0)
            )
            count += expected.count
        assert case.attrs["targets"] == {
            "sdf": {"params": {"classes": classes, "spacing": spacing, **per_slice}},
            "radius": {"params": {"spacing": spacing, **per_slice}},
            "components": {"params": {"connectivity": connectivity, **per_slice}, "count": count},
        }
    summary = json.loads(_run("nnunet", "build", dataset, "-c", configuration, "--json").stdout)
    assert summary["built"] == [] and len(summary["up_to_date"]) == len(store)  # sticky, current


@pytest.mark.slow
def test_an_unknown_nnunet_target_is_one_line_and_exit_2(built, tmp_path, monkeypatch):
    folder = _copy_preprocessed(built, tmp_path, monkeypatch, CRACKS, keep_sidecar=False)
    result = _run("nnunet", "build", CRACKS, "-c", "2d", "--targets", "tube,sdf,skeleton", "--no-progress")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "skelprep: error: unknown target 'skeleton'; the targets are tube, thin, sdf, radius, components "
        "(option --targets)"
    ]
    assert not (folder / "skelprep").exists()


@pytest.mark.slow
def test_adding_a_target_to_a_sidecar_computes_only_that_target(built, tmp_path, monkeypatch):
    import skelprep.nnunet.sidecar
    import skelprep.skeleton
    import skelprep.targets
    from skelprep.nnunet.preprocessed import locate
    from skelprep.nnunet.sidecar import build_sidecar, stale_cases
    from skelprep.store import open_store
    from skelprep.targets import signed_distance

    _copy_preprocessed(built, tmp_path, monkeypatch, OCTA, keep_sidecar=True)  # tube and thin, current
    config = locate(OCTA, "3d_fullres")
    assert build_sidecar(OCTA, "3d_fullres", workers=1, targets=["components"]).ok
    store = open_store(config.sidecar)
    before = {c: (store[c].tube[...], store[c].thin[...], store[c].array("components")[...]) for c in store}

    def not_again(*args, **kwargs):
        raise AssertionError("a stored target was computed again")

    # the stored tube, thin skeleton and components are current: neither is computed again
    monkeypatch.setattr(skelprep.nnunet.sidecar, "preprocessed_targets", not_again)
    monkeypatch.setattr(skelprep.skeleton, "skeleton_targets", not_again)
    monkeypatch.setattr(skelprep.targets, "components", not_again)
    assert set(stale_cases(config, ["sdf"])) == set(before)
    report = build_sidecar(OCTA, "3d_fullres", workers=1, targets=["tube", "thin", "sdf"])
    assert len(report.built) == len(before) and report.ok, [o.reason for o in report.failed]
    store = open_store(config.sidecar)
    assert store.attrs["targets"] == ["sdf", "components"]  # sticky: the sidecar keeps components
    for case_id, (tube, thin, comps) in before.items():
        case = store[case_id]
        np.testing.assert_array_equal(case.tube[...], tube)
        np.testing.assert_array_equal(case.thin[...], thin)
        np.testing.assert_array_equal(case.array("components")[...], comps)
        labels = np.clip(case.label[...], 0, None)
        np.testing.assert_array_equal(
            case.array("sdf")[...], signed_distance(labels, [1], spacing=config.spacing)
        )
    assert stale_cases(config, ["sdf", "components"]) == {}


@pytest.mark.slow
def test_a_sidecar_lacking_a_requested_target_is_not_current(built, tmp_path, monkeypatch):
    from skelprep.nnunet.preprocessed import locate
    from skelprep.nnunet.sidecar import SidecarError, build_sidecar, require_current, stale_cases

    folder = _copy_preprocessed(built, tmp_path, monkeypatch, OCTA, keep_sidecar=True)
    config = locate(OCTA, "3d_fullres")
    require_current(config)  # the tube is all the default trainer needs
    with pytest.raises(SidecarError) as lacking:
        require_current(config, ["tube", "radius"])
    message = str(lacking.value)
    assert "\n" not in message and "lacks the target 'radius' (a build adds it)" in message
    assert message.endswith(
        f"build them with: skelprep nnunet build {OCTA} -c 3d_fullres --targets tube,thin,radius"
    )
    assert all(s.state == "stale" and s.targets_only for s in stale_cases(config, ["radius"]).values())

    # a trainer that streams components asks for them at the start of training
    trainer = _trainer(OCTA, "3d_fullres", [32] * 3)
    trainer.previous_stage_target = "components"
    with pytest.raises(SidecarError, match="lacks the target 'components'.*--targets tube,thin,components$"):
        trainer.on_train_start()

    # built, then the plans' spacing changes: the stored radius is of other parameters
    assert build_sidecar(OCTA, "3d_fullres", workers=1, targets=["radius"]).ok
    require_current(config, ["radius"])
    _edit_json(
        folder / "nnUNetPlans.json",
        lambda plans: plans["configurations"]["3d_fullres"].update(spacing=[3.0, 1.0, 1.0]),
    )
    with pytest.raises(SidecarError, match="target 'radius' was built with other parameters"):
        require_current(locate(OCTA, "3d_fullres"), ["radius"])


@pytest.mark.slow
def test_tube_dataset_carries_the_named_target_and_refuses_sdf(built):
    """Through nnU-Net's own data loader: the patch's seg channel 1 is the stored thin skeleton."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from skelprep.nnunet.preprocessed import locate
    from skelprep.nnunet.trainer import SkeletonRecallTrainerError, TubeDataset
    from skelprep.store import open_store

    config = locate(OCTA, "3d_fullres")
    case_id = config.case_ids()[0]
    base = infer_dataset_class(str(config.case_folder))(str(config.case_folder), [case_id])
    thin = open_store(config.sidecar)[case_id].thin[...]
    assert thin.any() and not np.array_equal(thin, open_store(config.sidecar)[case_id].tube[...])
    plans = json.loads((config.dataset_folder / "nnUNetPlans.json").read_text())
    labels = PlansManager(plans).get_label_manager(
        json.loads((config.dataset_folder / "dataset.json").read_text())
    )
    # a patch of the whole case: the loader's crop is the case itself, no random offset
    loader = nnUNetDataLoader(
        TubeDataset(base, config.sidecar, name="thin"), 1, thin.shape, thin.shape, labels
    )
    target = loader.generate_train_batch()["target"]
    np.testing.assert_array_equal(target[0, 1].numpy(), thin)
    seg = base.load_case(case_id)[1][0]
    np.testing.assert_array_equal(target[0, 0].numpy(), seg)

    for name, why in [("sdf", "one channel per class"), ("radius", "casts the previous-stage slot to int16")]:
        with pytest.raises(SkeletonRecallTrainerError) as refused:
            TubeDataset(base, config.sidecar, name=name)
        message = str(refused.value)
        assert "\n" not in message and f"'{name}' cannot ride in nnU-Net's previous-stage slot" in message
        assert why in message
