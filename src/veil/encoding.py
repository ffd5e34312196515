"""Write images so that nothing identifying leaves with them.

* ``encode_image`` turns obfuscated pixels into file bytes. JPEG sources are re-encoded
  with their own quantisation tables and subsampling, so pixels no box touched change
  about as little as a re-encode can make them (no second generation of quality loss).
  No EXIF, XMP, IPTC or comment is ever written: the pixels are already as displayed,
  so no orientation tag is needed either. The ICC profile is kept when it describes the
  output's colour space. Same input, same bytes.
* ``jpeg_with_colour_and_orientation`` gives a JPEG that libjpeg wrote without any
  marker of the source (the JPEG-domain output) the two the rules keep: the ICC profile
  when it describes the image's colour space, and a minimal EXIF holding only the
  orientation when the stored pixels are not as displayed.
* ``strip_identifying_metadata`` cleans a file that is copied rather than re-encoded
  (an image without faces), without touching its compressed pixel data.

Writing the bytes to disk, atomically, is :mod:`veil.files`' job.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib

import numpy as np
from PIL import Image

from veil import containers
from veil.images import LoadedImage, as_rgb, decode_native, jpeg_orientation, probe

__all__ = [
    "SUFFIXES",
    "encode_image",
    "jpeg_with_colour_and_orientation",
    "strip_identifying_metadata",
]

#: The suffix ``encode_image`` returns for each output format.
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tiff", "BMP": ".bmp"}
_KEPT_LOSSLESS = ("PNG", "WEBP", "TIFF", "BMP")
_PNG_DROPPED = frozenset({b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"})
_ORIENTATION_TAG = 0x0112
_NO_LIMIT = sys.maxsize  # stripping a file must not refuse what the run already accepted


# --------------------------------------------------------------------------- encode


def _icc_for(profile: bytes | None, mode: str) -> bytes | None:
    """The profile if it describes ``mode``'s colour space (a CMYK profile on RGB lies)."""
    if not profile or len(profile) < 128:
        return None
    space = profile[16:20]
    wanted = b"GRAY" if mode == "L" else b"RGB "
    return profile if space == wanted else None


def _is_grey(image: Image.Image) -> bool:
    if image.mode == "L":
        return True
    a = np.asarray(image)
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _oriented_tables(tables: dict[int, list[int]], orientation: int) -> list[list[int]]:
    """The source tables, transposed when the pixels were turned by 90 degrees.

    Orientations 5-8 swap the axes, so a DCT coefficient (u, v) of the stored image is
    (v, u) of the displayed one; its quantiser step moves with it.
    """
    out = [list(tables[k]) for k in sorted(tables)]
    if orientation in (5, 6, 7, 8):
        out = [[t[8 * (i % 8) + i // 8] for i in range(64)] for t in out]
    return out


def _save_jpeg(image: Image.Image, source: LoadedImage, out: io.BytesIO, quality: int) -> None:
    options: dict[str, object] = {"comment": b"", "exif": b"", "xmp": b""}
    jpeg = source.jpeg
    if jpeg is not None and jpeg.components in (1, 3) and jpeg.quantization:
        tables = _oriented_tables(jpeg.quantization, source.orientation)
        if jpeg.components == 1 and _is_grey(image):
            image = image.convert("L")  # a greyscale source stays one component
            tables = tables[:1]
        options.update(qtables=tables, progressive=jpeg.progressive)
        subsampling = jpeg.subsampling
        if subsampling == 1 and source.orientation in (5, 6, 7, 8):
            subsampling = 0  # turned 4:2:2 is 4:4:0, which Pillow cannot write; keep it all
        if subsampling != -1 and image.mode == "RGB":
            options["subsampling"] = subsampling
    else:
        # No tables to reuse (not a JPEG, or CMYK whose tables quantise other channels).
        options["quality"] = quality
    options["icc_profile"] = _icc_for(source.icc_profile, image.mode)
    image.save(out, "JPEG", **options)


def _target_format(source: LoadedImage, fmt: str) -> str:
    if fmt == "png":
        return "PNG"
    if fmt == "jpeg" or source.jpeg is not None:
        return "JPEG"
    if source.format in _KEPT_LOSSLESS:
        return source.format
    return "PNG"  # GIF, AVIF, JPEG 2000, ...: no lossless writer for RGB pixels


def encode_image(
    image: Image.Image, source: LoadedImage, *, fmt: str = "keep", jpeg_quality: int = 95
) -> tuple[bytes, str]:
    """Encode ``image`` (pixels as displayed) for ``source``; returns (bytes, suffix).

    ``fmt="keep"``: JPEG (incl. MPO) sources -> JPEG with the source's quantisation
    tables, subsampling and progressiveness; PNG, WEBP (lossless), TIFF (LZW) and BMP
    -> the same format, lossless; anything else -> PNG. ``fmt="png"``: lossless PNG.
    Lossless means: of the RGB uint8 pixels veil works on (a 16-bit or alpha source
    comes out 8-bit RGB, as ``load_image`` gave it).
    ``fmt="jpeg"``: JPEG sources as in keep, others at ``jpeg_quality``. CMYK JPEG
    sources are written as RGB at ``jpeg_quality``: their tables belong to other channels.
    Nothing from ``image.info`` is written, whatever it holds.
    """
    if fmt not in ("keep", "png", "jpeg"):
        raise ValueError(f"fmt must be 'keep', 'png' or 'jpeg', got {fmt!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be within 1..100, got {jpeg_quality}")
    if image.mode not in ("RGB", "L"):
        image = as_rgb(image)
    target = _target_format(source, fmt)
    out = io.BytesIO()
    icc = _icc_for(source.icc_profile, image.mode)
    if target == "JPEG":
        _save_jpeg(image, source, out, jpeg_quality)
    elif target == "PNG":
        image.save(out, "PNG", optimize=False, icc_profile=icc, transparency=None)
    elif target == "WEBP":
        image.save(out, "WEBP", lossless=True, quality=80, method=4, icc_profile=icc or b"",
                   exif=b"", xmp=b"")
    elif target == "TIFF":
        image.save(out, "TIFF", compression="tiff_lzw", icc_profile=icc)
    else:
        image.save(out, target)
    return out.getvalue(), SUFFIXES[target]


_ICC_CHUNK = 65519 - 14  # an APP2 segment's payload, less "ICC_PROFILE\0", seq, count


def jpeg_with_colour_and_orientation(data: bytes, icc_profile: bytes | None, orientation: int,
                                     *, grey: bool) -> bytes:
    """``data`` (a JPEG libjpeg wrote with no copied markers) with the ICC profile, if it
    describes the image's colour space, and the orientation tag, if not 1, put back.

    Nothing else is added: the rules of :func:`strip_identifying_metadata`, without
    walking the entropy-coded data to find out what is there.
    """
    if data[:2] != containers.JPEG_SOI:
        raise ValueError("not a JPEG")
    first = containers.jpeg_header(data)[0]
    at = first.end if first.marker == 0xE0 else 2  # libjpeg's JFIF APP0 stays first
    segments = bytearray()
    if orientation != 1:
        payload = _orientation_exif(orientation)
        segments += b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    icc = _icc_for(icc_profile, "L" if grey else "RGB")
    if icc:
        chunks = [icc[i:i + _ICC_CHUNK] for i in range(0, len(icc), _ICC_CHUNK)]
        for seq, chunk in enumerate(chunks, 1):
            payload = b"ICC_PROFILE\0" + bytes((seq, len(chunks))) + chunk
            segments += b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload
    return data[:at] + bytes(segments) + data[at:]


# --------------------------------------------------------------------------- strip


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    if marker == 0xE0:
        return payload.startswith(b"JFIF\0")  # JFXX carries a thumbnail
    if marker == 0xE2:
        return payload.startswith(b"ICC_PROFILE\0")  # not MPF or FlashPix
    if marker == 0xEE:
        return payload.startswith(b"Adobe")  # colour transform flag: pixels depend on it
    # Every other APPn (EXIF, XMP, IPTC, JUMBF, maker blocks) and COM carry metadata.
    return not (0xE0 <= marker <= 0xEF or marker == 0xFE)


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = orientation
    return exif.tobytes()  # b"Exif\0\0" + a TIFF block with one tag


def _strip_jpeg(data: bytes) -> bytes:
    segments = containers.jpeg_segments(data)
    orientation = jpeg_orientation(data, segments)
    if orientation is None:  # several EXIF blocks: Pillow's merge decides
        orientation = probe(data, max_pixels=_NO_LIMIT).orientation
    out = bytearray(data[:2])
    insert_at = 2
    for segment in segments:
        marker, start, end = segment.marker, segment.start, segment.end
        if _keep_jpeg_segment(marker, data[start + 4:start + 16]):
            if marker == 0xE0 and len(out) == 2:
                insert_at = 2 + end - start  # EXIF goes after a leading JFIF APP0
            out += data[start:end]
    # Anything after EOI (MPO's second picture, vendor trailers) is dropped with it.
    if orientation != 1:
        payload = _orientation_exif(orientation)
        out[insert_at:insert_at] = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return bytes(out)


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload)
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def _strip_png(data: bytes) -> bytes:
    orientation = probe(data, max_pixels=_NO_LIMIT).orientation
    out = bytearray(containers.PNG_MAGIC)
    pending_exif = orientation != 1
    for chunk in containers.png_chunks(data):
        if chunk.type == b"IDAT" and pending_exif:
            out += _png_chunk(b"eXIf", _orientation_exif(orientation)[6:])
            pending_exif = False
        if chunk.type not in _PNG_DROPPED:
            out += data[chunk.offset:chunk.end]
    # and nothing after IEND
    return bytes(out)


def _reencode_clean(data: bytes) -> bytes:
    """Lossless re-encode, same format where Pillow writes it losslessly, else PNG."""
    fmt = probe(data, max_pixels=_NO_LIMIT).format
    image = decode_native(data, max_pixels=_NO_LIMIT)  # oriented: no tag needed after
    transparency = image.info.get("transparency")
    icc = image.info.get("icc_profile")  # colour, not identity: kept
    out = io.BytesIO()
    try:
        if fmt == "WEBP":
            image.save(out, "WEBP", lossless=True, exact=True, icc_profile=icc or b"",
                       exif=b"", xmp=b"")
        elif fmt == "TIFF":
            image.save(out, "TIFF", compression="tiff_lzw", icc_profile=icc)
        elif fmt == "BMP":
            image.save(out, "BMP")
        elif fmt == "GIF" and image.mode in ("P", "L"):
            image.save(out, "GIF", transparency=transparency, comment=b"")
        else:
            raise ValueError("no lossless writer for this format")
    except (OSError, ValueError, KeyError):
        out = io.BytesIO()
        if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            image = as_rgb(image)
        image.save(out, "PNG", optimize=False, transparency=transparency, icc_profile=icc)
    return out.getvalue()


def strip_identifying_metadata(data: bytes) -> bytes:
    """``data`` without identifying metadata; the decoded pixels stay exactly the same.

    JPEG: marker segments are walked and EXIF, XMP, IPTC, COM and every other metadata
    APPn are dropped, as is anything after EOI; JFIF APP0, ICC APP2, Adobe APP14 and all
    tables, frame headers and entropy-coded data are kept byte for byte. PNG: tEXt, zTXt,
    iTXt, eXIf and tIME chunks are dropped, every other chunk kept byte for byte. If the
    source's orientation is not 1, a minimal EXIF holding only the Orientation tag is put
    back, so the image (and every box) displays as before. Other formats are decoded and
    re-encoded losslessly without metadata, with the orientation applied to the pixels:
    WEBP (lossless), TIFF, BMP and GIF (first frame) keep their format, anything else
    becomes PNG (check ``veil.images.probe(result).format``).
    """
    if containers.is_jpeg(data):
        return _strip_jpeg(data)
    if containers.is_png(data):
        return _strip_png(data)
    return _reencode_clean(data)
