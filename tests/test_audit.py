"""`veil audit`: outputs made to leak are caught; a clean output passes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus import identifying_exif, jpeg_bytes
from PIL import Image

from veil.cli import main
from veil.faces import load_faces
from veil.gallery import write_gallery
from veil.obfuscation import obfuscate


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gallery = tmp_path_factory.mktemp("gallery")
    write_gallery(gallery)
    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut.png", "grace_hopper.jpg", "coffee.png"):
        shutil.copy(gallery / name, root / name)
    # a faceless-looking photo carrying GPS and an EXIF thumbnail
    with Image.open(gallery / "rocket.jpg") as rocket:
        (root / "rocket.jpg").write_bytes(jpeg_bytes(rocket.convert("RGB"),
                                                     exif=identifying_exif()))
    return root


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--workers", "1", "--no-progress"])
    return result.exit_code, result.output


def test_clean_output_passes_and_leaks_are_caught(photos: Path, tmp_path: Path) -> None:
    store = tmp_path / "faces.sqlite"
    code, out = _run("detect", str(photos), "--store", str(store))
    assert code == 0, out
    blurred = tmp_path / "blurred"
    code, out = _run("obfuscate", str(photos), "--faces", str(store), "--out", str(blurred))
    assert code == 0, out
    report = tmp_path / "clean.html"
    code, out = _run("audit", str(blurred), "--source", str(photos), "--report", str(report),
                     "--json", str(tmp_path / "clean.json"))
    assert code == 0, out
    assert "CLEAN" in out and "NOT CLEAN" not in out
    code, out = _run("audit", str(blurred), "--source", str(photos), "--profile", "fast",
                     "--report", str(report))
    assert code == 0 and "profile fast" in out, out
    clean = json.loads((tmp_path / "clean.json").read_text())
    assert clean["clean"] is True and clean["verdict"] == "clean"
    faced = [i for i in clean["images"] if i["regions"]]
    assert {i["key"] for i in faced} == {"astronaut.png", "grace_hopper.jpg"}
    assert all(any(v.startswith("pixels: 1 face region(s) hidden as blur") for v in i["verified"])
               for i in faced), faced
    # Without the source the face regions cannot be verified: not called clean.
    code, out = _run("audit", str(blurred), "--report", str(report), "--json",
                     str(tmp_path / "blind.json"))
    assert code == 1 and "NOT VERIFIED" in out and "no --source" in out, out
    blind = json.loads((tmp_path / "blind.json").read_text())
    assert blind["clean"] is False and blind["findings"] == []
    assert "Not verified" in report.read_text()

    # A face the boxes missed: the astronaut is copied unobfuscated.
    faces = {"astronaut.png": [], "grace_hopper.jpg": [], "coffee.png": [], "rocket.jpg": []}
    missed = tmp_path / "missed.json"
    missed.write_text(json.dumps([{"url": k, "bboxes": v} for k, v in faces.items()]))
    leaky = tmp_path / "leaky"
    code, out = _run("obfuscate", str(photos), "--faces", str(missed), "--out", str(leaky),
                     "--keep-metadata")
    assert code == 0, out
    report = tmp_path / "leaky.html"
    code, out = _run("audit", str(leaky), "--report", str(report), "--json",
                     str(tmp_path / "leaky.json"))
    assert code == 1, out
    assert "NOT CLEAN" in out
    found = json.loads((tmp_path / "leaky.json").read_text())
    faces_found = {f["key"] for f in found["findings"] if f["kind"] == "face"}
    assert {"astronaut.png", "grace_hopper.jpg"} <= faces_found
    metadata = {(f["key"], f["detail"].split(":")[0]) for f in found["findings"]
                if f["kind"] == "metadata"}
    assert {("rocket.jpg", "exif-thumbnail"), ("rocket.jpg", "gps")} <= metadata
    html = report.read_text()
    assert html.count("data:image/jpeg;base64,") >= 2  # a crop per residual face
    assert "rocket.jpg" in html


def test_faces_option_for_outputs_made_elsewhere(photos: Path, tmp_path: Path) -> None:
    """Without a veil ledger every detection counts, unless --faces says where faces were;
    then --source and --method let the face regions be judged, and a face left as it
    was is a finding even though it is inside the regions."""
    source = tmp_path / "source"
    source.mkdir()
    with Image.open(photos / "astronaut.png") as image:  # pixels only: no PNG text chunks
        image.save(source / "astronaut.png")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(source, elsewhere)
    code, out = _run("audit", str(elsewhere), "--report", str(tmp_path / "a.html"))
    assert code == 1 and "every detected face will be reported" in out
    store = tmp_path / "faces.sqlite"
    _run("detect", str(elsewhere), "--store", str(store))
    code, out = _run("audit", str(elsewhere), "--faces", str(store), "--report",
                     str(tmp_path / "b.html"))
    assert code == 1 and "could not be verified (no --source)" in out, out
    code, out = _run("audit", str(elsewhere), "--faces", str(store), "--source", str(source),
                     "--method", "blur", "--report", str(tmp_path / "c.html"))
    assert code == 1 and "face region not hidden as blur hides it" in out, out
    faces = load_faces(str(store)).boxes["astronaut.png"]
    with Image.open(source / "astronaut.png") as image:  # blurred by another tool
        obfuscate(image.convert("RGB"), faces, "blur").save(elsewhere / "astronaut.png")
    code, out = _run("audit", str(elsewhere), "--faces", str(store), "--source", str(source),
                     "--report", str(tmp_path / "d.html"))
    assert code == 1 and "NOT VERIFIED" in out and "pass --method" in out, out
    code, out = _run("audit", str(elsewhere), "--faces", str(store), "--source", str(source),
                     "--method", "blur", "--report", str(tmp_path / "e.html"))
    assert code == 0 and "CLEAN" in out, out
    code, out = _run("audit", str(elsewhere), "-o", "color=0,0,0", "--report",
                     str(tmp_path / "f.html"))
    assert code == 2 and "-o/--option needs --method" in out


def test_the_ledger_is_found_beside_the_output_and_flagged_inside_it(photos: Path,
                                                                     tmp_path: Path) -> None:
    """The obfuscate ledger names the host and absolute paths: audit reads it from beside
    the folder (or --ledger) and reports one left inside the folder as a finding."""
    store = tmp_path / "faces.sqlite"
    assert _run("detect", str(photos), "--store", str(store))[0] == 0
    blurred = tmp_path / "blurred"
    ledger = tmp_path / "records" / "blurred.sqlite"
    code, out = _run("obfuscate", str(photos), "--faces", str(store), "--out", str(blurred),
                     "--ledger", str(ledger))
    assert code == 0, out
    code, out = _run("audit", str(blurred), "--ledger", str(ledger), "--source", str(photos),
                     "--report", str(tmp_path / "a.html"))
    assert code == 0 and "CLEAN" in out, out
    code, out = _run("audit", str(blurred), "--ledger", str(tmp_path / "none.sqlite"),
                     "--report", str(tmp_path / "b.html"))
    assert code == 2 and "no finished obfuscate run there" in out

    (blurred / ".veil").mkdir()
    shutil.move(ledger, blurred / ".veil" / "ledger.sqlite")  # where veil once kept it
    code, out = _run("audit", str(blurred), "--source", str(photos), "--report",
                     str(tmp_path / "c.html"), "--json", str(tmp_path / "c.json"))
    assert code == 1 and "NOT CLEAN" in out, out
    found = json.loads((tmp_path / "c.json").read_text())["findings"]
    assert [f["key"] for f in found] == [".veil/ledger.sqlite"]
    assert "host name and absolute paths" in found[0]["detail"]
