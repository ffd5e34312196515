"""Hugging Face datasets in and out: Hub-style Parquet shards and ``save_to_disk`` folders.

The datasets are written with the real ``datasets`` library (``Dataset.from_dict`` with
``Image``/``ClassLabel`` features, shards written as ``push_to_hub`` writes them, and
``save_to_disk``) from shared photos, and veil's outputs are loaded back with it, so what
veil writes is what ``datasets`` users load. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from runs import done_shards

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never reach the Hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

from datasets import ClassLabel, DatasetDict, Features, Value  # noqa: E402
from datasets import Dataset as HFDataset  # noqa: E402
from datasets import Image as ImageFeature  # noqa: E402
from datasets.table import embed_table_storage  # noqa: E402

from veil.boxes import Box  # noqa: E402
from veil.cli import main  # noqa: E402
from veil.datasets import open_dataset  # noqa: E402
from veil.errors import DatasetError  # noqa: E402
from veil.faces import load_faces  # noqa: E402
from veil.images import probe  # noqa: E402
from veil.review.images import ImageServer  # noqa: E402
from veil.stages import obfuscate as obfuscate_stage  # noqa: E402
from veil.stages.audit import regions_from_ledger  # noqa: E402
from veil.stages.obfuscate import ledger_path, obfuscate_dataset  # noqa: E402
from veil.store import FaceStore  # noqa: E402

datasets.disable_progress_bars()

CLASSES = ["people", "church"]
FEATURES = Features(image=ImageFeature(), label=ClassLabel(names=CLASSES), id=Value("string"),
                    caption=Value("string"))


@dataclass(frozen=True)
class Photo:
    path: Path
    label: int
    boxes: tuple[tuple[float, float, float, float], ...]

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()


@pytest.fixture(scope="module")
def photos(wider: Path, shared: Path) -> list[Photo]:
    """Eight shared photos: WIDER crowds with their faces, Imagenette churches without,
    alternating."""
    faces = {e["url"]: e["bboxes"] for e in json.loads((wider / "faces.json").read_text())}
    people = [Photo(wider / url, 0, tuple((b["x0"], b["y0"], b["x1"], b["y1"])
                                          for b in faces[url])) for url in sorted(faces)[:4]]
    church = sorted((shared / "data" / "imagenette" / "val" / "n03028079").glob("*.JPEG"))
    churches = [Photo(p, 1, ()) for p in church[:4]]
    return [p for pair in zip(people, churches, strict=True) for p in pair]


def _table(photos: list[Photo], image: dict[int, bytes] | None = None) -> Any:
    """A ``datasets`` Dataset of the photos (``image`` replaces some rows' bytes)."""
    image = image or {}
    return HFDataset.from_dict({
        "image": [{"bytes": image.get(i, p.data), "path": p.path.name}
                  for i, p in enumerate(photos)],
        "label": [p.label for p in photos],
        "id": [p.path.stem for p in photos],
        "caption": [f"photo {p.path.stem}" for p in photos],
    }, features=FEATURES)


def write_hub(root: Path, splits: dict[str, Any], shards: dict[str, int]) -> Path:
    """Each split's Dataset as push_to_hub writes it: contiguous shards with the external
    files embedded, ``data/<split>-NNNNN-of-NNNNN.parquet``, two rows per row group (so
    a reader crosses row groups)."""
    for split, table in splits.items():
        count = shards[split]
        for index in range(count):
            shard = table.shard(num_shards=count, index=index, contiguous=True)
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True,
                                                   keep_in_memory=True).with_format(None)
            shard.to_parquet(str(root / "data" / f"{split}-{index:05d}-of-{count:05d}.parquet"),
                             batch_size=2)
    return root


@pytest.fixture(scope="module")
def hub(photos: list[Photo], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 6 photos in 2 shards; validation: 2 photos in 1 shard."""
    return write_hub(tmp_path_factory.mktemp("hub"), {
        "train": _table(photos[:6]), "validation": _table(photos[6:])},
        {"train": 2, "validation": 1})


@pytest.fixture(scope="module")
def disk(photos: list[Photo], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("disk") / "saved"
    DatasetDict(train=_table(photos[:6]), validation=_table(photos[6:])).save_to_disk(str(root))
    return root


def _by_key(root: Path, photos: list[Photo], **columns: Any) -> dict[str, Photo]:
    """Which photo each key of the dataset at ``root`` holds (matched by bytes)."""
    dataset = open_dataset(root, **columns)
    reader = dataset.reader()
    by_bytes = {p.data: p for p in photos}
    return {key: by_bytes[reader.read(key)] for key in dataset.keys()}


def _faces_file(path: Path, by_key: dict[str, Photo]) -> Path:
    """The photos' faces in the paper's JSON, keyed by the dataset's keys."""
    path.write_text(json.dumps([
        {"url": key, "bboxes": [dict(zip(("x0", "y0", "x1", "y1"), b, strict=True))
                                for b in photo.boxes]}
        for key, photo in by_key.items()]))
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _images(path: Path) -> list[dict[str, Any] | None]:
    """A Parquet shard's image cells, as stored."""
    return pq.read_table(path, columns=["image"]).column("image").to_pylist()


# -- reading --------------------------------------------------------------------------------------


def test_a_hub_folder_is_read_row_by_row_with_its_class_labels(
        hub: Path, photos: list[Photo]) -> None:
    dataset = open_dataset(hub)  # auto: Parquet files and no image files
    assert dataset.layout == "huggingface" and len(dataset) == 8
    assert dataset.splits == ["train", "validation"]
    assert dataset.keys()[:4] == [
        "train/train-00000-of-00002.parquet/000000", "train/train-00000-of-00002.parquet/000001",
        "train/train-00000-of-00002.parquet/000002", "train/train-00001-of-00002.parquet/000000"]
    by_key = _by_key(hub, photos)
    assert list(by_key.values()) == photos  # row order: the Dataset's order
    assert {e.key: e.label for e in dataset} == {k: CLASSES[p.label] for k, p in by_key.items()}
    assert dataset.groups() == [dataset.keys()[0:3], dataset.keys()[3:6], dataset.keys()[6:8]]
    assert dataset.work_shards(2) == [dataset.keys()[i:j] for i, j in
                                      ((0, 2), (2, 3), (3, 5), (5, 6), (6, 8))]

    reader = pickle.loads(pickle.dumps(dataset.reader()))  # as a worker gets it
    for key in reversed(dataset.keys()):  # backwards: each row group is read again
        assert reader.read(key) == by_key[key].data
    with pytest.raises(FileNotFoundError):
        reader.read("train/train-00000-of-00002.parquet/000009")

    by_id = open_dataset(hub, id_column="id")
    assert by_id.keys()[0] == f"train/{photos[0].path.stem}"
    assert by_id.groups()[0] == [f"train/{p.path.stem}" for p in photos[:3]]  # row order
    assert by_id.reader().read(f"validation/{photos[7].path.stem}") == photos[7].data

    one = open_dataset(hub / "data" / "validation-00000-of-00001.parquet")
    assert one.keys() == ["validation/validation-00000-of-00001.parquet/000000",
                          "validation/validation-00000-of-00001.parquet/000001"]
    assert open_dataset(hub).subset(split="validation").keys() == one.keys()


def test_row_groups_too_big_to_hold_are_streamed_alike(hub: Path, photos: list[Photo],
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Row groups over GROUP_BUFFER are read batch by batch (here: every one of them), in
    any order, and rewritten batch by batch: the same rows come out."""
    from veil.hf import reader as hf_reader
    from veil.hf import storage as hf_storage

    monkeypatch.setattr(hf_reader, "GROUP_BUFFER", 0)
    monkeypatch.setattr(hf_storage, "GROUP_BUFFER", 0)
    monkeypatch.setattr(hf_reader, "READ_BATCH", 1)
    by_key = _by_key(hub, photos)
    reader = open_dataset(hub).reader()
    for key in [*by_key, *reversed(by_key)]:
        assert reader.read(key) == by_key[key].data
    faces = load_faces(_faces_file(tmp_path / "faces.json", by_key))
    out = tmp_path / "out"
    assert obfuscate_dataset(open_dataset(hub), faces, out, workers=1, progress=False).ok
    outputs = open_dataset(out).reader()
    assert [outputs.read(k) == p.data for k, p in by_key.items()] == [
        not p.boxes for p in by_key.values()]


def test_a_save_to_disk_folder_is_read_alike(disk: Path, photos: list[Photo]) -> None:
    dataset = open_dataset(disk)
    assert dataset.layout == "huggingface" and dataset.splits == ["train", "validation"]
    assert dataset.keys()[0] == "train/data-00000-of-00001.arrow/000000"
    by_key = _by_key(disk, photos)
    assert list(by_key.values()) == photos
    assert [e.label for e in dataset] == [CLASSES[p.label] for p in photos]


# -- writing --------------------------------------------------------------------------------------


def test_obfuscate_writes_the_same_hub_dataset(hub: Path, photos: list[Photo],
                                               tmp_path: Path) -> None:
    by_key = _by_key(hub, photos)
    faces = load_faces(_faces_file(tmp_path / "faces.json", by_key))
    out = tmp_path / "out"
    summary = obfuscate_dataset(open_dataset(hub), faces, out, workers=1, progress=False)
    assert summary.ok and summary.counts["obfuscated"] == 4 and summary.counts["copied"] == 4

    assert sorted(_files(out)) == sorted(_files(hub))  # the same shard files
    for name in sorted(_files(hub)):
        source, written = hub / name, out / name
        assert pq.read_schema(written).equals(pq.read_schema(source), check_metadata=True)
        src_meta, out_meta = pq.read_metadata(source), pq.read_metadata(written)
        assert out_meta.num_rows == src_meta.num_rows
        assert out_meta.num_row_groups == src_meta.num_row_groups
        assert set(out_meta.metadata) == set(src_meta.metadata)  # CDC options too
        assert (pq.read_table(written).drop_columns("image")
                == pq.read_table(source).drop_columns("image"))

    regions = regions_from_ledger(out)
    assert regions is not None and set(regions) == set(by_key)  # keys are the dataset's
    cache = tmp_path / "hf-cache"
    loaded = datasets.load_dataset("parquet", data_dir=str(out), cache_dir=str(cache))
    original = datasets.load_dataset("parquet", data_dir=str(hub), cache_dir=str(cache))
    assert list(loaded) == ["train", "validation"]
    for split in loaded:
        assert loaded[split].features == original[split].features == FEATURES
        assert loaded[split]["id"] == original[split]["id"]
        assert loaded[split]["label"] == original[split]["label"]
    outputs = open_dataset(out).reader()
    for key, photo in by_key.items():
        data = outputs.read(key)
        if not photo.boxes:
            assert data == photo.data  # faceless: the source's bytes
            continue
        assert data != photo.data and data[:2] == b"\xff\xd8" and not probe(data).metadata
        with Image.open(io.BytesIO(data)) as new, Image.open(photo.path) as old:
            assert new.size == old.size
            assert new.quantization == old.quantization  # the source's tables, kept
        assert not np.array_equal(np.asarray(Image.open(io.BytesIO(data))),
                                  np.asarray(Image.open(photo.path)))
    with FaceStore(ledger_path(out), create=False) as ledger:
        items = ledger.run_items(ledger.runs("obfuscate")[-1].id)
        faced = [i for i in items if by_key[i.key].boxes]
        assert {i.info["encoding"] for i in faced} == {"jpeg-domain"}  # blocks kept

    two = tmp_path / "two-workers"  # the shards in two processes: the same bytes
    obfuscate_dataset(open_dataset(hub), faces, two, workers=2, progress=False)
    assert _files(two) == _files(out)


def test_a_save_to_disk_output_loads_with_load_from_disk(disk: Path, photos: list[Photo],
                                                         tmp_path: Path) -> None:
    by_key = _by_key(disk, photos)
    faces = load_faces(_faces_file(tmp_path / "faces.json", by_key))
    out = tmp_path / "out"
    assert obfuscate_dataset(open_dataset(disk), faces, out, workers=1, progress=False).ok
    loaded, original = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(disk))
    assert list(loaded) == ["train", "validation"]
    for split in loaded:
        assert loaded[split].features == original[split].features
        assert loaded[split]["caption"] == original[split]["caption"]
        cells = loaded[split].with_format("arrow")["image"].to_pylist()
        sources = original[split].with_format("arrow")["image"].to_pylist()
        for cell, source in zip(cells, sources, strict=True):
            faceless = not next(p for p in photos if p.data == source["bytes"]).boxes
            assert (cell["bytes"] == source["bytes"]) == faceless
            assert cell["path"] == source["path"]
    for split in ("train", "validation"):
        state = json.loads((out / split / "state.json").read_text())
        source = json.loads((disk / split / "state.json").read_text())
        assert state["_data_files"] == source["_data_files"]
        assert state["_fingerprint"] != source["_fingerprint"]  # other data
        assert (out / split / "dataset_info.json").read_bytes() == (
            disk / split / "dataset_info.json").read_bytes()


def _face_photos(folder: Path, count: int, size: int = 640) -> list[Photo]:
    """Noisy JPEG photos, each with one 'face' box (work for the blur)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    made = []
    for i in range(count):
        path = folder / f"p{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(path, quality=90)
        made.append(Photo(path, i % 2, ((100.0, 120.0, 300.0, 360.0),)))
    return made


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    made = _face_photos(tmp_path / "photos", 48)
    hub = write_hub(tmp_path / "hub", {"train": _table(made)}, {"train": 24})
    faces_file = _faces_file(tmp_path / "faces.json", _by_key(hub, made))
    command = [sys.executable, "-m", "veil", "obfuscate", str(hub), "--faces", str(faces_file),
               "--workers", "1", "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run([*command, "--out", str(reference)], check=True, capture_output=True)

    out = tmp_path / "out"
    process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while done_shards(ledger_path(out)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = done_shards(ledger_path(out))
    assert 4 <= done < 24, f"the kill came too late to test a resume ({done} shards done)"
    assert _files(out) != _files(reference)

    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert _files(out) == _files(reference)  # no temp file left either


def test_an_interrupted_shard_leaves_no_torn_file(hub: Path, photos: list[Photo],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    faces = load_faces(_faces_file(tmp_path / "faces.json", _by_key(hub, photos)))
    original = obfuscate_stage.HFShardObfuscateTask._batch

    def interrupted(self: Any, batch: Any, reader: Any, shard: Any, *args: Any) -> Any:
        if shard.name == "train-00001-of-00002.parquet":
            raise KeyboardInterrupt  # killed while the shard is being written
        return original(self, batch, reader, shard, *args)

    monkeypatch.setattr(obfuscate_stage.HFShardObfuscateTask, "_batch", interrupted)
    first = obfuscate_dataset(open_dataset(hub), faces, tmp_path / "out", workers=1,
                              progress=False)
    assert first.interrupted
    assert sorted(_files(tmp_path / "out")) == ["data/train-00000-of-00002.parquet"]


# -- bad input ------------------------------------------------------------------------------------


def test_a_shard_without_an_image_column_is_a_clear_error(tmp_path: Path) -> None:
    texts = HFDataset.from_dict({"text": ["a", "b"], "label": [0, 1]}, features=Features(
        text=Value("string"), label=ClassLabel(names=CLASSES)))
    texts.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(DatasetError, match=r"no image column .*text, label.*--image-column"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="'text' holds string, not images"):
        open_dataset(tmp_path, image_column="text")
    with pytest.raises(DatasetError, match="no column 'picture'"):
        open_dataset(tmp_path, image_column="picture")
    result = CliRunner().invoke(main, ["detect", str(tmp_path), "--store",
                                       str(tmp_path / "f.sqlite")])
    assert result.exit_code == 2 and "no image column" in result.output


def test_shards_of_one_split_with_different_schemas_are_refused(photos: list[Photo],
                                                                tmp_path: Path) -> None:
    _table(photos[:2]).to_parquet(str(tmp_path / "data" / "train-00000-of-00002.parquet"))
    other = _table(photos[2:4]).remove_columns("caption")
    other.to_parquet(str(tmp_path / "data" / "train-00001-of-00002.parquet"))
    with pytest.raises(DatasetError, match=r"shards of split 'train' have different schemas: "
                                           r".*caption: string"):
        open_dataset(tmp_path)


def test_undecodable_bytes_in_one_row_fail_that_row_only(photos: list[Photo],
                                                         tmp_path: Path) -> None:
    hub = write_hub(tmp_path / "hub", {"train": _table(photos[:4], {1: b"not an image"})},
                    {"train": 1})
    dataset = open_dataset(hub)
    bad = dataset.keys()[1]
    store = tmp_path / "faces.sqlite"
    result = CliRunner().invoke(main, ["detect", str(hub), "--store", str(store),
                                       "--workers", "1", "--no-progress"])
    assert result.exit_code == 1, result.output  # some input failed
    with FaceStore(store) as faces:
        assert faces.image(bad).status == "error"
        assert [k for k in dataset.keys() if faces.image(k).status == "ok"] == [
            k for k in dataset.keys() if k != bad]

    faces_file = _faces_file(tmp_path / "faces.json", {
        k: photos[i] for i, k in enumerate(dataset.keys())})
    out = tmp_path / "out"
    summary = obfuscate_dataset(dataset, load_faces(faces_file), out, workers=1, progress=False)
    assert [k for k, _ in summary.errors] == [bad]
    assert summary.counts["obfuscated"] + summary.counts["copied"] == 3
    cells = _images(out / "data" / "train-00000-of-00001.parquet")
    assert cells[1] is None and all(c is not None for i, c in enumerate(cells) if i != 1)
    loaded = datasets.load_dataset("parquet", data_dir=str(out),
                                   cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded[1]["image"] is None and loaded[0]["image"].size == (416, 416)


def test_reading_and_writing_a_shard_holds_a_row_group_not_the_shard(tmp_path: Path) -> None:
    """A 48 MB shard of 24 row groups: read row by row, then rewritten, pyarrow holds a
    few row groups at a time, never the shard (measured in a fresh process)."""
    import pyarrow as pa

    rows, size = 96, 500_000
    images = pa.StructArray.from_arrays(
        [pa.array([os.urandom(size) for _ in range(rows)], pa.binary()),
         pa.array([f"{i}.jpg" for i in range(rows)])], names=["bytes", "path"])
    source = tmp_path / "data" / "train-00000-of-00001.parquet"
    source.parent.mkdir()
    pq.write_table(pa.table({"image": images, "n": pa.array(range(rows))}), source,
                   row_group_size=4, compression="none", use_dictionary=False)
    script = f"""
import pyarrow as pa
from pathlib import Path
from veil.datasets import open_dataset
from veil.hf import ShardWriter, iter_groups
dataset = open_dataset({str(tmp_path)!r})
reader = dataset.reader()
assert len(dataset) == {rows}
for key in dataset.keys():
    assert len(reader.read(key)) == {size}
source = Path({str(source)!r})
with ShardWriter(source, source.parent.parent / "copy.parquet") as out:
    for group in iter_groups(source):
        out.write(group)
print(pa.default_memory_pool().max_memory())
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    assert peak < rows * size / 3, f"{peak / 1e6:.0f} MB for a 48 MB shard of 2 MB groups"
    assert pq.read_table(tmp_path / "copy.parquet").equals(pq.read_table(source))


# -- every stage ----------------------------------------------------------------------------------


def test_detect_review_export_obfuscate_audit_through_the_cli(
        hub: Path, photos: list[Photo], tmp_path: Path) -> None:
    runner = CliRunner()
    store = tmp_path / "faces.sqlite"
    result = runner.invoke(main, ["detect", str(hub), "--store", str(store), "--workers", "1",
                                  "--layout", "huggingface", "--no-progress"])
    assert result.exit_code == 0, result.output
    dataset = open_dataset(hub)
    by_key = _by_key(hub, photos)
    with FaceStore(store) as faces:
        boxes = faces.current_boxes()
        assert faces.image(dataset.keys()[0]).label == "people"  # the ClassLabel's name
        assert faces.image(dataset.keys()[1]).label == "church"
        assert faces.image(dataset.keys()[0]).sha256 == hashlib.sha256(
            photos[0].data).hexdigest()
    assert sorted(boxes) == dataset.keys()
    assert all(boxes[k] for k, p in by_key.items() if p.label == 0)  # the crowds' faces

    exports = {}
    for fmt in ("paper", "coco", "parquet"):
        exports[fmt] = tmp_path / f"faces.{fmt}"
        result = runner.invoke(main, ["review", "export", "--store", str(store), "--format",
                                      fmt, "--out", str(exports[fmt]), "--include-unreviewed"])
        assert result.exit_code == 0, result.output
        assert sorted(load_faces(str(exports[fmt])).boxes) == dataset.keys()
    coco = json.loads(exports["coco"].read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == dataset.keys()

    server = ImageServer(dataset)  # what the review app sends the browser: the row's image
    for key in dataset.keys()[:2]:
        served = server.serve(key)
        assert served.data == by_key[key].data and server.size(key) == Image.open(
            by_key[key].path).size

    out = tmp_path / "out"
    result = runner.invoke(main, ["obfuscate", str(hub), "--faces", str(exports["parquet"]),
                                  "--out", str(out), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["audit", str(out), "--source", str(hub), "--report",
                                  str(tmp_path / "a.html"), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0 and "CLEAN" in result.output, result.output
    result = runner.invoke(main, ["audit", str(hub), "--report", str(tmp_path / "b.html"),
                                  "--workers", "1", "--no-progress"])
    assert result.exit_code == 1 and "NOT CLEAN" in result.output  # the input has faces
    assert "data:image" in (tmp_path / "b.html").read_text()  # crops of the rows
    loaded = datasets.load_dataset("parquet", data_dir=str(out),
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].features == FEATURES and loaded["validation"].num_rows == 2


def test_column_flags_apply_to_huggingface_datasets_only(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    result = CliRunner().invoke(main, ["detect", str(tmp_path), "--image-column", "img"])
    assert result.exit_code == 2 and "only a Hugging Face dataset has columns" in result.output


def test_the_study_reads_train_and_validation_with_class_labels(hub: Path,
                                                                photos: list[Photo]) -> None:
    pytest.importorskip("torch")
    from veil.study.data import (
        decode_images,
        face_boxes,
        face_rows,
        make_condition,
        open_study_data,
    )

    data = open_study_data(hub)
    assert data.classes == sorted(CLASSES) and len(data.train) == 6 and len(data.val) == 2
    assert data.val.keys[0].startswith("validation/")
    assert data.train.labels.tolist() == [sorted(CLASSES).index(CLASSES[p.label])
                                          for p in photos[:6]]
    boxes = face_boxes(load_faces({k: [Box(*b) for b in p.boxes]
                                   for k, p in _by_key(hub, photos).items()}))
    rows = face_rows(data, boxes)
    assert [(r["width"], r["height"]) for r in rows[:2]] == [
        Image.open(p.path).size for p in photos[:2]]
    original = decode_images(data.train, [0, 1], boxes, make_condition("original"), 32)
    blurred = decode_images(data.train, [0, 1], boxes, make_condition("blur"), 32)
    assert not np.array_equal(original[0], blurred[0])  # a crowd: faces blurred
    assert np.array_equal(original[1], blurred[1])  # a church: no faces


def test_transfer_reads_a_hub_dataset_as_a_downstream_task(photos: list[Photo],
                                                           tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from veil.transfer.tasks import open_task

    hub = write_hub(tmp_path, {"train": _table(photos[:6]), "test": _table(photos[6:])},
                    {"train": 1, "test": 1})
    task = open_task("cifar10", hub)
    assert task.classes == sorted(CLASSES) and len(task.train) == 6 and len(task.test) == 2
    assert task.train.images.image(0).size == Image.open(photos[0].path).size
    first = task.train.fingerprint()
    assert open_task("cifar10", hub).train.fingerprint() == first


@pytest.mark.slow
def test_veil_study_trains_and_evaluates_on_a_hub_dataset(hub: Path, photos: list[Photo],
                                                          tmp_path: Path) -> None:
    pytest.importorskip("torch")
    faces = _faces_file(tmp_path / "faces.json", _by_key(hub, photos))
    out = tmp_path / "study"
    result = CliRunner().invoke(main, [
        "study", "--data", str(hub), "--image-column", "image", "--label-column", "label",
        "--faces", str(faces), "--methods", "blur", "--archs", "resnet18", "--epochs", "1",
        "--img-size", "24", "--batch-size", "4", "--out", str(out), "--workers", "1",
        "--threads", "1", "--parallel", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    study = json.loads((out / "study.json").read_text())
    assert [c["wnid"] for c in study["classes"]] == sorted(CLASSES)
    rows = pq.read_table(out / "faces.parquet").to_pylist()
    assert {r["split"] for r in rows} == {"train", "val"}
    assert sum(r["n_faces"] > 0 for r in rows) == sum(bool(p.boxes) for p in photos)
