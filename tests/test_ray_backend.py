"""The Ray backend on a real Ray cluster: a head and a second worker node on 127.0.0.1.

One cluster serves the whole module (starting Ray takes seconds on two cores), with
one CPU per node so that two workers must run on two nodes. The checks: ``--backend
ray`` gives exactly the local backend's results (store rows, output files, tar
shards); a worker killed in the middle of a shard loses nothing (the shard runs on a
fresh actor and is recorded once); with no retries left the shard is left for the
rerun, which completes it; a node killed mid-job still ends in the local output.

Teardown stops the Ray processes this module started, by their process group, rather
than with ``ray stop``, which would stop every Ray process of the user on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from veil.backends.ray import RayBackend  # noqa: E402
from veil.datasets import open_dataset  # noqa: E402
from veil.runner import execute, prepare_run  # noqa: E402
from veil.stages.detect import DetectTask  # noqa: E402
from veil.stages.obfuscate import ObfuscateTask, ledger_path  # noqa: E402
from veil.store import FaceStore  # noqa: E402

BIN = Path(sys.executable).parent
SHARD_SIZE = 20
IMAGES = 200
STALL_SECONDS = 60.0

# The stalling task below lives in this module, which Ray workers cannot import.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- the cluster -------------------------------------------------------------------------------


@dataclass
class Cluster:
    address: str
    head_group: int  # process group of the head node's Ray processes
    worker_group: int  # ... and of the second node's
    worker_node: str  # node id of the second node


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ray_start(args: list[str], env: dict[str, str]) -> int:
    """``ray start`` in a new session; its daemons keep its process group, returned."""
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", *args, "--disable-usage-stats",
         f"--object-store-memory={100 * 2**20}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    output, _ = process.communicate(timeout=120)
    if process.returncode != 0:
        _stop_group(process.pid)
        pytest.fail(f"ray start failed:\n{output.decode(errors='replace')[-3000:]}")
    return process.pid


def _stop_group(pgid: int) -> None:
    """SIGTERM the group, then SIGKILL what is left after a grace period."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _group_processes(pgid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _group_processes(pgid: int) -> dict[int, str]:
    """pid -> command name of the live processes in a process group (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found[int(entry.name)] = name
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    temp = Path(tempfile.mkdtemp(prefix="veil-ray-", dir="/tmp"))  # short: socket paths
    gcs, client, dashboard, head_agent, worker_agent = map(str, _free_ports(5))
    # A private HOME: a ~/.ray/auth_token left by another cluster must not leak in.
    home = temp / "home"
    home.mkdir()
    real_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0",
               # Notice a dead node in about two seconds, not the default thirty.
               RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="1000",
               RAY_health_check_failure_threshold="3")
    groups: list[int] = []
    try:
        groups.append(_ray_start(
            ["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=1",
             "--include-dashboard=false", f"--dashboard-port={dashboard}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={head_agent}",
             f"--temp-dir={temp}"], env))
        address = f"127.0.0.1:{gcs}"
        groups.append(_ray_start(
            [f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             f"--dashboard-agent-listen-port={worker_agent}"], env))
        ray.init(address=address, logging_level="WARNING")
        deadline = time.monotonic() + 60
        while ray.cluster_resources().get("CPU", 0) < 2:
            assert time.monotonic() < deadline, "the second Ray node never joined"
            time.sleep(0.5)
        worker_node = next(n["NodeID"] for n in ray.nodes()
                           if n["Alive"] and "node:__internal_head__" not in n["Resources"])
        yield Cluster(address, groups[0], groups[1], worker_node)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for group in reversed(groups):
            _stop_group(group)
        if real_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = real_home
        shutil.rmtree(temp, ignore_errors=True)


# -- data and the local backend's results ------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 small JPEGs in two classes: 100 faces (scikit-image's LFW crops) and 100 not."""
    from skimage import data

    crops = data.lfw_subset()  # 100 faces, then 100 non-faces, 25x25 greyscale
    root = tmp_path_factory.mktemp("photos")
    for i in range(IMAGES):
        label = "people" if i < 100 else "other"
        face = Image.fromarray((np.clip(crops[i], 0, 1) * 255).astype(np.uint8))
        canvas = Image.new("RGB", (96, 96), (i * 37 % 255, 120, 90))
        canvas.paste(face.resize((72, 72), Image.Resampling.BICUBIC).convert("RGB"), (12, 12))
        (root / label).mkdir(exist_ok=True)
        canvas.save(root / label / f"{i:04d}.jpg", quality=90)
    return root


def _veil(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([str(BIN / "veil"), *map(str, args), "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def local_faces(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("local") / "faces.sqlite"
    _veil("detect", photos, "--store", store, "--workers", "1", "--shard-size", SHARD_SIZE)
    return store


def _store_rows(path: Path) -> tuple[dict[str, Any], list[Any]]:
    with FaceStore(path) as store:
        return store.current_boxes(), list(store.images())  # in key order


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".veil" not in p.parts}


def _last_run(path: Path) -> Any:
    with FaceStore(path) as store:
        return store.runs()[-1]


# -- without a cluster -------------------------------------------------------------------------


def test_gpus_go_to_tasks_that_want_them_when_the_cluster_has_some(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = RayBackend("127.0.0.1:1")
    monkeypatch.setattr(backend, "_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    assert backend.gpus_for(DetectTask("/data")) == 1.0
    assert backend.gpus_for(ObfuscateTask("/data", "/out", {})) == 0.0
    assert backend.default_workers() == 8 and backend.threads_per_worker(8) == 1
    monkeypatch.setattr(backend, "_resources", lambda: {"CPU": 8.0})
    assert backend.gpus_for(DetectTask("/data")) == 0.0
    assert RayBackend(gpus_per_worker=0.5).gpus_for(ObfuscateTask("/data", "/out", {})) == 0.5


def test_address_without_the_ray_backend_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from veil.cli import main

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    result = CliRunner().invoke(main, ["detect", str(tmp_path), "--store",
                                       str(tmp_path / "f.sqlite"), "--address", "127.0.0.1:1"])
    assert result.exit_code == 2 and "--backend ray" in result.output


# -- the CLI on Ray equals the CLI on this machine ----------------------------------------------


def test_detect_on_ray_equals_local(cluster: Cluster, photos: Path, local_faces: Path,
                                    tmp_path: Path) -> None:
    store = tmp_path / "ray.sqlite"
    _veil("detect", photos, "--store", store, "--backend", "ray", "--address", cluster.address,
          "--shard-size", SHARD_SIZE)
    boxes, images = _store_rows(store)
    expected_boxes, expected_images = _store_rows(local_faces)
    assert sum(bool(b) for b in expected_boxes.values()) >= 90  # the faces were found
    assert boxes == expected_boxes
    assert images == expected_images  # sizes, hashes, labels
    run = _last_run(store)
    assert run.status == "done"
    assert run.timings["backend"] == "ray" and run.timings["workers"] == 2  # CPUs of both nodes


def test_obfuscate_on_ray_equals_local(cluster: Cluster, photos: Path, local_faces: Path,
                                       tmp_path: Path) -> None:
    common = ("--faces", local_faces, "--shard-size", SHARD_SIZE)
    _veil("obfuscate", photos, "--out", tmp_path / "local", "--workers", "1", *common)
    _veil("obfuscate", photos, "--out", tmp_path / "ray", "--backend", "ray", "--address",
          cluster.address, *common)
    local, on_ray = _tree(tmp_path / "local"), _tree(tmp_path / "ray")
    assert len(local) == IMAGES
    assert on_ray == local
    originals = _tree(photos)
    assert sum(local[k] != originals[k] for k in local) >= 90  # faces were blurred


def test_audit_on_ray_equals_local(cluster: Cluster, photos: Path, tmp_path: Path) -> None:
    """The unobfuscated photos leak ~100 faces; Ray's audit lists the same findings."""
    reports = {}
    for name, where in (("local", ("--workers", "1")),
                        ("ray", ("--backend", "ray", "--address", cluster.address))):
        done = _veil("audit", photos, "--json", tmp_path / f"{name}.json", "--report",
                     tmp_path / f"{name}.html", "--shard-size", SHARD_SIZE, *where, check=False)
        assert done.returncode == 1, done.stdout + done.stderr  # findings: not clean
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    local, on_ray = (sorted(map(json.dumps, r["findings"])) for r in reports.values())
    assert len(local) >= 90
    assert on_ray == local


def test_webdataset_shards_on_ray_equal_local(cluster: Cluster, photos: Path,
                                              local_faces: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    keys = sorted(_tree(photos))
    faces, _ = _store_rows(local_faces)
    paper = []
    for n in range(3):  # three shards: three run shards, spread over two workers
        with tarfile.open(shards / f"part-{n}.tar", "w") as tar:
            for key in keys[n::3]:
                stem = key.replace("/", "_").removesuffix(".jpg")
                tar.add(photos / key, arcname=f"{stem}.jpg")
                paper.append({"url": f"part-{n}.tar/{stem}.jpg",
                              "bboxes": [b.to_dict() for b in faces[key]]})
    faces_file = tmp_path / "faces.json"
    faces_file.write_text(json.dumps(paper))
    common = ("--faces", faces_file, "--out-format", "webdataset")
    _veil("obfuscate", shards, "--out", tmp_path / "local", "--workers", "1", *common)
    _veil("obfuscate", shards, "--out", tmp_path / "ray", "--backend", "ray", "--address",
          cluster.address, *common)
    local, on_ray = _tree(tmp_path / "local"), _tree(tmp_path / "ray")
    assert sorted(local) == ["part-0.tar", "part-1.tar", "part-2.tar"]
    assert on_ray == local


def test_huggingface_shards_on_ray_equal_local(cluster: Cluster, photos: Path,
                                              local_faces: Path, tmp_path: Path) -> None:
    """A Hub-style Parquet dataset (written with the datasets library): each shard file is
    one shard of the run on either backend, and the output is the same bytes."""
    hf = pytest.importorskip("datasets")
    keys = sorted(_tree(photos))
    table = hf.Dataset.from_dict(
        {"image": [{"bytes": (photos / k).read_bytes(), "path": k} for k in keys],
         "label": [int(k.startswith("people")) for k in keys]},
        features=hf.Features(image=hf.Image(), label=hf.ClassLabel(names=["other", "people"])))
    hub = tmp_path / "hub"
    for n in range(3):  # three shards: three run shards, spread over two workers
        table.shard(num_shards=3, index=n, contiguous=True).to_parquet(
            str(hub / "data" / f"train-{n:05d}-of-00003.parquet"), batch_size=16)
    faces, _ = _store_rows(local_faces)
    dataset = open_dataset(hub)
    reader = dataset.reader()
    by_bytes = {(photos / k).read_bytes(): k for k in keys}
    paper = [{"url": key, "bboxes": [b.to_dict() for b in faces[by_bytes[reader.read(key)]]]}
             for key in dataset.keys()]
    faces_file = tmp_path / "faces.json"
    faces_file.write_text(json.dumps(paper))
    _veil("obfuscate", hub, "--faces", faces_file, "--out", tmp_path / "local", "--workers", "1")
    _veil("obfuscate", hub, "--faces", faces_file, "--out", tmp_path / "ray", "--backend", "ray",
          "--address", cluster.address)
    local, on_ray = _tree(tmp_path / "local"), _tree(tmp_path / "ray")
    assert sorted(local) == [f"data/train-{n:05d}-of-00003.parquet" for n in range(3)]
    assert on_ray == local
    with FaceStore(ledger_path(tmp_path / "ray")) as ledger:
        items = ledger.run_items(ledger.runs("obfuscate")[-1].id)
    assert len(items) == IMAGES
    assert sum((i.info or {}).get("action") == "obfuscated" for i in items) > 0


# -- workers and nodes that die ------------------------------------------------------------------


@dataclass
class StallOnce:
    """A task wrapper: the first shard it meets (on ``node``, if given) writes this
    process's id to ``marker`` and hangs until the test kills the process. Workers on
    other nodes wait for that to happen, so they cannot finish the job first."""

    inner: Any
    marker: str
    node: str | None = None

    def setup(self) -> None:
        self.inner.setup()

    def __call__(self, index: int, keys: list[str]) -> Any:
        here = ray.get_runtime_context().get_node_id()
        if self.node is None or here == self.node:
            if not os.path.exists(self.marker):
                Path(self.marker).write_text(str(os.getpid()))
                time.sleep(STALL_SECONDS)
        else:
            deadline = time.monotonic() + 30
            while not os.path.exists(self.marker) and time.monotonic() < deadline:
                time.sleep(0.05)
        return self.inner(index, keys)


def _when_marked(marker: Path, action: Any) -> threading.Thread:
    def wait_then_act() -> None:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        action(int(marker.read_text()))

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def _kill_process(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def _detect_run(photos: Path, store: FaceStore) -> tuple[int, DetectTask]:
    dataset = open_dataset(photos)
    run_id, _ = prepare_run(store, "detect", {"test": "ray"}, dataset.keys(),
                            shard_size=SHARD_SIZE)
    task = DetectTask(str(photos), threads=1, reader=dataset.reader())
    return run_id, task


def test_a_killed_worker_s_shard_runs_on_another_and_is_recorded_once(
        cluster: Cluster, photos: Path, local_faces: Path, tmp_path: Path) -> None:
    marker = tmp_path / "stalled.pid"
    with FaceStore(tmp_path / "s.sqlite") as store:
        run_id, task = _detect_run(photos, store)
        killer = _when_marked(marker, _kill_process)
        backend = RayBackend(cluster.address)
        start = time.monotonic()
        summary = execute(store, run_id, StallOnce(task, str(marker)), workers=2,
                          progress=False, backend=backend)
        killer.join(timeout=5)
        assert marker.exists() and time.monotonic() - start < STALL_SECONDS  # it was killed
        assert summary.ok and summary.images == IMAGES
        assert backend.workers_lost == 1
        shards = store.shards(run_id)
        assert all(s["status"] == "done" and s["attempts"] == 1 for s in shards)
        assert store.current_boxes() == _store_rows(local_faces)[0]


def test_with_no_retries_left_the_shard_waits_for_the_rerun(
        cluster: Cluster, photos: Path, local_faces: Path, tmp_path: Path) -> None:
    marker = tmp_path / "stalled.pid"
    with FaceStore(tmp_path / "s.sqlite") as store:
        run_id, task = _detect_run(photos, store)
        killer = _when_marked(marker, _kill_process)
        first = execute(store, run_id, StallOnce(task, str(marker)), workers=2,
                        progress=False, backend=RayBackend(cluster.address, max_retries=0))
        killer.join(timeout=5)
        assert [message.split(":")[0] for _, message in first.failed_shards] == [
            "WorkerLostError"]
        assert first.images == IMAGES - SHARD_SIZE
        assert store.run(run_id).status == "failed"  # resumable
        (failed,) = [s for s in store.shards(run_id) if s["status"] != "done"]

        rerun = execute(store, run_id, task, workers=2, progress=False,
                        backend=RayBackend(cluster.address))
        assert rerun.ok and rerun.images == SHARD_SIZE  # only the shard left over
        shards = {s["index"]: s for s in store.shards(run_id)}
        assert all(s["status"] == "done" for s in shards.values())
        assert shards[failed["index"]]["attempts"] == 2  # one failure, one completion
        assert store.current_boxes() == _store_rows(local_faces)[0]


def test_a_killed_node_loses_nothing(cluster: Cluster, photos: Path, local_faces: Path,
                                     tmp_path: Path) -> None:
    """Last in the module: it takes the second node away for good."""
    _veil("obfuscate", photos, "--out", tmp_path / "local", "--faces", local_faces,
          "--workers", "1", "--shard-size", SHARD_SIZE)
    dataset = open_dataset(photos)
    out = tmp_path / "ray"
    (out / ".veil").mkdir(parents=True)
    faces, _ = _store_rows(local_faces)

    def kill_raylet(_pid: int) -> None:
        raylets = [p for p, name in _group_processes(cluster.worker_group).items()
                   if name == "raylet"]
        assert raylets, "the second node has no raylet"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)

    marker = tmp_path / "stalled.pid"
    with FaceStore(out / ".veil" / "ledger.sqlite") as ledger:
        run_id, _ = prepare_run(ledger, "obfuscate", {"test": "node"}, dataset.keys(),
                                shard_size=SHARD_SIZE)
        task = ObfuscateTask(str(photos), str(out), faces, reader=dataset.reader())
        killer = _when_marked(marker, kill_raylet)
        backend = RayBackend(cluster.address)
        summary = execute(ledger, run_id, StallOnce(task, str(marker), cluster.worker_node),
                          workers=2, progress=False, backend=backend)
        killer.join(timeout=5)
        assert marker.exists()  # a shard ran on the second node, which was then killed
        assert summary.ok and summary.images == IMAGES
        assert backend.workers_lost >= 1
        assert all(s["status"] == "done" and s["attempts"] == 1 for s in ledger.shards(run_id))
    assert _tree(out) == _tree(tmp_path / "local")
