"""A corpus of odd and broken image files, written on demand, for tests of any stage.

Usage::

    from corpus import CASE_NAMES, CorpusCase, write_corpus

    cases = write_corpus(tmp_path)          # {name: CorpusCase}, every file written
    case = cases["exif_rotated_6"]
    case.path, case.ok, case.size, case.error, case.pixels

Each case records what a loader must do with its file: succeed with ``size`` (width,
height as displayed), ``format``, ``orientation``, ``metadata`` and, where colours
matter, ``pixels`` (displayed ``(x, y)`` -> RGB within ``tolerance``); or fail with an
``ImageError`` whose message contains ``error``. Files are written with Pillow, numpy
and piexif (for a real EXIF thumbnail), deterministically: the same bytes every time,
no downloads. ``CASE_NAMES`` lists the cases so tests can parametrize at collection.

Smaller helpers for tests that build their own files: ``photo`` (a deterministic
photo-like array), ``jpeg_bytes`` / ``png_bytes``, ``marked_image`` with
``MARKED_PIXELS`` (an orientation test picture), ``identifying_exif`` (camera, GPS,
maker note, thumbnail), ``orientation_exif``, ``XMP``, ``iptc_app13``,
``insert_jpeg_segment`` and ``srgb_icc``.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin

Pixel = tuple[tuple[int, int], tuple[int, int, int]]


@dataclass(frozen=True)
class CorpusCase:
    name: str
    path: Path
    size: tuple[int, int] | None = None  # displayed (width, height) when loading succeeds
    error: str | None = None  # substring of the ImageError message when loading fails
    format: str | None = None  # PIL format name
    orientation: int = 1
    metadata: tuple[str, ...] = ()  # identifying metadata kinds, in veil's canonical order
    pixels: tuple[Pixel, ...] = ()  # displayed (x, y) -> expected RGB
    tolerance: int = 0  # max abs difference per channel allowed for ``pixels``
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------- helpers


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like RGB array: smooth gradients, soft blobs, mild grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((height, width, 3))
    out[..., 0] = 60 + 140 * x / max(width - 1, 1)
    out[..., 1] = 50 + 150 * y / max(height - 1, 1)
    out[..., 2] = 120 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0)
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(4, max(6.0, min(width, height) / 3))
        colour = rng.uniform(-80, 80, 3)
        out += colour * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
    out += rng.normal(0, 6, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jpeg_bytes(image: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", **save)
    return buf.getvalue()


def png_bytes(image: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **save)
    return buf.getvalue()


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def _raw_png(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG written by hand, for what Pillow will not write (16-bit RGB, lying headers)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(rows, 9)) + _png_chunk(b"IEND", b""))


def insert_jpeg_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """``data`` with one more marker segment placed after SOI and the leading APPn segments."""
    pos = 2
    while data[pos] == 0xFF and 0xE0 <= data[pos + 1] <= 0xEF:
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    segment = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:pos] + segment + data[pos:]


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def iptc_app13(byline: bytes) -> bytes:
    """An APP13 Photoshop payload holding one IPTC record (2:80, By-line)."""
    record = b"\x1c\x02\x50" + struct.pack(">H", len(byline)) + byline
    if len(record) % 2:
        record += b"\0"
    return (b"Photoshop 3.0\x00" + b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00"
            + struct.pack(">I", len(record)) + record)


def identifying_exif(orientation: int = 1) -> bytes:
    """EXIF with camera, date, maker note, GPS position and a real JPEG thumbnail in IFD1."""
    import piexif  # test-only dependency: Pillow cannot write an IFD1 thumbnail

    thumbnail = jpeg_bytes(Image.fromarray(photo(32, 24, seed=9)), quality=70)
    return piexif.dump({
        "0th": {
            piexif.ImageIFD.Make: b"VeilCam",
            piexif.ImageIFD.Model: b"Model X",
            piexif.ImageIFD.Artist: b"Jane Doe",
            piexif.ImageIFD.Orientation: orientation,
        },
        "Exif": {
            piexif.ExifIFD.DateTimeOriginal: b"2021:06:05 04:03:02",
            piexif.ExifIFD.MakerNote: b"VEIL-MAKER-NOTE-SERIAL-12345",
        },
        "GPS": {
            piexif.GPSIFD.GPSLatitudeRef: b"N",
            piexif.GPSIFD.GPSLatitude: ((48, 1), (51, 1), (2400, 100)),
            piexif.GPSIFD.GPSLongitudeRef: b"E",
            piexif.GPSIFD.GPSLongitude: ((2, 1), (17, 1), (4000, 100)),
        },
        "1st": {
            piexif.ImageIFD.JPEGInterchangeFormat: 0,
            piexif.ImageIFD.JPEGInterchangeFormatLength: 0,
        },
        "thumbnail": thumbnail,
    })


def orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
       b'22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
       b"<dc:creator>Jane Doe</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>")

# The orientation test picture, as displayed: light grey, a red block top-left and a
# blue block top-right, so every wrong flip or rotation moves a marker.
MARKED_SIZE = (40, 64)
_RED, _BLUE, _GREY = (230, 20, 20), (20, 20, 230), (200, 200, 200)
MARKED_PIXELS: tuple[Pixel, ...] = (((5, 5), _RED), ((34, 5), _BLUE), ((20, 50), _GREY),
                                    ((5, 58), _GREY))


def marked_image() -> Image.Image:
    w, h = MARKED_SIZE
    a = np.empty((h, w, 3), np.uint8)
    a[:] = _GREY
    a[0:16, 0:16] = _RED
    a[0:16, w - 16:w] = _BLUE
    return Image.fromarray(a)


# --------------------------------------------------------------------------- cases

_Writer = Callable[[Path], CorpusCase]
_WRITERS: dict[str, _Writer] = {}


def _case(fn: _Writer) -> _Writer:
    _WRITERS[fn.__name__.removeprefix("_")] = fn
    return fn


@_case
def _rgb_jpeg(d: Path) -> CorpusCase:
    path = d / "rgb.jpg"
    path.write_bytes(jpeg_bytes(Image.fromarray(photo(96, 64, seed=1)), quality=90))
    return CorpusCase("rgb_jpeg", path, size=(96, 64), format="JPEG")


@_case
def _progressive_jpeg(d: Path) -> CorpusCase:
    path = d / "progressive.jpg"
    image = Image.fromarray(photo(80, 48, seed=2))
    path.write_bytes(jpeg_bytes(image, quality=80, progressive=True, subsampling=0))
    return CorpusCase("progressive_jpeg", path, size=(80, 48), format="JPEG")


@_case
def _truncated_jpeg(d: Path) -> CorpusCase:
    path = d / "truncated.jpg"
    data = jpeg_bytes(Image.fromarray(photo(256, 192, seed=3)), quality=90)
    path.write_bytes(data[: len(data) * 6 // 10])
    return CorpusCase("truncated_jpeg", path, error="truncated JPEG data")


@_case
def _truncated_png(d: Path) -> CorpusCase:
    path = d / "truncated.png"
    data = png_bytes(Image.fromarray(photo(128, 96, seed=4)))
    path.write_bytes(data[: len(data) * 6 // 10])
    return CorpusCase("truncated_png", path, error="truncated PNG data")


@_case
def _empty(d: Path) -> CorpusCase:
    path = d / "empty.jpg"
    path.write_bytes(b"")
    return CorpusCase("empty", path, error="empty file (0 bytes)")


@_case
def _text_as_jpg(d: Path) -> CorpusCase:
    path = d / "notes.jpg"
    path.write_text("These are notes, not a picture.\nSecond line.\n", encoding="utf-8")
    return CorpusCase("text_as_jpg", path, error="not an image (looks like text")


@_case
def _unknown_format(d: Path) -> CorpusCase:
    path = d / "mystery.jpg"
    path.write_bytes(b"\x00VEIL\x00\xfe\xfd" + bytes(range(255, -1, -1)) * 4)
    return CorpusCase("unknown_format", path, error="unknown image format")


@_case
def _cmyk_jpeg(d: Path) -> CorpusCase:
    # Pillow writes CMYK JPEGs the way Photoshop does: inverted, with an Adobe APP14.
    path = d / "cmyk.jpg"
    a = np.zeros((32, 64, 4), np.uint8)
    a[:, 0:16, 0] = 255  # cyan
    a[:, 16:32, 1] = 255  # magenta
    a[:, 32:48, 2] = 255  # yellow
    a[:, 48:64, 3] = 255  # black
    path.write_bytes(jpeg_bytes(Image.fromarray(a, "CMYK"), quality=95))
    pixels = (((8, 16), (0, 255, 255)), ((24, 16), (255, 0, 255)),
              ((40, 16), (255, 255, 0)), ((56, 16), (0, 0, 0)))
    return CorpusCase("cmyk_jpeg", path, size=(64, 32), format="JPEG", pixels=pixels,
                      tolerance=3)


@_case
def _grey_jpeg(d: Path) -> CorpusCase:
    path = d / "grey.jpg"
    a = np.full((32, 48), 77, np.uint8)
    a[:, 24:] = 180
    path.write_bytes(jpeg_bytes(Image.fromarray(a), quality=95))
    pixels = (((4, 16), (77, 77, 77)), ((40, 16), (180, 180, 180)))
    return CorpusCase("grey_jpeg", path, size=(48, 32), format="JPEG", pixels=pixels,
                      tolerance=2)


@_case
def _grey16_png(d: Path) -> CorpusCase:
    path = d / "grey16.png"
    a = np.zeros((16, 64), np.uint16)
    for i, value in enumerate((0, 1000, 32896, 65535)):
        a[:, 16 * i:16 * (i + 1)] = value
    path.write_bytes(png_bytes(Image.fromarray(a)))
    pixels = tuple(((16 * i + 8, 8), (v, v, v)) for i, v in enumerate((0, 4, 128, 255)))
    return CorpusCase("grey16_png", path, size=(64, 16), format="PNG", pixels=pixels,
                      note="16-bit scaled to 8-bit (65535 -> 255), not clipped")


@_case
def _rgb16_png(d: Path) -> CorpusCase:
    path = d / "rgb16.png"
    left = struct.pack(">3H", 65535, 0, 32896) * 4
    right = struct.pack(">3H", 2570, 65535, 0) * 4
    path.write_bytes(_raw_png(8, 8, 16, 2, (b"\0" + left + right) * 8))
    pixels = (((1, 1), (255, 0, 128)), ((6, 6), (10, 255, 0)))
    return CorpusCase("rgb16_png", path, size=(8, 8), format="PNG", pixels=pixels)


@_case
def _palette_transparent_png(d: Path) -> CorpusCase:
    path = d / "palette.png"
    image = Image.new("P", (24, 16), 0)
    image.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (253 * 3))
    image.paste(1, (12, 0, 24, 8))
    image.paste(2, (0, 8, 24, 16))  # index 2 is transparent; its palette colour shows
    path.write_bytes(png_bytes(image, transparency=2))
    pixels = (((2, 2), (255, 0, 0)), ((20, 2), (0, 255, 0)), ((5, 12), (10, 20, 30)))
    return CorpusCase("palette_transparent_png", path, size=(24, 16), format="PNG",
                      pixels=pixels, note="alpha dropped as convert('RGB') does")


@_case
def _rgba_png(d: Path) -> CorpusCase:
    path = d / "rgba.png"
    a = np.zeros((16, 32, 4), np.uint8)
    a[:, :16] = (200, 100, 50, 255)
    a[:, 16:] = (0, 0, 255, 0)  # fully transparent blue: alpha is dropped, blue stays
    path.write_bytes(png_bytes(Image.fromarray(a, "RGBA")))
    pixels = (((4, 4), (200, 100, 50)), ((24, 4), (0, 0, 255)))
    return CorpusCase("rgba_png", path, size=(32, 16), format="PNG", pixels=pixels)


@_case
def _la_png(d: Path) -> CorpusCase:
    path = d / "grey_alpha.png"
    a = np.zeros((8, 8, 2), np.uint8)
    a[..., 0] = 90
    a[..., 1] = 30
    path.write_bytes(png_bytes(Image.fromarray(a, "LA")))
    return CorpusCase("la_png", path, size=(8, 8), format="PNG", pixels=(((3, 3), (90,) * 3),))


def _rotated(d: Path, name: str, orientation: int, inverse: Image.Transpose) -> CorpusCase:
    path = d / f"{name}.jpg"
    stored = marked_image().transpose(inverse)  # what a camera held sideways stores
    path.write_bytes(jpeg_bytes(stored, quality=95, exif=orientation_exif(orientation)))
    return CorpusCase(name, path, size=MARKED_SIZE, format="JPEG", orientation=orientation,
                      pixels=MARKED_PIXELS, tolerance=8)


@_case
def _exif_rotated_6(d: Path) -> CorpusCase:
    return _rotated(d, "exif_rotated_6", 6, Image.Transpose.ROTATE_90)


@_case
def _exif_rotated_8(d: Path) -> CorpusCase:
    return _rotated(d, "exif_rotated_8", 8, Image.Transpose.ROTATE_270)


@_case
def _exif_metadata_jpeg(d: Path) -> CorpusCase:
    path = d / "metadata.jpg"
    data = jpeg_bytes(Image.fromarray(photo(64, 48, seed=5)), quality=90,
                      exif=identifying_exif(), xmp=XMP, comment=b"shot by Jane Doe",
                      icc_profile=srgb_icc())
    path.write_bytes(insert_jpeg_segment(data, 0xED, iptc_app13(b"Jane Doe")))
    return CorpusCase(
        "exif_metadata_jpeg", path, size=(64, 48), format="JPEG",
        metadata=("exif", "exif-thumbnail", "gps", "xmp", "iptc", "comment", "maker-note"),
        note="EXIF (camera, GPS, maker note, IFD1 thumbnail), XMP, IPTC, COM and an ICC profile",
    )


@_case
def _bomb_png(d: Path) -> CorpusCase:
    # The header declares 30000 x 30000 (900 million pixels); the file is a few bytes.
    path = d / "bomb.png"
    path.write_bytes(_raw_png(30000, 30000, 8, 2, b"\0" * 1024))
    return CorpusCase("bomb_png", path, error="900,000,000 pixels, over the limit")


@_case
def _bomb_jpeg(d: Path) -> CorpusCase:
    path = d / "bomb.jpg"
    data = bytearray(jpeg_bytes(Image.new("RGB", (16, 16), (9, 9, 9))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    path.write_bytes(bytes(data))
    return CorpusCase("bomb_jpeg", path, error="3,600,000,000 pixels, over the limit")


@_case
def _unicode_name(d: Path) -> CorpusCase:
    path = d / "café_ñ_日本.jpg"
    path.write_bytes(jpeg_bytes(Image.fromarray(photo(32, 24, seed=6)), quality=90))
    return CorpusCase("unicode_name", path, size=(32, 24), format="JPEG")


@_case
def _png_text(d: Path) -> CorpusCase:
    path = d / "text.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    info.add_text("Comment", "taken at home " * 20, zip=True)
    info.add_itxt("Description", "Jane at the beach", lang="en")
    info.add(b"tIME", struct.pack(">HBBBBB", 2021, 6, 5, 4, 3, 2))
    path.write_bytes(png_bytes(Image.fromarray(photo(24, 16, seed=7)), pnginfo=info))
    return CorpusCase("png_text", path, size=(24, 16), format="PNG", metadata=("png-text",))


@_case
def _png_exif_rotated(d: Path) -> CorpusCase:
    path = d / "png_exif.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "VeilCam"  # Make
    stored = marked_image().transpose(Image.Transpose.ROTATE_90)
    path.write_bytes(png_bytes(stored, exif=exif.tobytes()))
    return CorpusCase("png_exif_rotated", path, size=MARKED_SIZE, format="PNG", orientation=6,
                      metadata=("exif",), pixels=MARKED_PIXELS)


@_case
def _animated_gif(d: Path) -> CorpusCase:
    path = d / "animated.gif"
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    path.write_bytes(buf.getvalue())
    return CorpusCase("animated_gif", path, size=(20, 10), format="GIF",
                      pixels=(((10, 5), (255, 0, 0)),), note="first frame")


@_case
def _webp(d: Path) -> CorpusCase:
    path = d / "photo.webp"
    buf = io.BytesIO()
    Image.fromarray(photo(40, 30, seed=8)).save(buf, "WEBP", quality=80)
    path.write_bytes(buf.getvalue())
    return CorpusCase("webp", path, size=(40, 30), format="WEBP")


@_case
def _directory(d: Path) -> CorpusCase:
    path = d / "folder.jpg"
    path.mkdir(exist_ok=True)
    return CorpusCase("directory", path, error="is a directory")


@_case
def _vanished(d: Path) -> CorpusCase:
    path = d / "vanished.jpg"
    path.unlink(missing_ok=True)
    return CorpusCase("vanished", path, error="file not found")


CASE_NAMES: tuple[str, ...] = tuple(_WRITERS)


def write_corpus(directory: Path) -> dict[str, CorpusCase]:
    """Write every case's file into ``directory`` (created if needed); return the cases."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {name: writer(directory) for name, writer in _WRITERS.items()}
