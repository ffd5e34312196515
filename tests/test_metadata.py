"""veil.metadata names each identifying field; veil.obfuscation.verify judges face regions."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from corpus import (
    XMP,
    identifying_exif,
    insert_jpeg_segment,
    iptc_app13,
    jpeg_bytes,
    photo,
    png_bytes,
    write_corpus,
)
from PIL import Image, ImageFilter, PngImagePlugin

from veil import containers
from veil.boxes import Box
from veil.images import probe
from veil.metadata import group_fields, identifying_fields
from veil.obfuscation import obfuscate
from veil.obfuscation.verify import check_faces, outside_psnr

PLAIN = jpeg_bytes(Image.fromarray(photo(64, 48, seed=3)), quality=90)


def _names(data: bytes) -> dict[str, list[str]]:
    return dict(group_fields(identifying_fields(data)))


def test_every_kind_probe_reports_is_named_field_by_field(tmp_path) -> None:
    """Where probe says which kinds of metadata a file holds, the fields say the same
    kinds, each with its name."""
    for case in write_corpus(tmp_path).values():
        if not case.ok:
            continue
        data = case.path.read_bytes()
        assert set(_names(data)) == set(probe(data).metadata), case.name


def test_exif_gps_thumbnail_maker_note_xmp_iptc_comment_by_name() -> None:
    data = jpeg_bytes(Image.fromarray(photo(64, 48)), exif=identifying_exif(), xmp=XMP,
                      comment=b"shot by Jane Doe")
    names = _names(insert_jpeg_segment(data, 0xED, iptc_app13(b"Jane Doe")))
    assert names["gps"] == ["EXIF GPS GPSLatitudeRef", "EXIF GPS GPSLatitude",
                            "EXIF GPS GPSLongitudeRef", "EXIF GPS GPSLongitude"]
    assert {"EXIF Make", "EXIF Model", "EXIF Artist", "EXIF DateTimeOriginal"} \
        <= set(names["exif"])
    assert "EXIF Orientation" not in names["exif"]  # veil keeps it: not identifying
    assert names["maker-note"] == ["EXIF MakerNote"]
    assert names["exif-thumbnail"] == ["EXIF IFD1 thumbnail (JPEGInterchangeFormat)"]
    assert names["xmp"] == ["XMP dc:creator (a person)"]
    assert names["iptc"] == ["IPTC 2:80 By-line"]
    assert names["comment"] == ["JPEG comment (COM, 16 bytes)"]
    assert _names(PLAIN) == {}


def test_xmp_gps_and_names_in_attributes_and_extended_packets() -> None:
    packet = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
              b'exif:GPSLatitude="48,51.4N" exif:GPSLongitude="2,17.6E" '
              b'photoshop:City="Paris" xmp:CreatorTool="X"><Iptc4xmpExt:PersonInImage>'
              b"<rdf:Bag><rdf:li>Jane</rdf:li></rdf:Bag></Iptc4xmpExt:PersonInImage>"
              b"</rdf:Description></rdf:RDF></x:xmpmeta>")
    data = insert_jpeg_segment(PLAIN, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)
    names = _names(data)
    assert names["gps"] == ["XMP exif:GPSLatitude", "XMP exif:GPSLongitude"]
    assert names["xmp"][:2] == ["XMP Iptc4xmpExt:PersonInImage (a person)",
                                "XMP photoshop:City (a place)"]
    assert "XMP xmp:CreatorTool" in names["xmp"]
    odd = insert_jpeg_segment(PLAIN, 0xE1, b"XMP\x00://ns.adobe.com/xap/1.0/\x00" + packet)
    assert _names(odd)["gps"] == ["XMP (odd header) exif:GPSLatitude",
                                  "XMP (odd header) exif:GPSLongitude"]


def test_png_text_by_keyword_and_profiles_inside_it() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    info.add_text("Comment", "at home " * 20, zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode(), zip=True)
    raw_exif = identifying_exif()
    hexed = raw_exif.hex()
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw_exif):8d}\n{hexed}\n", zip=True)
    names = _names(png_bytes(Image.fromarray(photo(24, 16)), pnginfo=info))
    assert names["png-text"] == ["PNG tEXt Author", "PNG zTXt Comment"]
    assert names["xmp"] == ["PNG iTXt XMP dc:creator (a person)"]
    assert "PNG zTXt Raw profile type exif GPS GPSLatitude" in names["gps"]


def test_thumbnails_mpf_trailers_and_photoshop_resources() -> None:
    jfif = bytearray(PLAIN)
    app0 = jfif.index(b"JFIF\x00") - 4
    thumb = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x02\x02" + bytes(12)  # a 2x2 RGB thumbnail
    segment = b"\xff\xe0" + struct.pack(">H", len(thumb) + 2) + thumb
    length = struct.unpack(">H", jfif[app0 + 2:app0 + 4])[0]
    with_thumb = bytes(jfif[:app0]) + segment + bytes(jfif[app0 + 2 + length:])
    assert _names(with_thumb)["thumbnail"] == ["JFIF thumbnail (APP0)"]
    appended = PLAIN + jpeg_bytes(Image.new("RGB", (8, 8)))
    assert _names(appended)["trailer"] == [
        f"{len(appended) - len(PLAIN)} bytes after the end of the image (another JPEG "
        "picture among them)"]
    assert _names(PLAIN + b"\0" * 8) == {}  # a little padding is no finding
    mpf = insert_jpeg_segment(PLAIN, 0xE2, b"MPF\x00II*\x00")
    assert _names(mpf)["thumbnail"] == ["MPF: more pictures in the file (APP2)"]
    resources = b"Photoshop 3.0\x00" + b"8BIM\x04\x0c\x00\x00" + struct.pack(">I", 4) + b"JPEG"
    assert _names(insert_jpeg_segment(PLAIN, 0xED, resources))["thumbnail"] == [
        "Photoshop thumbnail (resource 0x040C)"]
    assert containers.iptc_datasets(b"\x1c\x02\x50\x00\x04Jane\x1c\x02\x5a\x00\x05Paris") == [
        (2, 80, b"Jane"), (2, 90, b"Paris")]


def test_a_png_text_bomb_is_cut() -> None:
    body = b"Comment\x00\x00" + zlib.compress(b"x" * (64 << 20), 9)
    keyword, text = containers.png_text(b"zTXt", body)
    assert keyword == b"Comment" and len(text) == 1 << 22


# -- the pixel criterion ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A textured 'face' (fine detail at every scale) in a photo-like image."""
    rng = np.random.default_rng(4)
    image = photo(160, 128, seed=2).astype(np.int16)
    texture = rng.normal(0, 40, (60, 50)).astype(np.int16)
    image[30:90, 50:100] += texture[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), [(50.0, 30.0, 100.0, 90.0)]


@pytest.mark.parametrize("method", ["blur", "minimal-blur", "overlay", "mosaic", "solid"])
def test_the_method_passes_and_leaks_fail(method: str, face) -> None:
    source, boxes = face
    reference = np.asarray(obfuscate(source, [Box(*b) for b in boxes], method))
    jpeg = np.asarray(Image.open(io.BytesIO(jpeg_bytes(Image.fromarray(reference),
                                                       quality=90))))
    assert all(c.status == "verified" for c in check_faces(source, jpeg, reference, boxes))
    weak = np.asarray(Image.fromarray(source).filter(ImageFilter.GaussianBlur(1)))
    half = np.asarray(obfuscate(source, [Box(50, 30, 75, 90)], method))
    for leak in (source, weak, half):
        (check,) = check_faces(source, leak, reference, boxes)
        assert check.status == "failed", (method, check)
    (unchanged,) = check_faces(source, source, reference, boxes)
    assert "changed 0.00 as much as the method" in unchanged.reason


def test_quiet_regions_and_the_picture_outside() -> None:
    flat = np.full((64, 64, 3), 90, np.uint8)
    (check,) = check_faces(flat, flat, flat, [(10.0, 10.0, 40.0, 40.0)])
    assert check.status == "quiet" and check.ok
    (gone,) = check_faces(flat, flat, flat, [(100.0, 100.0, 120.0, 130.0)])
    assert gone.status == "outside"
    other = photo(64, 64, seed=8)
    assert outside_psnr(flat, flat, []) == 99.0
    assert outside_psnr(flat, other, [(0, 0, 32, 64)]) < 18
    assert outside_psnr(flat, other, [(0, 0, 64, 64)]) is None
