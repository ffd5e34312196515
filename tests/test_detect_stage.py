"""`veil detect`: a dataset in, a detection run in the face store out."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

from veil.cli import main
from veil.datasets import open_dataset
from veil.gallery import write_gallery
from veil.stages import detect as detect_stage
from veil.stages.detect import detect
from veil.store import FaceStore


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs in two 'classes', plus a broken file."""
    gallery = tmp_path_factory.mktemp("gallery")
    write_gallery(gallery)
    root = tmp_path_factory.mktemp("photos")
    for cls, names in {"people": ["astronaut.png", "grace_hopper.jpg"],
                       "things": ["coffee.png", "rocket.jpg", "chelsea.png"]}.items():
        (root / cls).mkdir()
        for name in names:
            shutil.copy(gallery / name, root / cls / name)
    (root / "things" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_detect_records_faces_labels_and_errors(photos: Path, tmp_path: Path) -> None:
    with FaceStore(tmp_path / "faces.sqlite") as store:
        summary = detect(open_dataset(photos), store, workers=1, progress=False)
        assert summary.counts["images"] == 5
        assert [key for key, _ in summary.errors] == ["things/broken.jpg"]
        faces = store.current_boxes()
        assert len(faces["people/astronaut.png"]) >= 1
        assert len(faces["people/grace_hopper.jpg"]) >= 1
        assert faces["things/coffee.png"] == []
        assert "things/broken.jpg" not in faces  # an error is not 'no faces'
        record = store.image("people/astronaut.png")
        assert (record.width, record.height, record.label) == (512, 512, "people")
        assert len(record.sha256) == 64
        broken = store.image("things/broken.jpg")
        assert broken.status == "error" and "JPEG" in broken.error


def test_two_workers_equal_one(photos: Path, tmp_path: Path) -> None:
    results = []
    for workers in (1, 2):
        with FaceStore(tmp_path / f"w{workers}.sqlite") as store:
            detect(open_dataset(photos), store, workers=workers, shard_size=2, progress=False)
            results.append(store.current_boxes())
    assert results[0] == results[1]


def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = open_dataset(photos)
    with FaceStore(tmp_path / "full.sqlite") as store:
        detect(dataset, store, workers=1, shard_size=2, progress=False)
        expected = store.current_boxes()

    calls = {"n": 0}
    original = detect_stage.DetectTask.__call__

    def interrupt_on_second_shard(self, index, keys):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, index, keys)

    with FaceStore(tmp_path / "resumed.sqlite") as store:
        monkeypatch.setattr(detect_stage.DetectTask, "__call__", interrupt_on_second_shard)
        first = detect(dataset, store, workers=1, shard_size=2, progress=False)
        assert first.interrupted and first.images == 2
        monkeypatch.setattr(detect_stage.DetectTask, "__call__", original)
        second = detect(dataset, store, workers=1, shard_size=2, progress=False)
        assert second.resumed_shards == 1 and second.images == 4
        assert len(store.runs("detect")) == 1
        assert store.current_boxes() == expected


def test_cli_detect_summary_and_exit_code(photos: Path, tmp_path: Path) -> None:
    store = tmp_path / "faces.sqlite"
    result = CliRunner().invoke(main, ["detect", str(photos), "--store", str(store),
                                       "--workers", "1", "--no-progress"])
    assert result.exit_code == 1, result.output  # the broken file
    assert "images with faces" in result.output
    assert "things/broken.jpg" in result.output
    ok = CliRunner().invoke(main, ["detect", str(photos / "people"), "--store",
                                   str(tmp_path / "people.sqlite"), "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "start-up" in ok.output  # model loading is reported apart from the throughput
    bad = CliRunner().invoke(main, ["detect", str(photos), "--detector", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


class _Recording:
    """A detector that finds nothing and remembers how it was built and called."""

    name = "recording"
    built: ClassVar[list[int | None]] = []
    calls: ClassVar[list[list[tuple[int, ...]]]] = []

    def __init__(self, *, threads: int | None = None, batch_size: int = 8) -> None:
        self.built.append(threads)

    def detect(self, images):  # type: ignore[no-untyped-def]
        self.calls.append([image.shape for image in images])
        return [[] for _ in images]


def test_one_shard_runs_here_on_every_core_and_equal_sizes_meet(photos: Path,
                                                                tmp_path: Path) -> None:
    """One shard is not sent to a pool of one process with a share of the cores; the
    detector's first call is one batch (the network starts after a few decodes), later
    calls a window of several batches, so equal sizes can share a batch."""
    from veil.cores import available_cores
    from veil.detection import register_detector

    register_detector("recording", _Recording)
    _Recording.built.clear()
    _Recording.calls.clear()
    with FaceStore(tmp_path / "faces.sqlite") as store:
        summary = detect(open_dataset(photos), store, detector="recording", workers=2,
                         batch_size=2, progress=False)
    assert summary.startup_seconds is not None and summary.images == 6
    assert _Recording.built == [available_cores()]
    # people/: 2 images (one batch); things/: broken.jpg failed, 3 images in one window
    assert [len(call) for call in _Recording.calls] == [2, 3]


def test_the_progress_bar_moves_inside_a_shard(photos: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard run in this process moves the bar window by window (a 256-image shard of
    ``thorough`` takes about a minute), and the bar still ends at the total, not past it."""
    from tqdm import tqdm

    from veil import runner
    from veil.detection import register_detector

    seen: list[int] = []

    class Recording(tqdm):  # type: ignore[type-arg]
        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            seen.append(int(self.n))
            return shown

    monkeypatch.setattr(runner, "tqdm", Recording)
    register_detector("recording", _Recording)
    _Recording.calls.clear()
    with FaceStore(tmp_path / "faces.sqlite") as store:
        summary = detect(open_dataset(photos), store, detector="recording", workers=1,
                         batch_size=2, progress=True)
    assert summary.images == 6 and [len(call) for call in _Recording.calls] == [2, 3]
    # the first window (people/, 2 images), then the rest (broken.jpg counts: it is done)
    assert seen == [2, 6, 6]


def test_detector_threads_sleep_when_idle() -> None:
    """CenterFace's onnxruntime threads do not spin between runs: spinning threads take
    the cores from the decoding thread (and from other jobs on a shared machine)."""
    from veil.detection.centerface_onnx import load_session

    options = load_session(1, "cpu").get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
