"""Decode any image a dataset may hold into the one form every stage works on.

``load_image`` returns RGB uint8 pixels *as displayed* (EXIF orientation applied, so
boxes are in displayed pixels) together with what the writer needs later: the JPEG
quantisation tables (to re-encode without a second generation of loss), the ICC
profile, and which identifying metadata the source carried.

Colour rule, stated once: every mode becomes RGB the way torchvision's default
loader (``Image.open(f).convert("RGB")``) does it, so obfuscated datasets train on
the same pixels as the originals. Alpha is *dropped*, not composited (ImageNet is
trained that way); a palette image with a transparent index shows that index's
palette colour, exactly as ``convert("RGB")`` does. The one deliberate difference:
16-bit greyscale (modes ``I;16*`` and ``I``, taken as 0..65535) is *scaled* to 8 bit
(65535 -> 255) where ``convert`` would clip almost everything to white; float
images (mode ``F``) follow Pillow's 0..255 convention (rounded, clipped).

Every failure is an :class:`~veil.errors.ImageError` whose message names the problem
in plain words. Nothing here changes Pillow's global settings: truncated data is
always an error, and the decompression-bomb guard is veil's own (``max_pixels``,
the ``VEIL_MAX_PIXELS`` environment variable, default 200 million pixels), checked
on the header before a single pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageFile, JpegImagePlugin

from veil import containers
from veil.errors import ImageError, VeilError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "METADATA_KINDS",
    "ImageProbe",
    "JpegSource",
    "LoadedImage",
    "PlainJpeg",
    "as_rgb",
    "decode_native",
    "file_sha256",
    "load_image",
    "max_pixels_limit",
    "plain_jpeg",
    "plain_jpeg_header",
    "probe",
]

DEFAULT_MAX_PIXELS = 200_000_000
MAX_PIXELS_ENV = "VEIL_MAX_PIXELS"

#: Every kind of identifying metadata veil reports, in the order it reports them.
METADATA_KINDS = (
    "exif", "exif-thumbnail", "gps", "xmp", "iptc", "comment", "png-text", "maker-note",
)

# Pillow's failures come in many types; all of them mean "this input is unusable".
_PIL_ERRORS = (
    OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError,
    struct.error, zlib.error, Image.DecompressionBombError, MemoryError,
)

_ORIENTATION = ExifTags.Base.Orientation  # 274
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(?:="|>)([0-9])')
_XMP_SIGNATURES = (b"http://ns.adobe.com/xap/1.0/\x00", b"http://ns.adobe.com/xmp/extension/\x00")
# Descriptive TIFF tags that identify a camera, a person, a place or a time.
_TIFF_IDENTIFYING = frozenset({
    269, 270, 271, 272, 305, 306, 315, 316, 33432, 42016, 0x8769, 0x8825,
})


@dataclass(frozen=True)
class JpegSource:
    """What is needed to re-encode a JPEG without a second generation of loss."""

    quantization: dict[int, list[int]]  # PIL's .quantization (natural order, not zigzag)
    subsampling: int  # JpegImagePlugin.get_sampling: 0 4:4:4, 1 4:2:2, 2 4:2:0, -1 unknown
    progressive: bool
    components: int = 3  # 1 greyscale, 3 YCbCr/RGB, 4 CMYK/YCCK


@dataclass(frozen=True)
class LoadedImage:
    """Decoded pixels as displayed, and what the writer needs to know of the source."""

    image: Image.Image  # always mode "RGB", uint8, EXIF orientation applied
    format: str | None  # PIL format of the source: "JPEG" (MPO included), "PNG", "WEBP", ...
    width: int  # displayed size
    height: int
    orientation: int  # source orientation tag: EXIF, else XMP tiff:Orientation as Pillow's
    #                   exif_transpose reads it; 1 when absent or not within 1..8
    jpeg: JpegSource | None
    icc_profile: bytes | None
    metadata: tuple[str, ...]  # identifying metadata found, a subset of METADATA_KINDS


@dataclass(frozen=True)
class ImageProbe:
    """What the header says, without decoding pixels (truncated data goes unnoticed)."""

    width: int  # displayed size
    height: int
    format: str | None
    mode: str  # the source's PIL mode, before any conversion
    orientation: int
    metadata: tuple[str, ...]
    icc_profile: bytes | None = None  # colour, kept by encoders (not identifying)


# --------------------------------------------------------------------------- limits


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: the argument, else ``VEIL_MAX_PIXELS``, else the default."""
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(raw.replace(",", ""))
        except ValueError:
            raise VeilError(
                f"{MAX_PIXELS_ENV} must be a whole number of pixels, got {raw!r}"
            ) from None
        if max_pixels <= 0:
            raise VeilError(f"{MAX_PIXELS_ENV} must be positive, got {raw!r}")
        return max_pixels
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    return int(max_pixels)


def _check_pixels(size: tuple[int, int], limit: int) -> None:
    width, height = size
    pixels = width * height
    if pixels > limit:
        raise ImageError(
            f"image is {width}x{height} = {pixels:,} pixels, over the limit of {limit:,} "
            "pixels (a guard against decompression bombs); if the image is genuine, raise "
            f"the limit with max_pixels= or the {MAX_PIXELS_ENV} environment variable"
        )


# --------------------------------------------------------------------------- opening


def _open_file(source: str | os.PathLike[str] | bytes, stack: ExitStack) -> IO[bytes]:
    """A readable, seekable binary stream for ``source``; file-system trouble -> ImageError."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("empty file (0 bytes)")
        return io.BytesIO(bytes(source))
    path = os.fspath(source)
    try:
        fp = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the stack
        size = os.fstat(fp.fileno()).st_size
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"is a directory, not an image file: {path}") from None
    except PermissionError:
        raise ImageError(f"permission denied: {path}") from None
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    return fp


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sample is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(c.isprintable() or c in "\r\n\t\f" for c in text)
    return printable >= 0.95 * len(text)


_MAGIC = (
    (b"\xff\xd8", "JPEG"), (containers.PNG_MAGIC[:4], "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"),
)


def _unidentified(head: bytes, rejected: tuple[str, BaseException] | None) -> ImageError:
    if rejected is not None:
        return ImageError(_header_problem(*rejected))
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return ImageError(
                f"corrupt {fmt} header (the file starts like a {fmt} but cannot be read)")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return ImageError("corrupt WEBP header (the file starts like a WEBP but cannot be read)")
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypmsf1"):
        return ImageError("HEIF/HEIC image: this Pillow cannot decode it (pillow-heif can)")
    if _looks_like_text(head):
        sample = head[:40].decode("utf-8", "replace").replace("\n", " ").strip()
        return ImageError(f"not an image (looks like text: {sample!r})")
    return ImageError(f"unknown image format (first bytes: {head[:8].hex(' ')})")


def _open_unchecked(fp: IO[bytes], name: str) -> ImageFile.ImageFile:
    """Identify ``fp`` like ``Image.open`` does, minus Pillow's decompression-bomb check.

    Pillow's check reads the process-wide ``Image.MAX_IMAGE_PIXELS`` and warns or raises
    on its own terms; veil applies its own limit right after this, and must not change
    that global for everyone else in the process.
    """
    head = fp.read(512)
    fp.seek(0)
    prefix = head[:16]
    tried: set[str] = set()
    rejected: tuple[str, BaseException] | None = None  # first format that claimed the file
    for register in (Image.preinit, Image.init):
        register()
        for fmt in list(Image.ID):
            if fmt in tried:
                continue
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            if accept is not None:
                accepted = accept(prefix)
                if not accepted or isinstance(accepted, str):
                    continue
            fp.seek(0)
            try:
                return factory(fp, name)
            except (SyntaxError, IndexError, TypeError, struct.error) as e:
                if accept is not None:  # a plugin that recognised its magic bytes
                    rejected = rejected or (fmt, e)
                continue  # as Image.open: not this format after all
            except Image.DecompressionBombError as e:
                raise ImageError(_pillow_bomb(e)) from None
            except (OSError, ValueError, EOFError) as e:
                raise ImageError(_header_problem(fmt, e)) from None
    raise _unidentified(head, rejected)


def _pillow_bomb(error: Exception) -> str:
    # A few plugins (WebP on open, TIFF and GIF while decoding) apply Pillow's own hard
    # limit themselves, twice PIL.Image.MAX_IMAGE_PIXELS (about 179 million by default).
    return (f"{error} (Pillow's own limit, which this format applies while decoding; "
            "raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine)")


def _header_problem(fmt: str, error: BaseException) -> str:
    text = str(error)
    if "runcated" in text or isinstance(error, EOFError | struct.error):
        return f"truncated {fmt} data (the file ends inside the header)"
    return f"corrupt {fmt} header: {text or type(error).__name__}"


def _decode_problem(fmt: str | None, error: BaseException) -> str:
    fmt = fmt or "image"
    text = str(error)
    if "truncated" in text.lower() or isinstance(error, EOFError):
        return f"truncated {fmt} data (the file ends before the image data does)"
    if "broken data stream" in text:
        return f"corrupt {fmt} data (broken data stream)"
    if isinstance(error, MemoryError):
        return f"not enough memory to decode this {fmt} image"
    return f"cannot decode {fmt} data: {text or type(error).__name__}"


# --------------------------------------------------------------------------- metadata


def _xmp_orientation(xmp: bytes | str | None) -> int | None:
    if not xmp:
        return None
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", "replace")
    match = _XMP_ORIENTATION.search(xmp)
    return int(match[1]) if match else None


def _exif_kinds(exif: Image.Exif) -> set[str]:
    kinds: set[str] = set()
    plain = set(exif) - {_ORIENTATION, ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo,
                         ExifTags.IFD.Interop}
    exif_ifd = exif.get_ifd(ExifTags.IFD.Exif)
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    ifd1 = exif.get_ifd(ExifTags.IFD.IFD1)
    if plain or exif_ifd or gps or ifd1:
        kinds.add("exif")
    if ifd1:
        kinds.add("exif-thumbnail")
    if gps:
        kinds.add("gps")
    if ExifTags.Base.MakerNote in exif_ifd:
        kinds.add("maker-note")
    return kinds


def _exif_ifd0(raw: bytes) -> tuple[Image.Exif | None, int | None]:
    """(the loaded EXIF block, IFD0's orientation or None); (None, None) if corrupt."""
    exif = Image.Exif()
    try:
        exif.load(raw)
        orientation = exif.get(_ORIENTATION)
    except Exception:  # a corrupt EXIF block is still EXIF, just not a readable one
        return None, None
    return exif, (orientation if isinstance(orientation, int) else None)


def _parse_exif(raw: bytes | None) -> tuple[int | None, set[str]]:
    """(orientation or None, metadata kinds) of an EXIF block ("Exif\\0\\0" prefix optional)."""
    if not raw:
        return None, set()
    exif, orientation = _exif_ifd0(raw)
    if exif is None:
        return None, {"exif"}
    try:
        kinds = _exif_kinds(exif)
    except Exception:  # a corrupt sub-IFD: IFD0's orientation still stands, as for Pillow
        kinds = {"exif"}
    return orientation, kinds


def jpeg_orientation(data: bytes, segments: Sequence[containers.Segment]) -> int | None:
    """The orientation :func:`probe` gives the JPEG ``data`` whose marker ``segments``
    are given, read from its APP1 blocks as Pillow reads them, without Pillow's whole
    header parse and the sub-IFDs probe reads for its metadata kinds: what a
    stage needs to strip a faceless file's metadata. None where only probe can say:
    several EXIF blocks, which Pillow merges."""
    exif: list[bytes] = []
    xmp: bytes | None = None
    for segment in segments:
        if segment.marker == 0xDA:  # Pillow reads the header only: up to the first scan
            break
        if segment.marker != 0xE1:
            continue
        payload = segment.payload(data)
        if payload.startswith(b"Exif\0\0"):
            exif.append(payload)
        elif payload.startswith(_XMP_SIGNATURES[0]):
            xmp = payload.split(b"\0", 1)[1]  # the last one, as Pillow's info["xmp"]
    if len(exif) > 1:
        return None
    orientation = _exif_ifd0(exif[0])[1] if exif else None
    if orientation is None:
        orientation = _xmp_orientation(xmp)
    return orientation if orientation in _TRANSPOSE else 1


def _png_text_kind(keyword: bytes) -> str:
    if keyword == b"XML:com.adobe.xmp":
        return "xmp"
    if keyword.startswith(b"Raw profile type"):
        kind = keyword.removeprefix(b"Raw profile type").strip().lower()
        if kind in (b"exif", b"app1"):
            return "exif"
        if kind in (b"iptc", b"8bim"):
            return "iptc"
        if kind == b"xmp":
            return "xmp"
    return "png-text"


def _png_metadata(fp: IO[bytes]) -> tuple[int | None, set[str], bytes | None]:
    """(EXIF orientation, kinds, XMP text) from the chunk list, wherever the chunks sit."""
    orientation: int | None = None
    kinds: set[str] = set()
    xmp: bytes | None = None
    for chunk in list(containers.png_chunks(fp, strict=False)):
        if chunk.type in (b"tEXt", b"zTXt", b"iTXt"):
            fp.seek(chunk.offset + 8)
            data = fp.read(chunk.length)
            keyword = data.split(b"\0", 1)[0]
            kind = _png_text_kind(keyword)
            kinds.add(kind)
            if kind == "xmp" and chunk.type == b"iTXt":
                xmp = data
        elif chunk.type == b"eXIf":
            fp.seek(chunk.offset + 8)
            found, exif_kinds = _parse_exif(fp.read(chunk.length))
            kinds |= exif_kinds
            orientation = found if orientation is None else orientation
    fp.seek(0)
    return orientation, kinds, xmp


def _inspect(im: ImageFile.ImageFile, fp: IO[bytes]) -> tuple[int, tuple[str, ...]]:
    """(orientation to apply, identifying metadata kinds) of an opened, undecoded image."""
    kinds: set[str] = set()
    orientation: int | None = None
    xmp: bytes | str | None = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if im.format == "PNG":
        orientation, kinds, png_xmp = _png_metadata(fp)
        xmp = xmp or png_xmp
    elif isinstance(im, JpegImagePlugin.JpegImageFile):
        orientation, kinds = _parse_exif(im.info.get("exif"))
        exif_blocks = 0
        for marker, data in im.applist:
            if marker == "APP1" and data.startswith(_XMP_SIGNATURES):
                kinds.add("xmp")
            elif marker == "APP1" and data.startswith(b"Exif\0"):
                exif_blocks += 1
                if exif_blocks > 1:
                    kinds.add("exif")  # only the first block is read; a second is metadata
            elif marker == "APP13":
                kinds.add("iptc")
            elif marker == "COM":
                kinds.add("comment")
    elif im.format == "TIFF":
        try:
            exif = im.getexif()
            tags = set(exif)
            orientation = exif.get(_ORIENTATION)
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
            exif_ifd = exif.get_ifd(ExifTags.IFD.Exif)
        except Exception:
            tags, gps, exif_ifd = {0x8769}, {}, {}
        if tags & _TIFF_IDENTIFYING:
            kinds.add("exif")
        if gps:
            kinds.add("gps")
        if ExifTags.Base.MakerNote in exif_ifd:
            kinds.add("maker-note")
        if 700 in tags:
            kinds.add("xmp")
        if tags & {33723, 34377}:
            kinds.add("iptc")
    else:
        orientation, kinds = _parse_exif(im.info.get("exif"))
    if xmp:
        kinds.add("xmp")
    if im.info.get("comment"):
        kinds.add("comment")
    if orientation is None:
        orientation = _xmp_orientation(xmp)  # Pillow's exif_transpose honours it too
    if orientation not in _TRANSPOSE:
        orientation = 1
    return orientation, tuple(k for k in METADATA_KINDS if k in kinds)


def _format(im: Image.Image) -> str | None:
    # An MPO is a JPEG with more pictures appended (phones write them): a JPEG to users.
    return "JPEG" if im.format == "MPO" else im.format


def _displayed_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _jpeg_source(im: ImageFile.ImageFile) -> JpegSource | None:
    if not isinstance(im, JpegImagePlugin.JpegImageFile):
        return None
    return JpegSource(
        quantization={k: [int(v) for v in t] for k, t in im.quantization.items()},
        subsampling=JpegImagePlugin.get_sampling(im),
        progressive=bool(im.info.get("progressive") or im.info.get("progression")),
        components=int(getattr(im, "layers", 3)),
    )


# --------------------------------------------------------------------------- pixels


def as_rgb(image: Image.Image) -> Image.Image:
    """The image as RGB uint8, by veil's one colour rule (see the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I"):  # I;16, I;16L, I;16B, I;16N, I: 16-bit range, scaled
        values = np.asarray(image)
        if values.dtype.kind == "i":
            values = np.clip(values, 0, 65535)
        values = values.astype(np.uint32)  # 65535 * 255 fits
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        # Through RGBA so Pillow does not warn about byte transparency; the colours
        # are the palette's, exactly what convert("RGB") gives.
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


# --------------------------------------------------------------------------- public


def _opened(
    source: str | os.PathLike[str] | bytes, stack: ExitStack, max_pixels: int | None
) -> tuple[ImageFile.ImageFile, IO[bytes], int]:
    limit = max_pixels_limit(max_pixels)
    fp = _open_file(source, stack)
    try:
        raw = isinstance(source, bytes | bytearray | memoryview)
        im = _open_unchecked(fp, "" if raw else os.fsdecode(source))
    except ImageError:
        raise
    except _PIL_ERRORS as e:
        raise ImageError(_header_problem("image", e)) from None
    stack.callback(im.close)
    _check_pixels(im.size, limit)
    return im, fp, limit


_PLAIN_SOF = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive Huffman
_PLAIN_SKIPPED = frozenset({0xC4, 0xDD})  # DHT, DRI


@dataclass(frozen=True)
class PlainJpeg:
    """What :func:`plain_jpeg_header` read of a plain JPEG's header."""

    width: int
    height: int
    icc: bool  # an ICC profile (APP2) is there


def plain_jpeg(data: bytes, max_pixels: int | None = None) -> bool:
    """Whether ``data`` begins like a plain 8-bit JPEG with no identifying metadata
    (see :func:`plain_jpeg_header`)."""
    return plain_jpeg_header(data, max_pixels) is not None


def plain_jpeg_header(data: bytes, max_pixels: int | None = None) -> PlainJpeg | None:
    """The size of ``data`` if it begins like a plain 8-bit JPEG with no identifying
    metadata, else None.

    A quick walk over the marker segments before the first scan, without Pillow, for
    stages that copy many faceless files. True only where :func:`probe` would find a
    JPEG of 1 or 3 components within the pixel limit, orientation 1 and no metadata:
    JFIF APP0, ICC APP2 and Adobe APP14 besides the tables and one SOF0/1/2 frame, all
    well formed. Anything else (EXIF, XMP, IPTC, comments, other APPn, MPO, fill bytes,
    odd tables, ``data`` cut before the scan) gives None: ask :func:`probe`. The entropy
    coded data is not read, as probe does not read it either.
    """
    if not containers.is_jpeg(data):
        return None
    try:
        segments = containers.jpeg_header(data)
    except ImageError:
        return None
    frame, tables, icc = None, False, False  # frame: (height, width)
    for segment in segments[:-1]:  # the last is the first scan's header
        marker, length = segment.marker, segment.length
        start, end = segment.start + 4, segment.end
        if segment.fill:
            return None
        if marker == 0xDB:
            while start < end:  # 8-bit tables 0-3 only (Pillow takes 16-bit ones too)
                if data[start] > 3 or start + 65 > end:
                    return None
                start += 65
            tables = True
        elif marker in _PLAIN_SOF:
            layers = data[start + 5] if start + 6 <= end else 0
            if frame is not None or data[start] != 8 or layers not in (1, 3) \
                    or length != 8 + 3 * layers:
                return None
            frame = ((data[start + 1] << 8) | data[start + 2],
                     (data[start + 3] << 8) | data[start + 4])
        elif marker == 0xE0:  # JFIF, and no thumbnail in it
            if containers.jfif_thumbnail(data, segment) is not False:
                return None
        elif marker == 0xE2:
            if length < 16 or data[start:start + 12] != b"ICC_PROFILE\0":
                return None
            icc = True
        elif marker == 0xEE:
            if length < 14 or data[start:start + 5] != b"Adobe":
                return None
        elif marker not in _PLAIN_SKIPPED:
            return None
    if segments[-1].fill:
        return None
    if frame is None or not tables or frame[0] == 0 or frame[1] == 0:
        return None
    if frame[0] * frame[1] > max_pixels_limit(max_pixels):
        return None
    return PlainJpeg(width=frame[1], height=frame[0], icc=icc)


def probe(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int | None = None
) -> ImageProbe:
    """Size as displayed, format, orientation and metadata, read from the header only.

    Refuses images over the pixel limit, as ``load_image`` does; does *not* notice
    truncated pixel data, which only decoding reveals.
    """
    with ExitStack() as stack:
        im, fp, _ = _opened(source, stack, max_pixels)
        try:
            orientation, metadata = _inspect(im, fp)
        except _PIL_ERRORS as e:
            raise ImageError(_header_problem(im.format or "image", e)) from None
        width, height = _displayed_size(im.size, orientation)
        icc = im.info.get("icc_profile") or None
        return ImageProbe(width, height, _format(im), im.mode, orientation, metadata,
                          bytes(icc) if icc else None)


@dataclass(frozen=True)
class _Decoded:
    image: Image.Image  # frame 0, as displayed, detached from the file
    format: str | None
    orientation: int
    metadata: tuple[str, ...]
    jpeg: JpegSource | None
    icc_profile: bytes | None


def _decode(
    source: str | os.PathLike[str] | bytes,
    max_pixels: int | None,
    finish: Callable[[Image.Image], Image.Image],
) -> _Decoded:
    """Open, check, decode and orient frame 0; ``finish`` converts it before the file closes."""
    with ExitStack() as stack:
        im, fp, _ = _opened(source, stack, max_pixels)
        fmt = _format(im)
        try:
            orientation, metadata = _inspect(im, fp)
            jpeg = _jpeg_source(im)
            icc = im.info.get("icc_profile") or None
            pillow_limit = Image.MAX_IMAGE_PIXELS
            if pillow_limit is not None and im.size[0] * im.size[1] > pillow_limit:
                # Within veil's limit but over Pillow's: some plugins re-check frames
                # or tiles while decoding; veil's limit has already decided.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    im.load()
            else:
                im.load()
            out = finish(im)
            if orientation != 1:
                out = out.transpose(_TRANSPOSE[orientation])
            elif out is im and (getattr(im, "map", None) is not None or im.readonly):
                out = im.copy()  # a plain image that holds no file (nor a file's mapping)
            elif out is im:
                out = im._new(im.im)  # decoded into its own memory: detached without a copy
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(_pillow_bomb(e)) from None
        except _PIL_ERRORS as e:
            raise ImageError(_decode_problem(fmt, e)) from None
    return _Decoded(out, fmt, orientation, metadata, jpeg, bytes(icc) if icc else None)


def load_image(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int | None = None
) -> LoadedImage:
    """Decode ``source`` (a path or the file's bytes) into RGB pixels as displayed.

    Multi-frame files (GIF, APNG, MPO, TIFF) give their first frame.
    """
    decoded = _decode(source, max_pixels, as_rgb)
    image = decoded.image
    image.info = {}  # nothing from the source may ride along into an encoder
    return LoadedImage(
        image=image,
        format=decoded.format,
        width=image.width,
        height=image.height,
        orientation=decoded.orientation,
        jpeg=decoded.jpeg,
        icc_profile=decoded.icc_profile,
        metadata=decoded.metadata,
    )


def decode_native(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int | None = None
) -> Image.Image:
    """Frame 0 in the source's own mode (alpha, 16 bit, palette kept), as displayed.

    For lossless re-encoding: ``info`` keeps only ``transparency`` and ``icc_profile``
    (colour, not identity), so no metadata can ride along into a writer. ``as_rgb`` of
    the result equals ``load_image(...).image``.
    """
    image = _decode(source, max_pixels, lambda im: im).image
    image.info = {k: v for k, v in image.info.items() if k in ("transparency", "icc_profile")}
    return image


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks (never the whole file in memory)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise ImageError(f"file not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise ImageError(f"is a directory, not an image file: {os.fspath(path)}") from None
    except OSError as e:
        raise ImageError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None
