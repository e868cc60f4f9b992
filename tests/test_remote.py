"""Datasets and stores in an object store, against a real S3 server (moto) on 127.0.0.1.

One server for the module (``tests/_servers.py``); credentials reach skelprep only
through the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...)
or ``--storage-option``, as they would on AWS.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ._servers import base_env, link_to, s3_server, store_objects
from .helpers import CLI, EXAMPLES, copy_dataset, write_png

BUCKET = "skel-data"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    s3fs = pytest.importorskip("s3fs")
    with s3_server(tmp_path_factory.mktemp("moto")) as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        fs.put(str(EXAMPLES / "octa3d"), f"{BUCKET}/raw/octa3d", recursive=True)
        fs.put(str(EXAMPLES / "road_cracks"), f"{BUCKET}/raw/road_cracks", recursive=True)
        server.fs = fs
        yield server
        s3fs.S3FileSystem.clear_instance_cache()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**base_env(), **(env or {})}, timeout=timeout
    )


def local_build(dataset: Path, tmp: Path) -> Path:
    from skelprep.build import build

    out = tmp / "local.zarr"
    assert build(dataset, out, workers=1).ok
    return out


def test_build_from_and_into_s3_equals_a_local_build(s3, tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    url = f"s3://{BUCKET}/stores/octa.zarr"
    result = run_cli("build", f"s3://{BUCKET}/raw/octa3d", "--out", url, "--workers", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "4 built, 0 up to date, 0 failed" in result.stdout
    local = local_build(EXAMPLES / "octa3d", tmp_path)
    remote_objects = store_objects(s3.fs, url)
    local_objects = store_objects(LocalFileSystem(), str(local))
    assert sorted(remote_objects) == sorted(local_objects)
    for key, data in local_objects.items():
        assert remote_objects[key] == data, key
    assert not s3.fs.exists(url + ".lease")  # released at the end

    # The store records where the masks came from: the dataset URL, '//' and all.
    from skelprep.store import open_store

    store = open_store(url)
    assert store.attrs["dataset"] == f"s3://{BUCKET}/raw/octa3d"
    assert store["octa_000"].attrs["source"] == "labelsTr/octa_000.nii.gz"

    # An up-to-date rerun rewrites no case object: only the root's metadata is refreshed.
    s3.fs.invalidate_cache()
    before = {p: i["ETag"] for p, i in s3.fs.find(url, detail=True).items()}
    time.sleep(1.1)  # LastModified has a resolution of 1 s
    rerun = run_cli("build", f"s3://{BUCKET}/raw/octa3d", "--out", url, "--no-progress", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["built"] == []
    s3.fs.invalidate_cache()
    after = {p: i["ETag"] for p, i in s3.fs.find(url, detail=True).items()}
    assert after.keys() == before.keys()
    changed = {p for p in before if before[p] != after[p]}
    assert changed <= {f"{BUCKET}/stores/octa.zarr/zarr.json"}, changed

    verify = run_cli("verify", f"s3://{BUCKET}/raw/octa3d", "--out", url)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "4 ok, 0 with problems" in verify.stdout


def test_a_local_dataset_built_into_s3_records_no_local_path(s3, tmp_path):
    dataset = copy_dataset(EXAMPLES / "road_cracks", tmp_path / "cracks")
    url = f"s3://{BUCKET}/stores/from-local.zarr"
    result = run_cli("build", str(dataset), "--out", url, "--workers", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    documents = {p: s3.fs.cat_file(p).decode() for p in s3.fs.find(url) if p.endswith("zarr.json")}
    assert len(documents) > 3
    for path, text in documents.items():
        assert str(tmp_path) not in text, path
    from skelprep.store import open_store

    store = open_store(url)
    assert store.attrs["dataset"] is None and store.attrs["dataset_name"] == "cracks"
    assert store["crack_000"].attrs["source"] == "labelsTr/crack_000.png"
    info = run_cli("info", url)
    assert info.returncode == 0, info.stderr
    assert "dataset   cracks (its location is not recorded) (nnunet)" in info.stdout

    # Asked for, the absolute paths are recorded.
    result = run_cli("build", str(dataset), "--out", url, "--absolute-paths", "--force", "--no-progress")
    assert result.returncode == 0, result.stderr
    store = open_store(url)
    assert store.attrs["dataset"] == str(dataset)
    assert store["crack_000"].attrs["source"] == str(dataset / "labelsTr" / "crack_000.png")


def test_verify_finds_a_corrupted_chunk_and_repair_mends_it(s3, tmp_path):
    url = f"s3://{BUCKET}/stores/cracks.zarr"
    dataset = f"s3://{BUCKET}/raw/road_cracks"
    assert run_cli("build", dataset, "--out", url, "--workers", "1", "--no-progress").returncode == 0
    shard = sorted(
        p for p in s3.fs.find(f"{url}/crack_001/labels/tube/0") if p.rsplit("/", 1)[-1].startswith("c.")
    )[0]
    data = bytearray(s3.fs.cat_file(shard))
    data[len(data) // 2] ^= 0xFF
    s3.fs.pipe_file(shard, bytes(data))

    verify = run_cli("verify", dataset, "--out", url)
    assert verify.returncode == 1
    assert "corrupt" in verify.stdout and "crack_001" in verify.stdout
    assert "Traceback" not in verify.stderr

    repair = run_cli("build", dataset, "--out", url, "--repair", "--no-progress", "--json")
    assert repair.returncode == 0, repair.stderr
    assert json.loads(repair.stdout)["built"] == ["crack_001"]
    assert run_cli("verify", dataset, "--out", url).returncode == 0


def test_info_preview_eval_and_the_dataset_read_the_remote_store(s3, tmp_path):
    url = f"s3://{BUCKET}/stores/cracks-read.zarr"
    dataset = f"s3://{BUCKET}/raw/road_cracks"
    assert run_cli("build", dataset, "--out", url, "--workers", "1", "--no-progress").returncode == 0

    info = run_cli("info", url, "--json")
    assert info.returncode == 0, info.stderr
    assert sorted(json.loads(info.stdout)["cases"]) == ["crack_000", "crack_001", "crack_002"]

    png = tmp_path / "preview.png"
    preview = run_cli("preview", url, "crack_000", "-o", str(png))
    assert preview.returncode == 0, preview.stderr
    assert "not readable" not in preview.stderr  # the mask was read from the dataset URL
    assert png.stat().st_size > 0

    # eval: the ground truth as predictions scores perfectly, with the skeletons from the store.
    labels = EXAMPLES / "road_cracks" / "labelsTr"
    report = tmp_path / "eval.json"
    result = run_cli("eval", str(labels), str(labels), "--store", url, "--json", str(report))
    assert result.returncode == 0, result.stderr
    scores = json.loads(report.read_text())
    assert sorted(scores["cases"]) == ["crack_000", "crack_001", "crack_002"]
    assert scores["mean"]["dice"] == pytest.approx(1.0)

    pytest.importorskip("torch")
    from skelprep.store import open_store
    from skelprep.torch import SkeletonDataset

    ds = SkeletonDataset(dataset, store=url, patch_size=(64, 64))
    item = ds[0]
    assert item["image"].shape[-2:] == (64, 64)
    assert item["tube"].shape[-2:] == (64, 64)
    whole = SkeletonDataset(dataset, store=url)[1]
    stored = open_store(url)["crack_001"].tube[...]
    np.testing.assert_array_equal(whole["tube"].numpy()[0], stored)


def test_a_second_builder_on_a_remote_store_is_refused(s3):
    from skelprep.store.lease import remote_lease

    url = f"s3://{BUCKET}/stores/busy.zarr"
    with remote_lease(url) as lease:
        result = run_cli("build", f"s3://{BUCKET}/raw/road_cracks", "--out", url, "--no-progress")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "another skelprep build is using this store" in lines[0], result.stderr
        assert not s3.fs.exists(url)  # nothing was written
        verify = run_cli("verify", f"s3://{BUCKET}/raw/road_cracks", "--out", url)
        assert "no skelprep store here" in verify.stderr
        assert lease.renew() and not lease.lost


def test_an_object_key_with_dot_dot_parts_is_a_failed_case_and_touches_nothing_outside_the_store(
    s3, tmp_path
):
    png = (EXAMPLES / "road_cracks" / "labelsTr" / "crack_000.png").read_bytes()
    s3.fs.pipe_file(f"{BUCKET}/trv/labels/ok.png", png)
    s3.fs.pipe_file(f"{BUCKET}/trv/labels/sub/../../../../victim2.png", png)  # S3 keys are not paths
    assert any(".." in key for key in s3.fs.find(f"{BUCKET}/trv")), "the server normalized the key"
    out = tmp_path / "a" / "b" / "c" / "store.zarr"  # the key's id would lead to tmp_path/a/victim2
    (tmp_path / "a" / "victim2").mkdir(parents=True)
    (tmp_path / "a" / "victim2" / "keep.txt").write_text("keep")
    for _ in range(2):  # a first and an incremental build
        result = run_cli(
            "build", f"s3://{BUCKET}/trv", "--masks", "labels/**/*.png", "--out", str(out), "--workers", "1"
        )
        assert result.returncode == 1, result.stderr
        assert "case id 'sub/../../../../victim2' is not a relative path of plain names" in result.stderr
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b", "victim2"]
        assert [p.name for p in (tmp_path / "a" / "victim2").iterdir()] == ["keep.txt"]


def test_two_real_builders_one_runs_and_the_other_takes_over_only_after_a_kill(s3, tmp_path):
    """Builder A holds the store (its tasks wait on a scheduler without workers); B is refused while A
    renews, and builds the store once A is SIGKILLed and its lease has expired."""
    import os
    import signal

    from ._servers import dask_cluster

    url = f"s3://{BUCKET}/stores/two-builders.zarr"
    dataset = f"s3://{BUCKET}/raw/road_cracks"
    env = {"SKELPREP_LEASE_TTL": "4"}
    with dask_cluster(tmp_path, n_workers=0) as idle:
        a = subprocess.Popen(
            [*CLI, "build", dataset, "--out", url, "--scheduler", idle.address, "--no-progress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**base_env(), **env},
        )
        try:
            deadline = time.monotonic() + 120
            while not s3.fs.exists(url + "/zarr.json") and time.monotonic() < deadline:
                assert a.poll() is None, a.communicate()
                time.sleep(0.2)
                s3.fs.invalidate_cache()
            assert s3.fs.exists(url + ".lease"), "builder A never took the lease"

            b = run_cli("build", dataset, "--out", url, "--workers", "1", "--no-progress", env=env)
            assert b.returncode == 1
            assert (
                "another skelprep build is using this store" in b.stderr and len(b.stderr.splitlines()) == 1
            )
            verify = run_cli("verify", dataset, "--out", url)
            assert "a build is running on this store" in verify.stderr
            assert a.poll() is None  # A was not disturbed
        finally:
            os.kill(a.pid, signal.SIGKILL)
            a.communicate(timeout=60)
    assert s3.fs.exists(url + ".lease")  # a killed build cannot release its lease
    deadline = time.monotonic() + 120
    while True:
        b = run_cli("build", dataset, "--out", url, "--workers", "1", "--no-progress", env=env)
        if b.returncode == 0 or time.monotonic() > deadline:
            break
        assert "another skelprep build is using this store" in b.stderr, b.stderr
        time.sleep(1)
    assert b.returncode == 0, b.stderr
    assert "3 built" in b.stdout
    assert run_cli("verify", dataset, "--out", url).returncode == 0
    s3.fs.invalidate_cache()
    assert not s3.fs.exists(url + ".lease")


def test_an_expired_lease_is_taken_over_once_and_its_old_holder_learns_it(s3):
    from skelprep.store.lease import Lease, LeaseError

    url = f"s3://{BUCKET}/stores/leases.zarr"
    first = Lease(url, ttl=2)
    first.acquire()
    first._stop.set()  # as if its process were frozen: no more renewals
    with pytest.raises(LeaseError, match="another skelprep build is using this store"):
        Lease(url, ttl=2).acquire()
    deadline = time.monotonic() + 30
    second = None
    while second is None and time.monotonic() < deadline:  # expiry is judged by the server's clock
        try:
            second = Lease(url, ttl=2)
            second.acquire()
        except LeaseError:
            second = None
            time.sleep(0.5)
    assert second is not None, "the expired lease was never taken over"
    try:
        assert not first.renew()
        # Its own clock usually says so first; S3's LastModified has whole seconds, so the server may
        # have let the lease go before 3/4 of the ttl passed here: then the renewal finds it taken over.
        assert first.lost.startswith(f"cannot renew the lease {url}.lease since ") or first.lost == (
            f"the lease {url}.lease was taken over by another build"
        ), first.lost
        first.release()  # must not delete the new holder's lease
        assert s3.fs.exists(url + ".lease")
    finally:
        second.release()
    assert not s3.fs.exists(url + ".lease")


def test_a_lease_rewritten_by_another_is_lost_and_one_rewritten_with_our_record_is_kept(s3):
    """A renewal whose condition fails reads the lease: another owner's record means taken over; our own
    record (a write whose answer was lost on the way, retried by the client) keeps the lease."""
    from skelprep.store.lease import Lease

    url = f"s3://{BUCKET}/stores/rewritten.zarr"
    lease = Lease(url, ttl=600)
    lease.acquire()
    try:
        s3.fs.pipe_file(url + ".lease", lease._body())  # ours, but with an ETag the lease does not know
        assert lease.renew() and lease.renew() and lease.lost is None
        assert lease.confirm()
        s3.fs.pipe_file(url + ".lease", json.dumps({"owner": "another build"}).encode())
        assert not lease.renew()
        assert lease.lost == f"the lease {url}.lease was taken over by another build"
        assert not lease.confirm()
    finally:
        lease.release()
    assert s3.fs.exists(url + ".lease")  # not ours to delete
    s3.fs.rm(url + ".lease")


def _root_cases(s3, url: str) -> list[str] | None:
    s3.fs.invalidate_cache()
    return json.loads(s3.fs.cat_file(f"{url}/zarr.json"))["attributes"]["skelprep"].get("cases")


def _written_cases(s3, url: str) -> set[str]:
    s3.fs.invalidate_cache()
    return {p.split("/")[-2] for p in s3.fs.glob(f"{url}/*/zarr.json")}


def test_a_build_cut_off_from_s3_loses_its_lease_stops_writing_and_does_not_finalize(s3, tmp_path):
    """Builder A writes through a link that is cut mid-build for longer than the lease's ttl, then mended:
    A must not write another case nor finalize, and must say so in one line; B then takes the store over."""
    from skelprep.store.lease import lease_holder

    dataset = tmp_path / "many"
    for i in range(40):
        mask = np.zeros((64, 64), np.uint8)
        mask[8 + i % 40, :] = mask[:, 4 + i] = 255
        write_png(dataset / "labels" / f"c{i:02d}.png", mask)
    url = f"s3://{BUCKET}/stores/cut-off.zarr"
    ttl = 4
    env = {"SKELPREP_LEASE_TTL": str(ttl)}
    with link_to(s3) as link:
        a = subprocess.Popen(
            [*CLI, "build", str(dataset), "--out", url, "--workers", "1", "--no-progress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**base_env(), **env, "AWS_ENDPOINT_URL": link.endpoint},
        )
        try:
            deadline = time.monotonic() + 120
            while not _written_cases(s3, url) and time.monotonic() < deadline:
                assert a.poll() is None, a.communicate()
                time.sleep(0.05)
            link.cut()
            at_cut = _written_cases(s3, url)
            assert 0 < len(at_cut) < 40, "the build ended before its link was cut"
            deadline = time.monotonic() + 60
            while lease_holder(url) is not None and time.monotonic() < deadline:  # the server's clock
                time.sleep(0.2)
            assert lease_holder(url) is None, "A's lease never expired"
            link.mend()  # the network is back; A's lease may be someone else's by now
            stdout, stderr = a.communicate(timeout=180)
        finally:
            if a.poll() is None:
                a.kill()
                a.communicate()
    assert a.returncode == 1, stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"skelprep: error: {url}: cannot renew the lease {url}.lease since "), lines[0]
    assert len(_written_cases(s3, url) - at_cut) <= 1  # at most the case whose write the cut caught
    assert _root_cases(s3, url) == []  # never finalized

    # A leaves its lease (a renewal that got through too late may have refreshed it): B waits out the ttl
    deadline = time.monotonic() + 60
    while True:
        b = run_cli("build", str(dataset), "--out", url, "--workers", "1", "--no-progress", env=env)
        if b.returncode == 0 or time.monotonic() > deadline:
            break
        assert "another skelprep build is using this store" in b.stderr, b.stderr
        time.sleep(0.5)
    assert b.returncode == 0, b.stderr
    assert _root_cases(s3, url) == [f"c{i:02d}" for i in range(40)]
    assert run_cli("verify", str(dataset), "--out", url).returncode == 0
    s3.fs.invalidate_cache()
    assert not s3.fs.exists(url + ".lease")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["build", "s3://no-such-bucket/raw/x"], "dataset folder not found"),
        (
            ["build", f"s3://{BUCKET}/raw/octa3d", "--out", "s3://no-such-bucket/x.zarr"],
            "bucket does not exist",
        ),
        (["build", f"s3:/{BUCKET}/raw/octa3d"], f"looks like a URL with one slash; write s3://{BUCKET}"),
        (["build", "nosuchproto://bucket/raw"], "Protocol not known"),
        (["info", f"s3://{BUCKET}/stores/none.zarr"], "no skelprep store here"),
        (["build", f"s3://{BUCKET}/raw/octa3d", "--storage-option", "nonsense"], "expected KEY=VALUE"),
    ],
)
def test_bad_urls_give_one_line(s3, args, expected):
    result = run_cli(*args, "--no-progress" if args[0] == "build" else "--json")
    assert result.returncode in (1, 2)
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line.lower()]) == 1


def test_wrong_credentials_give_one_line(s3):
    bad = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "wrong"}
    for args in (
        ["build", f"s3://{BUCKET}/raw/octa3d", "--no-progress"],
        ["info", f"s3://{BUCKET}/stores/octa.zarr"],
        ["build", str(EXAMPLES / "octa3d"), "--out", f"s3://{BUCKET}/stores/creds.zarr", "--no-progress"],
    ):
        result = run_cli(*args, env=bad)
        assert result.returncode == 1, result.stdout
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("skelprep: error: s3://"), result.stderr


def test_storage_options_reach_dataset_store_and_workers(s3, tmp_path):
    """Endpoint and keys given only as --storage-option (not in the environment) reach the workers too."""
    env = base_env()
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key, None)
    options = [
        "--storage-option",
        f"endpoint_url={s3.endpoint}",
        "--storage-option",
        f"key={s3.key}",
        "--storage-option",
        f"secret={s3.secret}",
    ]
    url = f"s3://{BUCKET}/stores/options.zarr"
    result = subprocess.run(
        [
            *CLI,
            "build",
            f"s3://{BUCKET}/raw/road_cracks",
            "--out",
            url,
            "--workers",
            "2",
            "--no-progress",
            *options,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "3 built" in result.stdout
    verify = subprocess.run(
        [*CLI, "verify", f"s3://{BUCKET}/raw/road_cracks", "--out", url, *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _ids(layout):
    return [(c.case_id, c.mask.name, [i.name for i in c.images]) for c in layout.cases]


def test_every_layout_is_discovered_through_a_url_as_from_the_path(s3, tmp_path):
    from skelprep.layout import discover

    cracks = EXAMPLES / "road_cracks"
    local = discover(cracks)
    remote = discover(f"s3://{BUCKET}/raw/road_cracks")
    assert remote.kind == "nnunet" and _ids(remote) == _ids(local)
    assert str(remote.cases[0].mask) == f"s3://{BUCKET}/raw/road_cracks/labelsTr/crack_000.png"
    globbed = discover(f"s3://{BUCKET}/raw/road_cracks", masks="labelsTr/*.png", images="imagesTr/*.png")
    assert globbed.kind == "glob" and _ids(globbed) == _ids(
        discover(cracks, "labelsTr/*.png", "imagesTr/*.png")
    )
    file_url = discover(cracks.as_uri())
    assert _ids(file_url) == _ids(local)


def test_a_generic_dataset_in_memory_builds_like_the_same_files_on_disk(tmp_path):
    """fsspec's in-process memory:// filesystem: the generic layout, hidden files and .zarr folders skipped."""
    import fsspec

    from skelprep.build import build
    from skelprep.layout import LayoutError
    from skelprep.store import open_store

    from .helpers import write_png

    rng = np.random.default_rng(3)
    disk = tmp_path / "generic"
    mem = fsspec.filesystem("memory")
    for i in range(3):
        mask = np.zeros((48, 40), np.uint8)
        mask[rng.integers(5, 40), :] = 1
        mask[:, rng.integers(5, 35)] = 1
        write_png(disk / "labels" / "sub" / f"c{i}.png", mask * 255)
        write_png(disk / "images" / "sub" / f"c{i}.png", (rng.random((48, 40)) * 255).astype(np.uint8))
    write_png(disk / "labels" / ".hidden" / "x.png", np.ones((4, 4), np.uint8))
    mem.put(str(disk), "/generic", recursive=True)
    mem.pipe("/generic/labels/old.zarr/zarr.json", b"{}")
    try:
        report = build("memory://generic", tmp_path / "from-memory.zarr", workers=1)
        assert report.ok and sorted(o.case_id for o in report.built) == ["sub/c0", "sub/c1", "sub/c2"]
        assert build(disk, tmp_path / "from-disk.zarr", workers=1).ok
        a, b = open_store(tmp_path / "from-memory.zarr"), open_store(tmp_path / "from-disk.zarr")
        for case_id in b:
            assert a[case_id].attrs["fingerprint"] == b[case_id].attrs["fingerprint"]
            np.testing.assert_array_equal(a[case_id].tube[...], b[case_id].tube[...])
        with pytest.raises(LayoutError, match="^memory://generic: no mask files match"):
            build("memory://generic", tmp_path / "from-memory.zarr", masks="labels/nothing/*.png")
    finally:
        mem.rm("/generic", recursive=True)


def test_image_headers_are_read_through_a_url_as_from_the_file(tmp_path):
    import fsspec
    import nibabel as nib
    import tifffile

    from skelprep.io import InputError, image_shape, read_image, read_mask

    from .helpers import write_png

    files = [
        write_png(tmp_path / "a.png", np.zeros((30, 20, 3), np.uint8)),
        tmp_path / "b.nii.gz",
        tmp_path / "c.nii",
        tmp_path / "d.tif",
        tmp_path / "e.nii.gz",
    ]
    nib.save(nib.Nifti1Image(np.zeros((9, 8, 7, 1), np.uint8), np.eye(4)), files[1])
    nib.save(nib.Nifti2Image(np.zeros((5, 6, 7), np.int16), np.eye(4)), files[2])
    tifffile.imwrite(files[3], np.zeros((4, 10, 12), np.uint8), photometric="minisblack")
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), np.eye(4)), files[4])
    mem = fsspec.filesystem("memory")
    try:
        for f in files:
            mem.put_file(str(f), f"/headers/{f.name}")
            url = f"memory://headers/{f.name}"
            assert image_shape(url) == image_shape(f), f.name
            np.testing.assert_array_equal(read_image(url).array, read_image(f).array)
        np.testing.assert_array_equal(read_mask("memory://headers/e.nii.gz").array, np.ones((6, 5, 4)))
        mem.pipe("/headers/broken.nii.gz", b"not gzip at all")
        for reader in (image_shape, read_mask):
            with pytest.raises(InputError, match=r"^memory://headers/broken\.nii\.gz: cannot read NIfTI"):
                reader("memory://headers/broken.nii.gz")
        with pytest.raises(InputError, match=r"^memory://headers/none\.png: file not found$"):
            image_shape("memory://headers/none.png")
        mem.pipe("/headers/empty.png", b"")
        with pytest.raises(InputError, match=r"^memory://headers/empty\.png: file is empty$"):
            read_mask("memory://headers/empty.png")
    finally:
        mem.rm("/headers", recursive=True)
