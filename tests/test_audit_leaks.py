"""Planted leaks (issue 18, point 6): every leak planted in an obfuscated output is caught,
and the untouched outputs of the same run raise no false alarm.

A small corpus of faced crops of the gallery's photographs (real faces, boxes from veil's
own detector) and faceless synthetic photos is obfuscated by veil in each layout, then
leaks are planted in the output as a release manager might find them: restored
originals, a radius-1 Gaussian blur, a fill that misses part of a box, a file swapped
with another faced original, a truncated file, and EXIF (GPS, thumbnail), XMP and PNG
text metadata. A layout is a small adapter (:class:`Layout`): a folder, WebDataset tar
shards and a Hugging Face Parquet shard; another is one more entry in ``LAYOUTS``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from corpus import XMP, identifying_exif, insert_jpeg_segment, jpeg_bytes, photo, png_bytes
from PIL import Image, ImageFilter, PngImagePlugin

import veil
from veil.boxes import Box
from veil.gallery import write_gallery
from veil.stages.audit_ledger import read_ledger

# -- layouts ------------------------------------------------------------------------------------


class Layout:
    """How a dataset of named files is stored, and how a planted file replaces one."""

    name = "folder"

    def key(self, name: str) -> str:
        return name

    def write(self, folder: Path, files: dict[str, bytes]) -> Path:
        """Write ``files`` (name -> bytes) as a dataset; return what ``open_dataset`` takes."""
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder

    def read(self, out: Path) -> dict[str, bytes]:
        """The output's images by key."""
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file()}

    def plant(self, out: Path, changes: dict[str, bytes]) -> None:
        for key, data in changes.items():
            (out / key).write_bytes(data)


class WebDatasetLayout(Layout):
    name = "webdataset"
    shard = "shard-000000.tar"

    def key(self, name: str) -> str:
        return f"{self.shard}/{name}"

    def write(self, folder: Path, files: dict[str, bytes]) -> Path:
        folder.mkdir(parents=True)
        with tarfile.open(folder / self.shard, "w") as tar:
            for name, data in files.items():
                _add(tar, name, data)
                _add(tar, name.rsplit(".", 1)[0] + ".cls", b"0")
        return folder

    def read(self, out: Path) -> dict[str, bytes]:
        with tarfile.open(out / self.shard) as tar:
            return {self.key(m.name): tar.extractfile(m).read()  # type: ignore[union-attr]
                    for m in tar.getmembers() if not m.name.endswith((".cls", ".json"))}

    def plant(self, out: Path, changes: dict[str, bytes]) -> None:
        with tarfile.open(out / self.shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
        with tarfile.open(out / self.shard, "w") as tar:
            for member, data in members:
                data = changes.get(self.key(member.name), data)
                _add(tar, member.name, data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class HuggingFaceLayout(Layout):
    """A Hub-style Parquet shard: one row per file, the image in an Image struct column."""

    name = "huggingface"
    shard = "data/train-00000-of-00001.parquet"

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def key(self, name: str) -> str:
        from veil.hf.layout import Shard

        return Shard("train", self.shard, len(self.rows)).key(self.rows[name])

    def write(self, folder: Path, files: dict[str, bytes]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.rows = {name: i for i, name in enumerate(files)}
        (folder / self.shard).parent.mkdir(parents=True)
        table = pa.table({"image": [{"bytes": data, "path": name} for name, data in
                                    files.items()], "name": list(files)})
        pq.write_table(table, folder / self.shard)
        return folder

    def read(self, out: Path) -> dict[str, bytes]:
        import pyarrow.parquet as pq

        table = pq.read_table(out / self.shard).to_pylist()
        return {self.key(row["name"]): row["image"]["bytes"] for row in table}

    def plant(self, out: Path, changes: dict[str, bytes]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(out / self.shard)
        rows = table.to_pylist()
        for row in rows:
            key = self.key(row["name"])
            if key in changes:
                row["image"] = {"bytes": changes[key], "path": row["image"]["path"]}
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / self.shard)


LAYOUTS = [Layout(), WebDatasetLayout(), HuggingFaceLayout()]

# -- the corpus ---------------------------------------------------------------------------------

# (name, gallery photo, crop box, mirrored): faced crops around the photos' faces
FACED = [
    ("a.jpg", "astronaut.png", (120, 10, 330, 230), False),
    ("b.jpg", "grace_hopper.jpg", (130, 90, 400, 370), False),
    ("c.jpg", "camera.png", (140, 60, 320, 250), False),
    ("d.png", "lfw_montage.png", (64, 192, 256, 320), False),
    ("e.jpg", "astronaut.png", (120, 10, 330, 230), True),
    ("f.jpg", "grace_hopper.jpg", (130, 90, 400, 370), True),
]
FACELESS = ["g.jpg", "h.jpg", "i.png", "j.jpg", "k.png", "l.jpg"]
FACED_NAMES = {name for name, *_ in FACED}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes],
                                                               dict[str, list[Box]]]:
    """The source files by name, and their faces as veil's detector finds them."""
    gallery = tmp_path_factory.mktemp("gallery")
    write_gallery(gallery)
    files: dict[str, bytes] = {}
    for name, photo_name, crop, mirrored in FACED:
        with Image.open(gallery / photo_name) as im:
            image = im.convert("RGB").crop(crop)
        if mirrored:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        files[name] = (png_bytes(image) if name.endswith(".png")
                       else jpeg_bytes(image, quality=90))
    for seed, name in enumerate(FACELESS):
        image = Image.fromarray(photo(160, 120, seed=seed))
        files[name] = png_bytes(image) if name.endswith(".png") else jpeg_bytes(image,
                                                                                quality=90)
    folder = tmp_path_factory.mktemp("detect")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with veil.FaceStore(folder.parent / "faces.sqlite") as store:
        veil.detect(veil.open_dataset(folder), store, workers=1, progress=False)
        boxes = store.current_boxes()
    assert all(boxes[name] for name, *_ in FACED), boxes
    assert not any(boxes[name] for name in FACELESS), boxes
    return files, boxes


def _weak_blur(data: bytes, boxes: list[Box]) -> bytes:
    """The faces blurred far too weakly: a Gaussian of radius 1 in each box."""
    with Image.open(io.BytesIO(data)) as im:
        image = im.convert("RGB")
    for box in boxes:
        region = tuple(int(v) for v in box.as_xyxy())
        image.paste(image.crop(region).filter(ImageFilter.GaussianBlur(1)), region[:2])
    return jpeg_bytes(image, quality=90)


def _partial_fill(data: bytes, boxes: list[Box]) -> bytes:
    """An overlay that covers only the left half of each box."""
    with Image.open(io.BytesIO(data)) as im:
        image = im.convert("RGB")
    halves = [Box(b.x0, b.y0, (b.x0 + b.x1) / 2, b.y1) for b in boxes]
    return jpeg_bytes(veil.obfuscate(image, halves, "overlay"), quality=90)


def _with_png_text(data: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    with Image.open(io.BytesIO(data)) as im:
        return png_bytes(im.convert("RGB"), pnginfo=info)


GPS_XMP = XMP.replace(b"<dc:creator>", b'<exif:GPSLatitude xmlns:exif="http://ns.adobe.com/'
                      b'exif/1.0/">48,51.4N</exif:GPSLatitude><dc:creator>')

# planted name -> (how the planted file is made from (sources, outputs, boxes), the
# finding kinds it must raise with the source, a phrase that must be in them)
Plant = Callable[[dict[str, bytes], dict[str, bytes], dict[str, list[Box]]], bytes]
BLUR_PLANTS: dict[str, tuple[Plant, set[str], str]] = {
    "a.jpg": (lambda src, out, b: src["a.jpg"], {"bytes", "pixels"}, "restored"),
    "b.jpg": (lambda src, out, b: _weak_blur(src["b.jpg"], b["b.jpg"]), {"bytes", "pixels"},
              "detail left"),
    "c.jpg": (lambda src, out, b: src["e.jpg"], {"bytes", "pixels"},
              "swapped: the file is the unobfuscated source of {e}"),
    "f.jpg": (lambda src, out, b: out["f.jpg"][: len(out["f.jpg"]) * 6 // 10], {"bytes"},
              "does not decode: truncated JPEG data"),
    "g.jpg": (lambda src, out, b: jpeg_bytes(Image.open(io.BytesIO(out["g.jpg"])),
                                             quality=90, exif=identifying_exif()),
              {"bytes", "metadata"}, "gps: EXIF GPS GPSLatitudeRef"),
    "h.jpg": (lambda src, out, b: insert_jpeg_segment(
        out["h.jpg"], 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + GPS_XMP),
        {"bytes", "metadata"}, "XMP dc:creator (a person)"),
    "i.png": (lambda src, out, b: _with_png_text(out["i.png"]), {"bytes", "metadata"},
              "png-text: PNG tEXt Author"),
}
OVERLAY_PLANTS: dict[str, tuple[Plant, set[str], str]] = {
    "a.jpg": (lambda src, out, b: _partial_fill(src["a.jpg"], b["a.jpg"]),
              {"bytes", "pixels"}, "changed"),
}


# -- the test -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
@pytest.mark.parametrize("method, plants", [("blur", BLUR_PLANTS), ("overlay", OVERLAY_PLANTS)],
                         ids=["blur", "overlay"])
def test_every_planted_leak_is_caught_and_nothing_else(
        layout: Layout, method: str, plants: dict[str, tuple[Plant, set[str], str]],
        corpus: tuple[dict[str, bytes], dict[str, list[Box]]], tmp_path: Path) -> None:
    files, boxes = corpus
    source = veil.open_dataset(layout.write(tmp_path / "source", files))
    faces = veil.load_faces({layout.key(name): found for name, found in boxes.items()})
    out = tmp_path / "out"
    veil.obfuscate_dataset(source, faces, out, method=method, workers=1, progress=False)
    written = layout.read(out)
    sources = {name: files[name] for name in files}
    outputs = {name: written[layout.key(name)] for name in files}
    layout.plant(out, {layout.key(name): make(sources, outputs, boxes)
                       for name, (make, _, _) in plants.items()})

    report = veil.audit(veil.open_dataset(out), source=source, workers=1, progress=False)
    images = {i.key: i for i in report.images}
    assert len(images) == len(files)
    for name, (_, kinds, phrase) in plants.items():
        image = images[layout.key(name)]
        found = {f.kind for f in image.findings}
        text = " | ".join(f.detail for f in image.findings)
        assert kinds <= found, f"{name}: {kinds - found} not found in {text}"
        assert phrase.replace("{e}", layout.key("e.jpg")) in text, \
            f"{name}: {phrase!r} not in {text}"
    false_alarms = [i for i in report.images if i.findings and i.key not in
                    {layout.key(n) for n in plants}]
    assert not false_alarms, [(i.key, [f.detail for f in i.findings]) for i in false_alarms]
    clean = [i for i in report.images if i.key not in {layout.key(n) for n in plants}]
    assert all(i.status == "clean" for i in clean), [(i.key, i.unverified) for i in clean]
    assert report.verdict == "not clean" and not report.clean

    # The report: JSON per image, HTML with source and output crops side by side.
    data = json.loads(report.write_json(tmp_path / "audit.json").read_text())
    assert {i["key"] for i in data["images"]} == set(images)
    assert all(i["verified"] for i in data["images"] if i["status"] == "clean")
    html = report.write_html(tmp_path / "audit.html").read_text()
    located = [f for f in report.findings if f.box is not None]
    assert html.count('alt="source of') >= len(located) > 0

    # Without the source the bytes still give every planted file away; the pixels of the
    # untouched faced images are reported as not verified, never as clean.
    blind = veil.audit(veil.open_dataset(out), workers=1, progress=False)
    for image in blind.images:
        planted = image.key in {layout.key(n) for n in plants}
        assert bool({f.kind for f in image.findings} & {"bytes", "metadata"}) == planted, \
            (image.key, [f.detail for f in image.findings])
        if not planted and image.key.rsplit("/", 1)[-1] in FACED_NAMES:
            assert image.status in ("not verified", "findings")
            assert any("no --source" in u for u in image.unverified)
    assert blind.verdict == "not clean"


def test_the_ledger_records_the_bytes_written(corpus: tuple[dict[str, bytes],
                                                            dict[str, list[Box]]],
                                              tmp_path: Path) -> None:
    """Each record's SHA-256 and size are the output file's, and its source SHA-256 the
    source's: written, copied, stripped, hard-linked and kept-metadata files alike."""
    files, boxes = corpus
    source = veil.open_dataset(Layout().write(tmp_path / "source", {
        **files, "m.jpg": jpeg_bytes(Image.fromarray(photo(64, 48, seed=9)),
                                     exif=identifying_exif())}))
    faces = veil.load_faces({**boxes, "m.jpg": []})
    for flags in ({}, {"link": True}, {"strip_metadata": False}):
        out = tmp_path / f"out-{len(flags)}-{sorted(flags)}"
        veil.obfuscate_dataset(source, faces, out, workers=1, progress=False,
                               **flags)  # type: ignore[arg-type]
        ledger = read_ledger(out)
        assert ledger is not None and set(ledger.records) == set(files) | {"m.jpg"}
        for key, record in ledger.records.items():
            data = (out / key).read_bytes()
            assert record.sha256 == hashlib.sha256(data).hexdigest(), (flags, key)
            assert record.size == len(data)
            assert record.source_sha256 == hashlib.sha256(
                (tmp_path / "source" / record.source_key).read_bytes()).hexdigest()
            assert (record.boxes is not None) and (bool(record.boxes) == bool(boxes.get(key)))
        stripped = ledger.records["m.jpg"]
        assert stripped.stripped == flags.get("strip_metadata", True)
        assert (stripped.sha256 == stripped.source_sha256) != stripped.stripped


def test_pixel_checks_need_the_method(tmp_path: Path, corpus: tuple[dict[str, bytes],
                                                                  dict[str, list[Box]]]
                                      ) -> None:
    """An output made elsewhere (no ledger): with --faces and --source the pixels are
    judged only when the method is given; a correct one is clean, an unchanged face not."""
    files, boxes = corpus
    source = veil.open_dataset(Layout().write(tmp_path / "source", {"a.jpg": files["a.jpg"]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with Image.open(io.BytesIO(files["a.jpg"])) as im:
        blurred = veil.obfuscate(im.convert("RGB"), boxes["a.jpg"], "blur")
    blurred.save(elsewhere / "a.png")  # converted to PNG by another tool
    regions = {"a.png": [b.as_xyxy() for b in boxes["a.jpg"]]}
    kwargs = {"workers": 1, "progress": False, "source": source}
    unknown = veil.audit(veil.open_dataset(elsewhere), dict(regions), **kwargs)
    assert unknown.verdict in ("not verified", "not clean")
    assert any("method is unknown" in u for i in unknown.images for u in i.unverified)
    judged = veil.audit(veil.open_dataset(elsewhere), dict(regions), method="blur", **kwargs)
    assert not [f for f in judged.findings if f.kind in ("pixels", "bytes")], judged.findings
    assert any("hidden as blur hides them" in v for i in judged.images for v in i.verified)
    Image.open(io.BytesIO(files["a.jpg"])).save(elsewhere / "a.png")  # not obfuscated at all
    leaky = veil.audit(veil.open_dataset(elsewhere), dict(regions), method="blur", **kwargs)
    assert any(f.kind == "pixels" for f in leaky.findings), leaky.findings
