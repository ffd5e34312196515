"""WebDataset tar shards in and out: keys, labels, byte-exact mirroring, faces in the JSON.

The input shards are written with the ``webdataset`` library itself and the output is
read back with it, so what veil writes is what WebDataset users load.
"""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

wds_lib = pytest.importorskip("webdataset")

from veil.boxes import Box  # noqa: E402
from veil.cli import main  # noqa: E402
from veil.datasets import open_dataset  # noqa: E402
from veil.errors import DatasetError, VeilError  # noqa: E402
from veil.faces import load_faces  # noqa: E402
from veil.gallery import write_gallery  # noqa: E402
from veil.stages import obfuscate as obfuscate_stage  # noqa: E402
from veil.stages.obfuscate import obfuscate_dataset  # noqa: E402
from veil.store import FaceStore  # noqa: E402
from veil.wds import split_key  # noqa: E402

ASTRONAUT_FACE = Box(180.0, 55.0, 272.0, 180.0, 0.9, "test")
HOPPER_FACE = Box(180.0, 70.0, 340.0, 280.0, 0.8, "test")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    write_gallery(folder)
    return folder


def _write_shards(gallery: Path, folder: Path) -> Path:
    """Two shards: faces, faceless images with and without metadata, a sample with two
    images, one with no image at all, a JSON that is not an object, a member in a
    sub-folder, labels in cls and in json."""
    def photo(name: str) -> bytes:
        return (gallery / name).read_bytes()

    folder.mkdir(parents=True, exist_ok=True)
    with wds_lib.TarWriter(str(folder / "shard-000000.tar")) as sink:
        sink.write({"__key__": "a", "png": photo("astronaut.png"), "cls": b"7",
                    "txt": b"an astronaut"})
        sink.write({"__key__": "b", "jpg": photo("grace_hopper.jpg"),
                    "json": json.dumps({"label": "admiral", "url": "x"}).encode()})
        sink.write({"__key__": "c", "png": photo("coffee.png"), "cls": b"3"})
        sink.write({"__key__": "readme", "txt": b"no image in this sample"})
    with wds_lib.TarWriter(str(folder / "shard-000001.tar")) as sink:
        sink.write({"__key__": "d", "jpg": photo("china.jpg"), "seg.png": photo("camera.png"),
                    "json": b"[1, 2, 3]"})
        sink.write({"__key__": "sub/e", "png": photo("chelsea.png"), "cls": b"1"})
    return folder


@pytest.fixture
def shards(gallery: Path, tmp_path: Path) -> Path:
    return _write_shards(gallery, tmp_path / "shards")


FACES = {
    "shard-000000.tar/a.png": [ASTRONAUT_FACE],
    "shard-000000.tar/b.jpg": [HOPPER_FACE],
    "shard-000000.tar/c.png": [],
    "shard-000001.tar/d.jpg": [],
    "shard-000001.tar/d.seg.png": [],
    "shard-000001.tar/sub/e.png": [],
}


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".veil" not in p.parts}


# -- reading ------------------------------------------------------------------------------------


def test_keys_labels_and_bytes(shards: Path) -> None:
    dataset = open_dataset(shards)
    assert dataset.layout == "webdataset"
    assert dataset.root == shards
    assert dataset.keys() == sorted(FACES)
    labels = {e.key: e.label for e in dataset}
    assert labels["shard-000000.tar/a.png"] == "7"  # from cls
    assert labels["shard-000000.tar/b.jpg"] == "admiral"  # from the json's label field
    assert labels["shard-000001.tar/d.jpg"] is None  # its json is not an object
    assert labels["shard-000001.tar/sub/e.png"] == "1"

    members = dict(_members(shards / "shard-000001.tar"))
    reader = pickle.loads(pickle.dumps(dataset.reader()))  # as a worker receives it
    assert reader.read("shard-000001.tar/sub/e.png") == members["sub/e.png"]
    assert reader.read("shard-000001.tar/d.seg.png") == members["d.seg.png"]
    with pytest.raises(FileNotFoundError, match=r"no member 'nothing\.png' in .*shard-000001\.tar"):
        reader.read("shard-000001.tar/nothing.png")
    assert split_key("shard-000001.tar/sub/e.png") == ("shard-000001.tar", "sub/e.png")
    assert [len(g) for g in dataset.groups()] == [3, 3]


def test_shards_by_pattern_file_and_root(shards: Path) -> None:
    pattern = open_dataset(str(shards / "shard-{000000..000001}.tar"))
    assert pattern.keys() == open_dataset(shards).keys()
    single = open_dataset(shards / "shard-000001.tar")
    assert single.keys() == [k for k in FACES if k.startswith("shard-000001")]
    rooted = open_dataset(shards / "shard-000001.tar", root=shards.parent)
    assert rooted.keys()[0] == "shards/shard-000001.tar/d.jpg"
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(str(shards / "shard-{000000..000002}.tar"))
    (shards / "old.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match="compressed"):
        open_dataset(shards / "old.tar.gz", layout="webdataset")


# -- writing ------------------------------------------------------------------------------------


def _obfuscate(shards: Path, out: Path, faces: dict[str, list[Box]] | None = None,
               **kwargs: Any) -> Any:
    return obfuscate_dataset(open_dataset(shards), load_faces(faces or FACES), out,
                             workers=1, progress=False, **kwargs)


def test_obfuscated_shards_mirror_the_input(shards: Path, tmp_path: Path) -> None:
    summary = _obfuscate(shards, tmp_path / "out")
    assert summary.ok and summary.counts["obfuscated"] == 2 and summary.counts["copied"] == 4
    # The same images written as files: what each image member must hold.
    assert _obfuscate(shards, tmp_path / "files", out_format="files").ok
    files = _bytes_of(tmp_path / "files")

    for shard in ("shard-000000.tar", "shard-000001.tar"):
        source = _members(shards / shard)
        output = _members(tmp_path / "out" / shard)
        source_names = [name for name, _ in source]
        names = [name for name, _ in output]
        # Same members, same order; a sample without a json gets one, after its members.
        assert [n for n in names if n in source_names] == source_names
        assert sorted(set(names) - set(source_names)) == (
            ["a.json", "c.json"] if shard.endswith("0.tar") else ["sub/e.json"])
        written = dict(output)
        for name, data in source:
            key = f"{shard}/{name}"
            if key in FACES:
                assert written[name] == files[key]  # as the folder output
            elif not name.endswith(".json"):
                assert written[name] == data  # cls, txt: byte for byte
    out0 = dict(_members(tmp_path / "out" / "shard-000000.tar"))
    src0 = dict(_members(shards / "shard-000000.tar"))
    assert out0["a.png"] != src0["a.png"] and out0["b.jpg"] != src0["b.jpg"]  # obfuscated
    assert out0["c.png"] == src0["c.png"]  # faceless, no metadata: the very bytes
    assert out0["readme.txt"] == src0["readme.txt"]  # an image-less sample, as it was

    # The faces travel in each sample's json; its own fields stay.
    meta = json.loads(out0["b.json"])
    assert meta["label"] == "admiral" and meta["url"] == "x"
    assert meta["faces"]["method"] == "blur"
    assert meta["faces"]["boxes"] == {"jpg": [HOPPER_FACE.to_dict()]}
    assert json.loads(out0["c.json"]) == {
        "faces": {"method": "blur", "options": {}, "boxes": {"png": []}}}
    out1 = dict(_members(tmp_path / "out" / "shard-000001.tar"))
    assert out1["d.json"] == b"[1, 2, 3]"  # not an object: left alone
    assert json.loads(out1["sub/e.json"])["faces"]["boxes"] == {"png": []}

    # The webdataset library reads the output, sample for sample.
    loader = wds_lib.WebDataset(
        [str(tmp_path / "out" / s) for s in ("shard-000000.tar", "shard-000001.tar")],
        shardshuffle=False)
    samples = {s["__key__"]: s for s in loader}
    assert sorted(samples) == ["a", "b", "c", "d", "readme", "sub/e"]
    assert set(samples["d"]) >= {"jpg", "seg.png", "json"}
    # And veil reads it back under the same keys (what `veil audit OUT` checks).
    assert open_dataset(tmp_path / "out").keys() == sorted(FACES)


def test_png_output_renames_members_and_records_the_new_field(shards: Path,
                                                              tmp_path: Path) -> None:
    assert _obfuscate(shards, tmp_path / "out", fmt="png").ok
    names = [n for n, _ in _members(tmp_path / "out" / "shard-000000.tar")]
    assert "b.png" in names and "b.jpg" not in names
    meta = json.loads(dict(_members(tmp_path / "out" / "shard-000000.tar"))["b.json"])
    assert list(meta["faces"]["boxes"]) == ["png"]


def test_broken_unannotated_and_left_out_images(shards: Path, gallery: Path,
                                                tmp_path: Path) -> None:
    with wds_lib.TarWriter(str(shards / "shard-000002.tar")) as sink:
        sink.write({"__key__": "f", "jpg": b"\xff\xd8\xff\xe0 not a jpeg", "cls": b"0"})
        sink.write({"__key__": "g", "png": (gallery / "camera.png").read_bytes()})
    faces = {**FACES, "shard-000002.tar/f.jpg": [ASTRONAUT_FACE]}  # g is unannotated
    summary = _obfuscate(shards, tmp_path / "out", faces=faces, unannotated="copy")
    assert [key for key, _ in summary.errors] == ["shard-000002.tar/f.jpg"]
    members = dict(_members(tmp_path / "out" / "shard-000002.tar"))
    assert sorted(members) == ["g.json", "g.png"]  # the broken sample is left out whole
    assert json.loads(members["g.json"])["faces"]["boxes"] == {"png": None}  # unknown

    subset = open_dataset(shards).subset(keys={"shard-000000.tar/c.png"})
    obfuscate_dataset(subset, load_faces(FACES), tmp_path / "subset", workers=1,
                      progress=False)
    assert sorted(n for n, _ in _members(tmp_path / "subset" / "shard-000000.tar")) == [
        "c.cls", "c.json", "c.png", "readme.txt"]  # images not in the run are not written


def test_settings_that_do_not_fit_are_refused(shards: Path, gallery: Path,
                                              tmp_path: Path) -> None:
    with pytest.raises(VeilError, match="hard-links"):
        _obfuscate(shards, tmp_path / "a", link=True)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.png").write_bytes((gallery / "coffee.png").read_bytes())
    with pytest.raises(VeilError, match="WebDataset"):
        obfuscate_dataset(open_dataset(folder), load_faces({"x.png": []}), tmp_path / "b",
                          out_format="webdataset", progress=False)


def test_an_interrupted_run_resumes_shard_by_shard_to_identical_bytes(
        shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _obfuscate(shards, tmp_path / "full")
    expected = _bytes_of(tmp_path / "full")

    original = obfuscate_stage.ShardObfuscateTask._sample
    calls = {"n": 0}

    def fail_in_the_second_shard(self, archive, shard, *args):  # type: ignore[no-untyped-def]
        if shard == "shard-000001.tar":
            calls["n"] += 1
            raise KeyboardInterrupt  # killed in the middle of writing the shard
        return original(self, archive, shard, *args)

    monkeypatch.setattr(obfuscate_stage.ShardObfuscateTask, "_sample", fail_in_the_second_shard)
    first = _obfuscate(shards, tmp_path / "out")
    assert first.interrupted and calls["n"] == 1
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["shard-000000.tar"]  # no torn shard, no temp file (the ledger is beside)
    monkeypatch.setattr(obfuscate_stage.ShardObfuscateTask, "_sample", original)

    second = _obfuscate(shards, tmp_path / "out")
    assert second.ok and second.resumed_shards == 1
    assert _bytes_of(tmp_path / "out") == expected


# -- the CLI, every stage -----------------------------------------------------------------------


def test_detect_obfuscate_audit_on_shards(shards: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    store = tmp_path / "faces.sqlite"
    pattern = str(shards / "shard-{000000..000001}.tar")
    result = runner.invoke(main, ["detect", pattern, "--store", str(store), "--workers", "1",
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    with FaceStore(store) as faces:
        boxes = faces.current_boxes()
        assert faces.image("shard-000000.tar/a.png").label == "7"
    assert sorted(boxes) == sorted(FACES)
    assert boxes["shard-000000.tar/a.png"] and boxes["shard-000000.tar/b.jpg"]  # the faces

    out = tmp_path / "out"
    result = runner.invoke(main, ["obfuscate", pattern, "--faces", str(store), "--out",
                                  str(out), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    meta = json.loads(dict(_members(out / "shard-000000.tar"))["a.json"])
    assert len(meta["faces"]["boxes"]["png"]) == len(boxes["shard-000000.tar/a.png"])

    result = runner.invoke(main, ["audit", str(out), "--source", pattern, "--report",
                                  str(tmp_path / "a.html"), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output  # clean: the faces were found and hidden
    assert "CLEAN" in result.output

    # Auditing the input instead finds the faces, and the report shows their crops.
    result = runner.invoke(main, ["audit", str(shards), "--report", str(tmp_path / "b.html"),
                                  "--workers", "1", "--no-progress"])
    assert result.exit_code == 1 and "NOT CLEAN" in result.output
    assert "data:image" in (tmp_path / "b.html").read_text()

