"""`veil obfuscate`: the mirrored dataset users publish, end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from corpus import insert_jpeg_segment, iptc_app13, jpeg_bytes, marked_image, photo, write_corpus
from PIL import Image
from runs import done_shards

from veil.boxes import Box
from veil.cli import main
from veil.datasets import open_dataset
from veil.faces import load_faces
from veil.images import load_image, probe
from veil.obfuscation import affected_region, blur
from veil.stages.audit import find_ledger, published_ledger, regions_from_ledger
from veil.stages.obfuscate import LEGACY_LEDGER, ledger_path, obfuscate_dataset
from veil.store import FaceStore


def _centre_box(size: tuple[int, int]) -> dict[str, float]:
    w, h = size
    return {"x0": w * 0.3, "y0": h * 0.3, "x1": w * 0.7, "y1": h * 0.7}


def _write_paper(path: Path, faces: dict[str, list[dict[str, float]]]) -> Path:
    path.write_text(json.dumps([{"url": k, "bboxes": v} for k, v in faces.items()]))
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file() and ".veil" not in p.parts
    }


@pytest.fixture
def corpus_dataset(tmp_path: Path):
    """Every odd and broken input in one file-list dataset, with a face in each image."""
    data = tmp_path / "data"
    cases = write_corpus(data)
    listing = data / "list.txt"
    listing.write_text("".join(f"{c.path.name}\n" for c in cases.values()))
    faces = {}
    for case in cases.values():
        size = case.size or (64, 64)
        faces[case.path.name] = [_centre_box(size)]
    faces["rgb.jpg"] = []  # faceless: copied byte for byte
    faces["metadata.jpg"] = []  # faceless with GPS and a thumbnail: stripped losslessly
    faces["café_ñ_日本.jpg"] = [
        {"x0": -10, "y0": -10, "x1": 5, "y1": 5},  # reaches outside the image: clipped
        {"x0": 20, "y0": 10, "x1": 10, "y1": 20},  # inverted: skipped with a warning
        {"x0": math.nan, "y0": 0, "x1": 3, "y1": 3},  # NaN: skipped with a warning
    ]
    faces["not/in/the/dataset.jpg"] = [{"x0": 0, "y0": 0, "x1": 1, "y1": 1}]
    return cases, listing, _write_paper(tmp_path / "faces.json", faces)


def test_broken_inputs_get_clear_errors_and_the_rest_completes(corpus_dataset, tmp_path):
    cases, listing, faces_file = corpus_dataset
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "obfuscate", str(listing), "--faces", str(faces_file), "--out", str(out),
        "--workers", "1", "--no-progress",
    ])
    assert result.exit_code == 1, result.output
    failing = {c.path.name: c.error for c in cases.values() if not c.ok}
    for name, expected in failing.items():
        line = next((ln for ln in result.output.splitlines() if ln.strip().startswith(name)), "")
        assert expected in line, f"{name}: expected {expected!r} in {line!r}"
        assert not (out / name).exists()
    assert "key(s) in the faces source are not images of the dataset" in result.output
    written = _tree(out)
    for case in cases.values():
        if case.ok:
            assert any(k.startswith(case.path.stem) for k in written), case.name
    # nothing half-written: no temp files anywhere
    assert not [p for p in out.rglob("*veil-tmp*")]
    # boxes outside the image are clipped and obfuscate what is inside; bad ones are skipped
    with sqlite3.connect(ledger_path(out)) as db:
        info = dict(db.execute(
            "select i.key, r.info from run_items r join images i on i.id = r.image_id"
        ).fetchall())
    assert json.loads(info["café_ñ_日本.jpg"])["faces"] == 1
    assert "café_ñ_日本.jpg: skipped degenerate box" in result.output
    assert "café_ñ_日本.jpg: skipped box with a non-finite coordinate" in result.output
    counts = dict(ln.split() for ln in result.output.splitlines()
                  if ln.startswith("  ") and len(ln.split()) == 2 and ln.split()[1].isdigit())
    assert counts["errors"] == str(len(failing))
    assert counts["copied"] == "2"
    assert int(counts["obfuscated"]) == sum(c.ok for c in cases.values()) - 2


def test_faceless_images_are_copied_byte_for_byte_or_linked(corpus_dataset, tmp_path):
    cases, listing, faces_file = corpus_dataset
    dataset = open_dataset(listing)
    faces = load_faces(faces_file)
    out = tmp_path / "out"
    obfuscate_dataset(dataset, faces, out, workers=1, progress=False, unannotated="copy")
    assert (out / "rgb.jpg").read_bytes() == cases["rgb_jpeg"].path.read_bytes()
    linked = tmp_path / "linked"
    obfuscate_dataset(dataset, faces, linked, workers=1, progress=False, link=True)
    assert os.path.samefile(linked / "rgb.jpg", cases["rgb_jpeg"].path)


def test_no_identifying_metadata_survives(corpus_dataset, tmp_path):
    cases, listing, faces_file = corpus_dataset
    dataset = open_dataset(listing)
    source = cases["exif_metadata_jpeg"].path
    assert {"gps", "exif-thumbnail"} <= set(probe(source).metadata)
    out = tmp_path / "out"
    faces = load_faces(faces_file)
    obfuscate_dataset(dataset, faces, out, workers=1, progress=False)
    copied = out / "metadata.jpg"
    assert probe(copied).metadata == ()
    assert b"Jane Doe" not in copied.read_bytes()
    # stripped losslessly: the same pixels
    pixels = np.asarray(load_image(copied).image)
    assert np.array_equal(pixels, np.asarray(load_image(source).image))
    # and when the image has a face, the re-encoded output carries none either
    faces.boxes["metadata.jpg"] = [Box(10, 10, 30, 30)]
    out2 = tmp_path / "out2"
    obfuscate_dataset(dataset, faces, out2, workers=1, progress=False)
    assert probe(out2 / "metadata.jpg").metadata == ()
    with Image.open(out2 / "metadata.jpg") as im:
        assert not im.getexif() and "exif" not in im.info


def _faces_dataset(root: Path, n: int, size: int = 256) -> tuple[Path, dict[str, list[Box]]]:
    rng = np.random.default_rng(1)
    faces: dict[str, list[Box]] = {}
    for i in range(n):
        key = f"val/c{i % 3}/img_{i:03d}.jpg"
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(Image.fromarray(photo(size, size, seed=i)), quality=87))
        if i % 4 == 0:
            faces[key] = []
        else:
            x, y = rng.uniform(0, size * 0.7, 2)
            s = rng.uniform(8, size * 0.3)
            faces[key] = [Box(x, y, x + s, y + s * 1.2)]
    return root, faces


def test_png_output_is_the_reference_blur_and_changes_nothing_outside_the_faces(tmp_path):
    root, faces = _faces_dataset(tmp_path / "data", 12)
    dataset = open_dataset(root)
    out = tmp_path / "out"
    summary = obfuscate_dataset(dataset, load_faces(faces), out, fmt="png", workers=1,
                                progress=False)
    assert summary.ok and summary.counts["obfuscated"] == 9
    for key, boxes in faces.items():
        original = np.asarray(load_image(root / key).image)
        written = np.asarray(load_image(out / key.replace(".jpg", ".png")).image)
        if not boxes:
            assert np.array_equal(original, written)
            continue
        expected = np.asarray(blur(Image.fromarray(original), boxes))
        assert np.array_equal(written, expected)
        outside = np.ones(original.shape[:2], bool)
        for x0, y0, x1, y1 in affected_region(original.shape[1::-1], boxes, "blur"):
            outside[y0:y1, x0:x1] = False
        assert np.array_equal(original[outside], written[outside])
        assert not np.array_equal(original, written)


def test_obfuscated_jpegs_keep_the_source_quantisation_tables(tmp_path):
    root, faces = _faces_dataset(tmp_path / "data", 4)
    out = tmp_path / "out"
    obfuscate_dataset(open_dataset(root), load_faces(faces), out, workers=1, progress=False)
    key = next(k for k, b in faces.items() if b)
    with Image.open(root / key) as src, Image.open(out / key) as dst:
        assert dst.quantization == src.quantization


def test_workers_and_settings(tmp_path):
    root, faces = _faces_dataset(tmp_path / "data", 10)
    dataset = open_dataset(root)
    one, two = tmp_path / "one", tmp_path / "two"
    obfuscate_dataset(dataset, load_faces(faces), one, workers=1, shard_size=3, progress=False)
    obfuscate_dataset(dataset, load_faces(faces), two, workers=2, shard_size=3, progress=False)
    assert _tree(one) == _tree(two)
    from veil.errors import VeilError

    with pytest.raises(VeilError, match="already holds output made with other settings"):
        obfuscate_dataset(dataset, load_faces(faces), one, method="overlay", workers=1,
                          progress=False)
    summary = obfuscate_dataset(dataset, load_faces(faces), one, method="overlay", workers=1,
                                progress=False, overwrite=True)
    assert summary.ok


def test_unannotated_images_are_errors_by_default(tmp_path):
    root, faces = _faces_dataset(tmp_path / "data", 6)
    missing = sorted(faces)[0]
    del faces[missing]
    dataset = open_dataset(root)
    summary = obfuscate_dataset(dataset, load_faces(faces), tmp_path / "a", workers=1,
                                progress=False)
    assert [k for k, _ in summary.errors] == [missing]
    assert "no face record" in summary.errors[0][1]
    copied = obfuscate_dataset(dataset, load_faces(faces), tmp_path / "b", workers=1,
                               progress=False, unannotated="copy")
    assert copied.ok and (tmp_path / "b" / missing).exists()


@pytest.mark.slow
def test_killed_run_resumes_to_identical_bytes(tmp_path):
    root, faces_boxes = _faces_dataset(tmp_path / "data", 48, size=640)
    faces_file = _write_paper(tmp_path / "faces.json", {
        k: [b.to_dict() for b in v] for k, v in faces_boxes.items()})
    command = [sys.executable, "-m", "veil", "obfuscate", str(root), "--faces", str(faces_file),
               "--shard-size", "2", "--workers", "1", "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run([*command, "--out", str(reference)], check=True, capture_output=True)

    out = tmp_path / "out"
    process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    ledger = ledger_path(out)
    deadline = time.monotonic() + 60
    while done_shards(ledger) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = done_shards(ledger)
    assert 4 <= done < 24, f"the kill came too late to test a resume ({done} shards done)"
    assert _tree(out) != _tree(reference)

    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert _tree(out) == _tree(reference)
    assert not [p for p in out.rglob("*veil-tmp*")]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                    reason="reads fsynced paths from /proc/self/fd")
def test_each_shard_fsyncs_its_files_and_folders_and_never_the_whole_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability without os.sync: what a shard wrote (every output, its folder, the
    folders up to OUT) is fsynced before the shard is recorded as done."""
    root, faces = _faces_dataset(tmp_path / "data", 12)
    out = tmp_path / "out"
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def machine_wide() -> None:
        raise AssertionError("os.sync flushes every process's buffers")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "sync", machine_wide)
    summary = obfuscate_dataset(open_dataset(root), load_faces(faces), out, workers=1,
                                shard_size=5, progress=False)
    assert summary.ok
    outputs = {str(out / key) for key in faces}
    assert outputs <= set(synced)  # each output file (faced, re-encoded or copied)
    folders = {str(out / "val" / f"c{i}") for i in range(3)} | {str(out / "val"), str(out)}
    assert folders <= set(synced)
    last = {path: position for position, path in enumerate(synced)}
    for path in outputs:  # a folder is synced after the files it holds
        assert last[str(Path(path).parent)] > synced.index(path)


def test_small_jobs_obfuscate_in_one_local_worker_unless_told_otherwise() -> None:
    """A pool starts in ~1.5 s, longer than a core takes for a few thousand images."""
    from veil.stages.obfuscate import IMAGES_PER_LOCAL_WORKER, default_obfuscate_workers

    class Cores:
        def __init__(self, name: str, cores: int) -> None:
            self.name, self.cores = name, cores

        def default_workers(self) -> int:
            return self.cores

    local = Cores("local", 8)
    assert default_obfuscate_workers(local, 571) == 1
    assert default_obfuscate_workers(local, 2 * IMAGES_PER_LOCAL_WORKER) == 2
    assert default_obfuscate_workers(local, 10**7) == 8
    assert default_obfuscate_workers(Cores("local", 1), 10**7) == 1
    assert default_obfuscate_workers(Cores("ray", 8), 571) == 8  # a cluster was asked for


def test_the_ledger_is_kept_beside_the_published_folder_not_in_it(tmp_path):
    """It records the host name and absolute paths: publishing OUT must not publish it."""
    root, boxes = _faces_dataset(tmp_path / "data", 3, size=64)
    faces_file = _write_paper(tmp_path / "faces.json", {
        k: [b.to_dict() for b in v] for k, v in boxes.items()})
    out = tmp_path / "published"
    args = ["obfuscate", str(root), "--faces", str(faces_file), "--workers", "1",
            "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / ".veil").exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file()) == sorted(boxes)
    beside = tmp_path / "published.veil-ledger.sqlite"
    assert ledger_path(out) == beside and beside.is_file()
    assert find_ledger(out) == beside
    assert set(regions_from_ledger(out)) == set(boxes)  # audit reads it from there
    other = CliRunner().invoke(main, [*args, "--out", str(out), "--method", "overlay"])
    assert other.exit_code != 0  # the ledger beside OUT still guards OUT
    assert "already holds output made with other settings" in other.output
    shutil.rmtree(out)  # deleting OUT is starting over: its ledger beside is not in the way
    fresh = CliRunner().invoke(main, [*args, "--out", str(out), "--method", "overlay"])
    assert fresh.exit_code == 0, fresh.output

    chosen = tmp_path / "records" / "run.sqlite"
    elsewhere = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"),
                                          "--ledger", str(chosen)])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert chosen.is_file() and not (tmp_path / "b.veil-ledger.sqlite").exists()
    assert regions_from_ledger(tmp_path / "b") is None
    assert set(regions_from_ledger(tmp_path / "b", chosen)) == set(boxes)

    inside = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "c"),
                                       "--ledger", str(tmp_path / "c" / "ledger.sqlite")])
    assert inside.exit_code != 0
    assert "must not be inside the output folder" in inside.output


def test_an_older_veils_ledger_inside_is_flagged_and_moved_out(tmp_path):
    root, boxes = _faces_dataset(tmp_path / "data", 3, size=64)
    faces = load_faces(str(_write_paper(tmp_path / "faces.json", {
        k: [b.to_dict() for b in v] for k, v in boxes.items()})))
    out = tmp_path / "out"
    obfuscate_dataset(open_dataset(root), faces, out, workers=1, progress=False)
    legacy = out / LEGACY_LEDGER
    legacy.parent.mkdir()
    os.replace(ledger_path(out), legacy)  # as veil before issue 14 left it
    assert find_ledger(out) == legacy and published_ledger(out) == legacy
    assert set(regions_from_ledger(out)) == set(boxes)
    summary = obfuscate_dataset(open_dataset(root), faces, out, workers=1, progress=False)
    assert summary.ok
    assert not (out / ".veil").exists() and ledger_path(out).is_file()
    assert published_ledger(out) is None
    with FaceStore(ledger_path(out), create=False) as ledger:
        assert len(ledger.runs("obfuscate")) == 2  # the old run came along with its file


def test_a_small_job_does_not_load_the_compiled_blur(tmp_path, fresh_python):
    """numba's import and dispatcher cost most of a second per process, which a job with
    few faced images never wins back: it blurs with the Pillow passes (same pixels)."""
    root, boxes = _faces_dataset(tmp_path / "data", 2, size=64)
    faces_file = _write_paper(tmp_path / "faces.json", {
        k: [b.to_dict() for b in v] for k, v in boxes.items()})
    script = (
        "import sys\n"
        "from veil.datasets import open_dataset\n"
        "from veil.faces import load_faces\n"
        "from veil.stages.obfuscate import obfuscate_dataset\n"
        f"s = obfuscate_dataset(open_dataset({str(root)!r}), load_faces({str(faces_file)!r}),"
        f" {str(tmp_path / 'out')!r}, workers=1, progress=False)\n"
        "assert s.ok and s.counts['obfuscated'] >= 1, s\n"
        "print('numba' in sys.modules)\n")
    assert fresh_python(script) == "False"


def test_faceless_jpegs_with_comments_iptc_or_xmp_are_cleaned_losslessly(tmp_path):
    """The marker-walk path for faceless JPEGs (no Pillow parse): comment, IPTC and XMP
    are dropped, the scan bytes and the orientation (XMP's, too) stay."""
    plain = jpeg_bytes(marked_image(), quality=90)
    xmp_rotated = (b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description "
                   b'tiff:Orientation="6" dc:creator="Jane Doe"/></x:xmpmeta>')
    sources = {
        "comment.jpg": insert_jpeg_segment(plain, 0xFE, b"shot by Jane Doe"),
        "iptc.jpg": insert_jpeg_segment(plain, 0xED, iptc_app13(b"Jane Doe")),
        "xmp.jpg": insert_jpeg_segment(plain, 0xE1, xmp_rotated),
    }
    data = tmp_path / "data"
    data.mkdir()
    for name, raw in sources.items():
        (data / name).write_bytes(raw)
        assert probe(raw).metadata, name
    faces = _write_paper(tmp_path / "faces.json", {name: [] for name in sources})
    out = tmp_path / "out"
    summary = obfuscate_dataset(open_dataset(data), load_faces(faces), out, workers=1,
                                progress=False)
    assert summary.ok and summary.counts["copied"] == 3
    for name, raw in sources.items():
        result = (out / name).read_bytes()
        assert b"Jane Doe" not in result and probe(result).metadata == (), name
        assert result.endswith(plain[plain.index(b"\xff\xda"):]), name  # the scan, as it was
        assert probe(result).orientation == probe(raw).orientation, name
    assert probe(out / "xmp.jpg").orientation == 6
