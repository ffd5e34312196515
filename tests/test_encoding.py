"""Writing: no second generation of JPEG loss, no metadata out, no partial files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    XMP,
    CorpusCase,
    identifying_exif,
    insert_jpeg_segment,
    iptc_app13,
    jpeg_bytes,
    marked_image,
    photo,
    png_bytes,
    write_corpus,
)
from PIL import Image, JpegImagePlugin

from veil import containers
from veil.encoding import encode_image, strip_identifying_metadata
from veil.errors import ImageError
from veil.files import atomic_write_bytes
from veil.images import load_image, probe

FORMATS = ("keep", "png", "jpeg")
# Strings planted in the corpus metadata; none may survive into an output.
PLANTED = (b"Jane Doe", b"VeilCam", b"Model X", b"VEIL-MAKER-NOTE", b"2021:06:05",
           b"taken at home", b"xmpmeta", b"Photoshop 3.0")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusCase]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _pixels(source: bytes | Path | Image.Image) -> np.ndarray:
    image = source if isinstance(source, Image.Image) else load_image(source).image
    return np.asarray(image).astype(np.int64)


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, bytes) of a JPEG's segments, via the module's own walker."""
    return [(s.marker, data[s.start:s.end]) for s in containers.jpeg_segments(data)]


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((ctype, data[pos:pos + 12 + length]))
        pos += 12 + length
    return out


def _assert_clean(data: bytes) -> None:
    """Parse an output back: nothing identifying may be in it."""
    assert probe(data).metadata == ()
    with _open(data) as im:
        exif = im.getexif()
        if im.format != "TIFF":  # a TIFF's own tags are its structure; probe() judged them
            assert set(exif) <= {0x0112}, dict(exif)
        assert not exif.get_ifd(0x8825) and not exif.get_ifd(0x8769)
        assert "xmp" not in im.info and "comment" not in im.info
        if im.format == "JPEG":
            for marker, payload in im.applist:
                assert (marker, payload[:5]) in {("APP0", b"JFIF\0"), ("APP14", b"Adobe")} or (
                    marker == "APP2" and payload.startswith(b"ICC_PROFILE\0")
                ) or (marker == "APP1" and set(exif) == {0x0112}), marker
            assert data.count(b"\xff\xd8\xff") == 1  # no embedded thumbnail JPEG
    for planted in PLANTED:
        assert planted not in data, planted


# --------------------------------------------------------------------------- encode_image


@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_keeps_source_tables_and_subsampling(subsampling: int, progressive: bool) -> None:
    source = jpeg_bytes(Image.fromarray(photo(96, 80, seed=3)), quality=83,
                        subsampling=subsampling, progressive=progressive)
    loaded = load_image(source)
    with _open(source) as im:
        tables = {k: list(v) for k, v in im.quantization.items()}
    for fmt in ("keep", "jpeg"):
        data, suffix = encode_image(loaded.image, loaded, fmt=fmt, jpeg_quality=50)
        assert suffix == ".jpg"
        with _open(data) as out:
            assert {k: list(v) for k, v in out.quantization.items()} == tables
            assert JpegImagePlugin.get_sampling(out) == subsampling
            assert bool(out.info.get("progressive")) is progressive


def test_no_second_generation_of_loss() -> None:
    """Same tables: re-encoding the decoded pixels barely moves them; quality 95 does."""
    source = jpeg_bytes(Image.fromarray(photo(256, 192, seed=4)), quality=75)
    loaded = load_image(source)
    decoded = _pixels(loaded.image)
    ours = _pixels(encode_image(loaded.image, loaded)[0])
    default = _pixels(jpeg_bytes(loaded.image, quality=95))
    ours_diff = np.abs(ours - decoded).mean()
    default_diff = np.abs(default - decoded).mean()
    assert ours_diff < 0.25 * default_diff, (ours_diff, default_diff)


@pytest.mark.parametrize("orientation", [6, 8])
def test_turned_jpeg_reuses_transposed_tables(orientation: int) -> None:
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    displayed = Image.fromarray(photo(192, 256, seed=5))
    source = jpeg_bytes(displayed.transpose(inverse), quality=60, subsampling=0,
                        exif=exif.tobytes())
    loaded = load_image(source)
    data = encode_image(loaded.image, loaded)[0]
    with _open(source) as src, _open(data) as out:
        for k, table in src.quantization.items():
            transposed = [table[8 * (i % 8) + i // 8] for i in range(64)]
            assert list(out.quantization[k]) == transposed
    decoded = _pixels(loaded.image)
    ours = np.abs(_pixels(data) - decoded).mean()
    default = np.abs(_pixels(jpeg_bytes(loaded.image, quality=95)) - decoded).mean()
    assert ours < 0.25 * default, (ours, default)


def test_greyscale_jpeg_stays_one_component(corpus: dict[str, CorpusCase]) -> None:
    loaded = load_image(corpus["grey_jpeg"].path)
    data, _ = encode_image(loaded.image, loaded)
    with _open(data) as out, Image.open(corpus["grey_jpeg"].path) as src:
        assert out.mode == "L"
        assert {k: list(v) for k, v in out.quantization.items()} == {
            k: list(v) for k, v in src.quantization.items()}
    coloured = loaded.image.copy()
    coloured.paste((200, 10, 10), (0, 0, 8, 8))  # an overlay in colour: RGB it must be
    with _open(encode_image(coloured, loaded)[0]) as out:
        assert out.mode == "RGB"


@pytest.mark.parametrize("name", ["exif_metadata_jpeg", "png_text", "png_exif_rotated",
                                  "webp", "exif_rotated_6", "cmyk_jpeg", "animated_gif"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_outputs_carry_no_metadata(corpus: dict[str, CorpusCase], name: str, fmt: str) -> None:
    loaded = load_image(corpus[name].path)
    data, suffix = encode_image(loaded.image, loaded, fmt=fmt)
    _assert_clean(data)
    out = load_image(data)
    assert out.orientation == 1  # pixels are already as displayed: no tag, same picture
    assert (out.width, out.height) == (loaded.width, loaded.height)
    assert suffix == {"png": ".png", "jpeg": ".jpg"}.get(fmt, suffix)


def test_nothing_rides_along_in_image_info(corpus: dict[str, CorpusCase]) -> None:
    loaded = load_image(corpus["exif_metadata_jpeg"].path)
    dirty = loaded.image.copy()
    dirty.info = {"exif": identifying_exif(), "comment": b"Jane Doe", "xmp": XMP,
                  "transparency": (0, 0, 0), "dpi": (300, 300)}
    for fmt in FORMATS:
        for source in (loaded, dataclasses.replace(loaded, format="WEBP", jpeg=None),
                       dataclasses.replace(loaded, format="TIFF", jpeg=None)):
            data, _ = encode_image(dirty, source, fmt=fmt)
            _assert_clean(data)
            with _open(data) as im:
                assert "transparency" not in im.info


def test_icc_profile_kept_only_when_it_fits(corpus: dict[str, CorpusCase]) -> None:
    loaded = load_image(corpus["exif_metadata_jpeg"].path)
    assert loaded.icc_profile is not None
    for fmt in FORMATS:
        with _open(encode_image(loaded.image, loaded, fmt=fmt)[0]) as im:
            assert im.info.get("icc_profile") == loaded.icc_profile
    cmyk_profile = loaded.icc_profile[:16] + b"CMYK" + loaded.icc_profile[20:]
    wrong = dataclasses.replace(loaded, icc_profile=cmyk_profile)
    for fmt in FORMATS:
        with _open(encode_image(loaded.image, wrong, fmt=fmt)[0]) as im:
            assert not im.info.get("icc_profile")


@pytest.mark.parametrize("name", ["rgba_png", "palette_transparent_png", "grey16_png", "webp"])
@pytest.mark.parametrize("fmt", ["keep", "png"])
def test_lossless_sources_stay_lossless(corpus: dict[str, CorpusCase], name: str,
                                        fmt: str) -> None:
    loaded = load_image(corpus[name].path)
    data, suffix = encode_image(loaded.image, loaded, fmt=fmt)
    assert np.array_equal(_pixels(data), _pixels(loaded.image))
    assert probe(data).format == ("PNG" if fmt == "png" else loaded.format)
    assert suffix == {"PNG": ".png", "WEBP": ".webp"}[probe(data).format]


def test_other_lossless_formats_and_fallback() -> None:
    image = Image.fromarray(photo(40, 24, seed=6))
    for fmt, suffix in (("TIFF", ".tiff"), ("BMP", ".bmp"), ("GIF", ".png"), ("PPM", ".png")):
        buf = io.BytesIO()
        (image.convert("P") if fmt == "GIF" else image).save(buf, fmt)
        loaded = load_image(buf.getvalue())
        data, got = encode_image(loaded.image, loaded)
        assert got == suffix
        assert np.array_equal(_pixels(data), _pixels(loaded.image))


def test_non_jpeg_source_to_jpeg_uses_quality(corpus: dict[str, CorpusCase]) -> None:
    loaded = load_image(corpus["rgba_png"].path)
    low, _ = encode_image(loaded.image, loaded, fmt="jpeg", jpeg_quality=20)
    high, _ = encode_image(loaded.image, loaded, fmt="jpeg", jpeg_quality=95)
    with _open(low) as a, _open(high) as b:
        assert a.format == b.format == "JPEG"
        assert sum(a.quantization[0]) > sum(b.quantization[0])


def test_bad_arguments_are_refused(corpus: dict[str, CorpusCase]) -> None:
    loaded = load_image(corpus["rgb_jpeg"].path)
    with pytest.raises(ValueError, match="fmt"):
        encode_image(loaded.image, loaded, fmt="gif")
    with pytest.raises(ValueError, match="jpeg_quality"):
        encode_image(loaded.image, loaded, fmt="jpeg", jpeg_quality=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_encoding_is_deterministic(corpus: dict[str, CorpusCase], fmt: str) -> None:
    for case in corpus.values():
        if case.ok:
            loaded = load_image(case.path)
            first = encode_image(loaded.image, loaded, fmt=fmt)
            again = load_image(case.path)
            assert encode_image(again.image, again, fmt=fmt) == first, case.name


def test_encoding_is_deterministic_across_processes(corpus: dict[str, CorpusCase]) -> None:
    script = (
        "import hashlib, sys\n"
        "from veil.images import load_image\nfrom veil.encoding import encode_image\n"
        "for path in sys.argv[1:]:\n"
        "    li = load_image(path)\n"
        "    for fmt in ('keep', 'png', 'jpeg'):\n"
        "        print(hashlib.sha256(encode_image(li.image, li, fmt=fmt)[0]).hexdigest())\n"
    )
    paths = [str(corpus[n].path) for n in ("exif_metadata_jpeg", "progressive_jpeg", "webp",
                                           "rgba_png")]
    child = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True,
                           text=True, check=True).stdout.split()
    here = [hashlib.sha256(encode_image(li.image, li, fmt=fmt)[0]).hexdigest()
            for li in map(load_image, paths) for fmt in FORMATS]
    assert child == here


# --------------------------------------------------------------------------- strip


@pytest.mark.parametrize("name", ["rgb_jpeg", "progressive_jpeg", "cmyk_jpeg", "grey_jpeg",
                                  "exif_rotated_6", "exif_rotated_8", "exif_metadata_jpeg",
                                  "unicode_name", "grey16_png", "rgb16_png", "rgba_png",
                                  "palette_transparent_png", "la_png", "png_text",
                                  "png_exif_rotated", "webp", "animated_gif"])
def test_strip_is_pixel_lossless_and_keeps_orientation(
        corpus: dict[str, CorpusCase], name: str) -> None:
    original = corpus[name].path.read_bytes()
    stripped = strip_identifying_metadata(original)
    before, after = load_image(original), load_image(stripped)
    assert np.array_equal(_pixels(after.image), _pixels(before.image))
    assert (after.width, after.height, after.orientation) == (
        before.width, before.height, before.orientation)
    assert after.format == before.format
    assert after.icc_profile == before.icc_profile
    _assert_clean(stripped)
    if not before.metadata and before.format in ("JPEG", "PNG"):
        assert stripped == original  # nothing to remove: not a byte changes


def test_strip_jpeg_keeps_tables_and_scan_bytes(corpus: dict[str, CorpusCase]) -> None:
    original = corpus["exif_metadata_jpeg"].path.read_bytes()
    stripped = strip_identifying_metadata(original)
    kept = [seg for seg in _segments(original)
            if seg[0] not in (0xE1, 0xED, 0xFE)]  # EXIF/XMP, IPTC, COM go
    assert _segments(stripped) == kept
    assert stripped == b"\xff\xd8" + b"".join(seg for _, seg in kept)
    assert len(stripped) < len(original) - 1000  # the thumbnail alone is over 1 KB


def test_strip_keeps_adobe_marker_for_cmyk(corpus: dict[str, CorpusCase]) -> None:
    data = insert_jpeg_segment(corpus["cmyk_jpeg"].path.read_bytes(), 0xFE, b"Jane Doe")
    stripped = strip_identifying_metadata(data)
    assert stripped == corpus["cmyk_jpeg"].path.read_bytes()
    with _open(stripped) as im:
        assert [m for m, _ in im.applist] == ["APP14"] and im.mode == "CMYK"


def test_strip_rewrites_orientation_as_minimal_exif() -> None:
    displayed = marked_image()
    source = jpeg_bytes(displayed.transpose(Image.Transpose.ROTATE_90), quality=95,
                        exif=identifying_exif(orientation=6), xmp=XMP, comment=b"Jane Doe")
    source = insert_jpeg_segment(source, 0xED, iptc_app13(b"Jane Doe"))
    assert set(load_image(source).metadata) >= {"exif", "gps", "exif-thumbnail", "iptc"}
    stripped = strip_identifying_metadata(source)
    _assert_clean(stripped)
    with _open(stripped) as im:
        assert dict(im.getexif()) == {0x0112: 6}
        assert [m for m, _ in im.applist][:2] == ["APP0", "APP1"]  # JFIF first, then EXIF
    after = load_image(stripped)
    assert after.orientation == 6 and after.image.size == displayed.size
    assert np.array_equal(_pixels(after.image), _pixels(source))


def test_strip_keeps_xmp_only_orientation_effective() -> None:
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="8" dc:creator="Jane Doe"/></x:xmpmeta>'
    source = jpeg_bytes(marked_image().transpose(Image.Transpose.ROTATE_270), quality=95,
                        xmp=xmp)
    assert load_image(source).orientation == 8
    stripped = strip_identifying_metadata(source)
    _assert_clean(stripped)
    after = load_image(stripped)
    assert after.orientation == 8 and after.image.size == marked_image().size


def test_strip_png_drops_only_text_exif_and_time(corpus: dict[str, CorpusCase]) -> None:
    for name, orientation in (("png_text", 1), ("png_exif_rotated", 6)):
        original = corpus[name].path.read_bytes()
        stripped = strip_identifying_metadata(original)
        dropped = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
        before = [c for c in _png_chunks(original) if c[0] not in dropped]
        after = _png_chunks(stripped)
        added = [c for c in after if c not in before]
        assert [c for c in after if c in before] == before  # byte for byte, same order
        if orientation == 1:
            assert added == []
        else:
            assert [c[0] for c in added] == [b"eXIf"]
            assert probe(stripped).orientation == orientation
        assert len(before) < len(_png_chunks(original))  # there was something to drop


def test_strip_drops_data_after_eoi(corpus: dict[str, CorpusCase]) -> None:
    primary = corpus["rgb_jpeg"].path.read_bytes()
    secret = jpeg_bytes(Image.new("RGB", (8, 8), "white"), exif=identifying_exif())
    assert strip_identifying_metadata(primary + secret) == primary


def test_strip_drops_data_after_iend(corpus: dict[str, CorpusCase]) -> None:
    original = corpus["png_text"].path.read_bytes()
    stripped = strip_identifying_metadata(original)
    assert strip_identifying_metadata(original + b"Jane Doe's diary") == stripped
    assert stripped.endswith(b"IEND\xaeB`\x82")


def test_strip_other_formats_reencodes_without_metadata() -> None:
    image = Image.fromarray(photo(40, 24, seed=7))
    exif = Image.Exif()
    exif[0x010F] = "VeilCam"
    exif[0x013B] = "Jane Doe"
    cases = {}
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=70, exif=exif.tobytes(), xmp=XMP)
    cases["WEBP"] = buf.getvalue()
    buf = io.BytesIO()
    image.save(buf, "TIFF", tiffinfo=exif)
    cases["TIFF"] = buf.getvalue()
    buf = io.BytesIO()
    image.convert("P").save(buf, "GIF", comment=b"Jane Doe")
    cases["GIF"] = buf.getvalue()
    for fmt, data in cases.items():
        assert load_image(data).metadata, fmt
        stripped = strip_identifying_metadata(data)
        assert probe(stripped).format == fmt
        _assert_clean(stripped)
        assert np.array_equal(_pixels(stripped), _pixels(data)), fmt


def test_strip_skips_stray_bytes_between_segments(corpus: dict[str, CorpusCase]) -> None:
    original = corpus["rgb_jpeg"].path.read_bytes()
    app0_end = 4 + struct.unpack(">H", original[4:6])[0]
    damaged = original[:app0_end] + b"\x00\x17junk" + original[app0_end:]
    assert np.array_equal(_pixels(damaged), _pixels(original))  # decoders shrug
    assert strip_identifying_metadata(damaged) == original


def test_strip_refuses_broken_jpeg(corpus: dict[str, CorpusCase]) -> None:
    data = corpus["exif_metadata_jpeg"].path.read_bytes()
    with pytest.raises(ImageError, match="truncated JPEG data"):
        strip_identifying_metadata(data[:300])  # ends inside the EXIF segment


# --------------------------------------------------------------------------- write path


def test_round_trip_of_the_whole_write_path(tmp_path: Path) -> None:
    """encode -> atomic write -> load gives the encoded picture back."""
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(Image.fromarray(photo(30, 20, seed=8))))
    loaded = load_image(source)
    data, suffix = encode_image(loaded.image, loaded)
    out = tmp_path / f"out{suffix}"
    atomic_write_bytes(out, data)
    assert np.array_equal(_pixels(out), _pixels(loaded.image))


def _forbid_probe(monkeypatch) -> None:
    import veil.encoding as encoding

    def no_probe(*args, **kwargs):
        raise AssertionError("probe was called")

    monkeypatch.setattr(encoding, "probe", no_probe)


@pytest.mark.parametrize("orientation", [0, 1, 3, 6, 8, 9])
def test_strip_reads_orientation_from_the_exif_block_as_probe_does(orientation: int,
                                                                   monkeypatch) -> None:
    """A faceless JPEG with one EXIF block is stripped without Pillow's header parse
    (probe is not called), and keeps the orientation probe finds (0 and 9: upright)."""
    source = jpeg_bytes(marked_image(), quality=90,
                        exif=identifying_exif(orientation=orientation), comment=b"Jane Doe")
    expected = probe(source).orientation
    assert expected == (orientation if 1 <= orientation <= 8 else 1)
    _forbid_probe(monkeypatch)
    stripped = strip_identifying_metadata(source)
    monkeypatch.undo()
    _assert_clean(stripped)
    assert probe(stripped).orientation == expected
    assert np.array_equal(_pixels(load_image(stripped).image), _pixels(source))


@pytest.mark.parametrize(("exif_orientation", "xmp_orientations", "expected"), [
    (None, (6,), 6),  # EXIF without the tag: XMP decides
    (3, (6,), 3),  # EXIF's tag wins over XMP's
    (None, (5, 8), 8),  # the last XMP packet, as Pillow keeps it
])
def test_strip_reads_exif_and_xmp_orientation_as_probe_does(
        exif_orientation: int | None, xmp_orientations: tuple[int, ...], expected: int,
        monkeypatch) -> None:
    exif = Image.Exif()
    exif[0x010F] = "VeilCam"  # Make
    if exif_orientation is not None:
        exif[0x0112] = exif_orientation
    source = jpeg_bytes(marked_image(), quality=90, exif=exif.tobytes())
    for value in xmp_orientations:  # each packet its own APP1, after the EXIF block
        packet = f'<x:xmpmeta><rdf:Description tiff:Orientation="{value}"/></x:xmpmeta>'
        source = insert_jpeg_segment(source, 0xE1, b"http://ns.adobe.com/xap/1.0/\0"
                                     + packet.encode())
    assert probe(source).orientation == expected
    _forbid_probe(monkeypatch)
    stripped = strip_identifying_metadata(source)
    monkeypatch.undo()
    assert probe(stripped).orientation == expected


def test_strip_with_two_exif_blocks_asks_pillow(monkeypatch) -> None:
    """Pillow merges several EXIF blocks: only its parse can say what they mean."""
    first, second = Image.Exif(), Image.Exif()
    first[0x010F], second[0x0112] = "VeilCam", 6
    source = jpeg_bytes(marked_image(), quality=90, exif=first.tobytes())
    source = insert_jpeg_segment(source, 0xE1, second.tobytes())
    _forbid_probe(monkeypatch)
    with pytest.raises(AssertionError, match="probe was called"):
        strip_identifying_metadata(source)
