"""Two builds on one store: the second refuses while the first runs; readers work meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skelprep import open_store
from skelprep.store.lock import store_is_busy
from skelprep.verify import verify

from .helpers import CLI, N_CASES, check_store, make_dataset, start_build, wait_for_a_write

LOCKED = "another skelprep build is using this store; wait for it to finish"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs /proc to follow process groups"
)


@pytest.fixture(scope="module")
def crash_dataset(tmp_path_factory):
    """The crash-safety dataset: 40 small 3D cases, a build of ~3 s."""
    return make_dataset(tmp_path_factory.mktemp("concurrency") / "ds")


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout.decode(), stderr.decode()


def test_second_build_refuses_while_first_runs_and_readers_keep_working(crash_dataset, tmp_path):
    dataset, expected = crash_dataset
    out = tmp_path / "store.zarr"
    first = start_build(dataset, out)
    wait_for_a_write(first, out, 0)
    # Pause the first build (client and workers) mid-way, so that the second one surely meets
    # it however slow its own start is; a paused build holds its lock as a running one does.
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        assert first.poll() is None and store_is_busy(out)
        second = subprocess.run(
            CLI + ["build", str(dataset), "--out", str(out), "--force", "--no-progress"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        paused_states = {c.state for c in verify(dataset, out)}
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 1
    assert second.stderr == f"skelprep: error: {out}: {LOCKED}\n"
    assert paused_states <= {"ok", "missing", "incomplete"} and "missing" in paused_states

    # readers while the build writes: never an error, never a case reported corrupt
    rounds = 0
    while first.poll() is None or rounds < 2:
        states = {c.state for c in verify(dataset, out)}
        assert states <= {"ok", "missing", "incomplete"}, states
        check_store(out, expected)  # listed cases are complete and equal the core's output
        rounds += 1
    cli_verify = subprocess.run(
        CLI + ["verify", str(dataset), "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert cli_verify.returncode == 0 and "Traceback" not in cli_verify.stderr

    code, stdout, stderr = _finish(first)
    assert code == 0 and f"{N_CASES} built" in stdout, stderr
    assert not store_is_busy(out)
    assert check_store(out, expected) == (N_CASES, 0)


def test_two_builds_started_at_once(crash_dataset, tmp_path):
    dataset, expected = crash_dataset
    out = tmp_path / "store.zarr"
    procs = [start_build(dataset, out, "--force"), start_build(dataset, out, "--force")]
    results = [_finish(p) for p in procs]
    codes = sorted(code for code, _, _ in results)
    for code, stdout, stderr in results:
        if code == 1:  # the loser refuses at once, in one line, before touching the store
            assert stderr == f"skelprep: error: {out}: {LOCKED}\n" and not stdout
        else:
            assert code == 0 and f"{N_CASES} built" in stdout, stderr
    assert codes in ([0, 1], [0, 0])  # [0, 0] only if one finished before the other looked
    assert check_store(out, expected) == (N_CASES, 0)
    assert all(c.state == "ok" for c in verify(dataset, out))
    assert sorted(open_store(out).attrs["cases"]) == sorted(expected)


# --- readers during rebuilds: the whole case as built, or StoreError "being rebuilt" -------------

_REBUILDS = 6  # --force rebuilds of the whole store while the readers read
_REBUILD_LOOP = """
import sys
from pathlib import Path
from skelprep.build import build
dataset, out, stop = sys.argv[1:4]
for i in range(int(sys.argv[4])):
    if Path(stop).exists():
        break
    report = build(dataset, out, force=True, workers=1)
    assert report.ok, report.as_dict()
    print(i, flush=True)
"""


def _plain_reader():
    """``read_case`` of docs/store-format.md ("Reading while a build runs"), as documented."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "store-format.md").read_text()
    block = text.split("## Reading while a build runs", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(block.split("\nroot = ", 1)[0], namespace)  # the example's own store is not built here
    return namespace["read_case"]


def test_readers_during_rebuilds_get_whole_cases_or_a_store_error(tmp_path):
    import numpy as np
    import zarr

    from skelprep import skeleton_targets
    from skelprep.build import build
    from skelprep.store import StoreError, array_checksum
    from skelprep.torch.dataset import SkeletonDataset

    from .helpers import write_png

    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(6):
        mask = np.zeros((96, 128), np.uint8)
        for row in rng.integers(4, 92, size=4):
            mask[row - 1 : row + 2, 4:124] = 1
        image = rng.integers(0, 255, mask.shape).astype(np.uint8)
        write_png(root / "labels" / f"c{i}.png", mask)
        write_png(root / "images" / f"c{i}.png", image)
        targets = skeleton_targets(mask)
        expected[f"c{i}"] = {"tube": targets.tube, "thin": targets.thin, "label": mask, "image": image[None]}
    out = tmp_path / "s.zarr"
    assert build(root, out, workers=1, with_images=True).ok
    read_case = _plain_reader()
    stop = tmp_path / "stop"
    builder = subprocess.Popen(
        [sys.executable, "-c", _REBUILD_LOOP, str(root), str(out), str(stop), str(_REBUILDS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    counts = {"whole": 0, "rebuilding": 0}

    def whole(case_id: str, arrays: dict) -> None:
        for name, array in arrays.items():
            np.testing.assert_array_equal(
                np.asarray(array), expected[case_id][name], err_msg=f"{case_id}/{name}"
            )
        counts["whole"] += 1

    deadline = time.monotonic() + 240  # a bound, not a measurement: the builder ends the loop first
    try:
        for _ in range(2000):
            if builder.poll() is not None or time.monotonic() > deadline:
                break
            try:  # open_store: arrays read whole, against the checksums the case says
                store = open_store(out)
                for case_id in store.case_ids:
                    case = store[case_id]
                    tube, thin = case.tube[...], case.thin[...]
                    assert array_checksum(tube) == case.attrs["checksums"]["tube"]
                    whole(case_id, {"tube": tube, "thin": thin, "label": case.label[...]})
            except StoreError:
                counts["rebuilding"] += 1
            try:  # the torch dataset of the store alone, whole cases
                dataset = SkeletonDataset.from_store(out, include_thin=True, normalization="none")
                for index in range(len(dataset)):
                    item = dataset[index]
                    whole(
                        item["case_id"],
                        {n: item[n][0] for n in ("tube", "thin", "label")} | {"image": item["image"]},
                    )
            except StoreError:
                counts["rebuilding"] += 1
            plain = zarr.open_group(str(out), mode="r", use_consolidated=False)
            for case_id in expected:  # plain zarr, following the documented protocol
                arrays = read_case(plain, case_id, names=("tube", "thin", "label", "image"))
                if arrays is None:
                    counts["rebuilding"] += 1
                else:
                    whole(case_id, arrays)
    finally:
        stop.touch()
        stdout, stderr = builder.communicate(timeout=240)
    assert builder.returncode == 0, stderr.decode()
    assert len(stdout.split()) >= 2, "the builder must rebuild the store while the readers read"
    assert counts["whole"] > 0, counts


def test_a_store_reached_through_a_symlink_or_another_spelling_is_the_same_store(crash_dataset, tmp_path):
    dataset, expected = crash_dataset
    (tmp_path / "real").mkdir()
    out = tmp_path / "real" / "store.zarr"
    first = start_build(dataset, out)
    wait_for_a_write(first, out, 0)
    os.killpg(first.pid, signal.SIGSTOP)  # paused, it holds its lock as a running build does
    try:
        assert first.poll() is None
        link = tmp_path / "link.zarr"
        link.symlink_to(out)  # the store folder itself reached through a symlink
        (tmp_path / "alias").symlink_to(tmp_path / "real")
        spellings = [link, f"{link}/", tmp_path / "alias" / ".." / "link.zarr", os.path.relpath(link)]
        assert all(store_is_busy(s) for s in spellings)
        second = subprocess.run(
            CLI + ["build", str(dataset), "--out", str(link), "--force", "--no-progress"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 1
    assert second.stderr == f"skelprep: error: {link}: {LOCKED}\n"
    code, stdout, stderr = _finish(first)
    assert code == 0 and f"{N_CASES} built" in stdout, stderr
    assert check_store(out, expected) == (N_CASES, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias", "link.zarr", "real"]  # no link.zarr.lock
