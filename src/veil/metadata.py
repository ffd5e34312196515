"""Which identifying metadata a file carries, field by field, for the audit's findings.

:func:`veil.images.probe` says *which kinds* of identifying metadata a file holds (EXIF,
GPS, XMP, ...), enough to decide whether to strip it. A release manager reading an audit
needs more: *which field* leaks (``EXIF GPS GPSLatitude``, ``XMP dc:creator``, ``IPTC
2:80 By-line``, ``PNG tEXt Author``). :func:`identifying_fields` reads them from the
container structure (:mod:`veil.containers`) and the EXIF blocks (Pillow's parser):

* JPEG: EXIF (IFD0, Exif, GPS, IFD1 thumbnail, MakerNote), XMP packets (GPS and
  person/place names called out), Photoshop APP13 (IPTC datasets by name, thumbnails,
  EXIF or XMP inside it), comments, JFIF/JFXX thumbnails, MPF (more pictures in the
  file), other APPn blocks, and bytes after the end of the image;
* PNG: text chunks by keyword (XMP and ImageMagick's raw EXIF/IPTC profiles read
  inside), ``eXIf``;
* other formats (WebP, TIFF, GIF, ...): what Pillow exposes (EXIF, XMP, IPTC, comment).

Only the field names are reported, never their values: the report itself must not
spread what it found. Nothing is decoded but metadata; a broken block is reported as
what it claims to be (a corrupt EXIF block is still EXIF).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PIL import ExifTags, Image

from veil import containers
from veil.errors import ImageError

__all__ = ["FIELD_KINDS", "MetadataField", "group_fields", "identifying_fields"]

FIELD_KINDS = ("exif", "exif-thumbnail", "gps", "xmp", "iptc", "comment", "png-text",
               "maker-note", "thumbnail", "trailer")
"""The kinds :func:`identifying_fields` reports, in report order: those of
:data:`veil.images.METADATA_KINDS`, then other embedded pictures (JFIF/JFXX or Photoshop
thumbnails, MPF pictures) and bytes after the image's end."""

_ORIENTATION = 0x0112
_IFD_POINTERS = frozenset({0x8769, 0x8825, 0xA005})  # Exif, GPS, Interop IFD offsets
_MAKER_NOTE = 0x927C
_XMP_SIGNATURE = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXTENSION = b"http://ns.adobe.com/xmp/extension/\x00"
_TRAILER_SLACK = 16  # bytes after EOI some encoders leave (padding), not worth a finding
_LISTED = 12  # field names listed per finding before "and N more"

# XMP properties that name a person or a place (the rest are listed by name too).
_XMP_PEOPLE = frozenset({
    "dc:creator", "dc:contributor", "dc:publisher", "dc:rights", "xmpRights:Owner",
    "photoshop:AuthorsPosition", "photoshop:CaptionWriter", "photoshop:Credit",
    "Iptc4xmpCore:CreatorContactInfo", "Iptc4xmpExt:PersonInImage",
    "Iptc4xmpExt:PersonInImageWDetails", "mwg-rs:Name", "MP:PersonDisplayName",
    "MPReg:PersonDisplayName", "aux:OwnerName", "exifEX:CameraOwnerName",
    "exifEX:BodySerialNumber", "aux:SerialNumber", "plus:ImageCreator",
})
_XMP_PLACES = frozenset({
    "photoshop:City", "photoshop:State", "photoshop:Country", "Iptc4xmpCore:Location",
    "Iptc4xmpCore:CountryCode", "Iptc4xmpExt:LocationShown", "Iptc4xmpExt:LocationCreated",
})
_XMP_STRUCTURE = frozenset({"rdf", "x", "xml", "xmlns", "xmpMeta", "xmpmeta"})
_XMP_NAME = r"([A-Za-z_][\w.-]*):([A-Za-z_][\w.-]*)"
_XMP_ELEMENT = re.compile(rb"<" + _XMP_NAME.encode() + rb"[\s>/]")
_XMP_ATTRIBUTE = re.compile(rb"\s" + _XMP_NAME.encode() + rb"\s*=\s*[\"']")

# IPTC-IIM application record (2) datasets, by number (IPTC IIM 4.2, section 6).
_IPTC_NAMES = {
    0: "Record Version", 5: "Object Name", 7: "Edit Status", 10: "Urgency", 15: "Category",
    20: "Supplemental Category", 25: "Keywords", 40: "Special Instructions",
    55: "Date Created", 60: "Time Created", 62: "Digital Creation Date",
    63: "Digital Creation Time", 65: "Originating Program", 80: "By-line",
    85: "By-line Title", 90: "City", 92: "Sub-location", 95: "Province/State",
    100: "Country Code", 101: "Country Name", 103: "Original Transmission Reference",
    105: "Headline", 110: "Credit", 115: "Source", 116: "Copyright Notice", 118: "Contact",
    120: "Caption/Abstract", 122: "Writer/Editor",
}
_PS_IPTC, _PS_EXIF, _PS_XMP = 0x0404, 0x0422, 0x0424
_PS_THUMBNAILS = frozenset({0x0409, 0x040C})


@dataclass(frozen=True)
class MetadataField:
    """One identifying field: its ``kind`` (one of :data:`FIELD_KINDS`) and where it is
    (``field``: container and name, e.g. ``EXIF GPS GPSLatitude``)."""

    kind: str
    field: str


def identifying_fields(data: bytes) -> list[MetadataField]:
    """Every identifying metadata field of the file ``data``, in file order, without
    duplicates. Raises :class:`~veil.errors.ImageError` only for a file no reader
    recognises (a JPEG or PNG whose structure breaks lists what came before)."""
    if containers.is_jpeg(data):
        fields = _jpeg_fields(data)
    elif containers.is_png(data):
        fields = _png_fields(data)
    else:
        fields = _pillow_fields(data)
    return list(dict.fromkeys(fields))


def group_fields(fields: Iterable[MetadataField]) -> list[tuple[str, list[str]]]:
    """(kind, field names) per kind, in :data:`FIELD_KINDS` order: one finding each."""
    by_kind: dict[str, list[str]] = {}
    for f in fields:
        by_kind.setdefault(f.kind, []).append(f.field)
    return [(kind, by_kind[kind]) for kind in FIELD_KINDS if kind in by_kind]


def describe(kind: str, names: list[str]) -> str:
    """A finding's text: ``gps: EXIF GPS GPSLatitude, EXIF GPS GPSLongitude``."""
    shown = ", ".join(names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{kind}: {shown}{more}"


# --------------------------------------------------------------------------- EXIF


def exif_fields(raw: bytes, where: str = "EXIF") -> list[MetadataField]:
    """The fields of an EXIF block (``Exif\\0\\0`` prefix optional), named by Pillow's
    tag tables; the orientation tag alone is not identifying (veil keeps it)."""
    exif = Image.Exif()
    try:
        exif.load(raw)
        ifd0 = {tag: value for tag, value in exif.items() if tag not in _IFD_POINTERS}
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        ifd1 = exif.get_ifd(ExifTags.IFD.IFD1)
    except Exception:  # Pillow raises many types on a corrupt block
        return [MetadataField("exif", f"{where} (a block Pillow cannot read)")]
    fields = [MetadataField("exif", f"{where} {_tag(tag)}") for tag in ifd0
              if tag != _ORIENTATION]
    for tag in sub:
        kind = "maker-note" if tag == _MAKER_NOTE else "exif"
        fields.append(MetadataField(kind, f"{where} {_tag(tag)}"))
    fields += [MetadataField("gps", f"{where} GPS {ExifTags.GPSTAGS.get(tag, _hex(tag))}")
               for tag in gps]
    if ifd1:
        thumbnail = 0x0201 in ifd1 or 0x0111 in ifd1
        fields.append(MetadataField(
            "exif-thumbnail", f"{where} IFD1 " + ("thumbnail (JPEGInterchangeFormat)"
                                                  if thumbnail else "(second image's tags)")))
    return fields


def _tag(tag: int) -> str:
    return ExifTags.TAGS.get(tag, _hex(tag))


def _hex(tag: int) -> str:
    return f"tag 0x{tag:04X}"


# --------------------------------------------------------------------------- XMP


def xmp_fields(packet: bytes, where: str = "XMP") -> list[MetadataField]:
    """The properties an XMP packet sets, by qualified name (``exif:GPSLatitude``,
    ``dc:creator``): GPS ones as ``gps``, the rest as ``xmp``, people and places said so.
    Read with patterns, not an XML parser, so a malformed packet still names its fields."""
    names = [f"{p.decode('ascii', 'replace')}:{n.decode('ascii', 'replace')}"
             for pattern in (_XMP_ELEMENT, _XMP_ATTRIBUTE) for p, n in pattern.findall(packet)
             if p.decode("ascii", "replace") not in _XMP_STRUCTURE]
    fields = []
    for name in dict.fromkeys(names):
        local = name.split(":", 1)[1]
        if local.startswith("GPS"):
            fields.append(MetadataField("gps", f"{where} {name}"))
        elif name in _XMP_PEOPLE:
            fields.append(MetadataField("xmp", f"{where} {name} (a person)"))
        elif name in _XMP_PLACES:
            fields.append(MetadataField("xmp", f"{where} {name} (a place)"))
        else:
            fields.append(MetadataField("xmp", f"{where} {name}"))
    if not fields:
        fields.append(MetadataField("xmp", f"{where} packet"))
    # people, places and GPS first: they are what a reader must see
    return sorted(fields, key=lambda f: not f.field.endswith(("(a person)", "(a place)")))


# --------------------------------------------------------------------------- IPTC


def iptc_fields(data: bytes, where: str = "IPTC") -> list[MetadataField]:
    """IPTC-IIM datasets by number and name (``IPTC 2:80 By-line``)."""
    fields = []
    for record, dataset, _ in containers.iptc_datasets(data):
        name = _IPTC_NAMES.get(dataset, "") if record == 2 else ""
        label = f"{where} {record}:{dataset}" + (f" {name}" if name else "")
        fields.append(MetadataField("iptc", label))
    return fields or [MetadataField("iptc", f"{where} block")]


def photoshop_fields(payload: bytes) -> list[MetadataField]:
    """What a Photoshop APP13 block holds: IPTC datasets, thumbnails, EXIF or XMP."""
    fields: list[MetadataField] = []
    for ident, data in containers.photoshop_resources(payload):
        if ident == _PS_IPTC:
            fields += iptc_fields(data)
        elif ident in _PS_THUMBNAILS:
            fields.append(MetadataField("thumbnail", f"Photoshop thumbnail (resource "
                                                     f"0x{ident:04X})"))
        elif ident == _PS_EXIF:
            fields += exif_fields(data, "Photoshop EXIF")
        elif ident == _PS_XMP:
            fields += xmp_fields(data, "Photoshop XMP")
    return fields or [MetadataField("iptc", "Photoshop APP13 block")]


# --------------------------------------------------------------------------- JPEG


def _jpeg_fields(data: bytes) -> list[MetadataField]:
    fields: list[MetadataField] = []
    try:
        segments = containers.jpeg_segments(data)
    except ImageError:
        return [MetadataField("exif", "JPEG structure (unreadable: metadata not listed)")]
    extended_xmp = b""
    for segment in segments:
        marker, payload = segment.marker, segment.payload(data)
        if marker == 0xE1 and payload.startswith(b"Exif\0"):
            fields += exif_fields(payload)
        elif marker == 0xE1 and payload.startswith(_XMP_SIGNATURE):
            fields += xmp_fields(payload[len(_XMP_SIGNATURE):])
        elif marker == 0xE1 and b"<x:xmpmeta" in payload[:256]:  # a malformed XMP header
            fields += xmp_fields(payload[payload.find(b"<x:xmpmeta"):], "XMP (odd header)")
        elif marker == 0xE1 and payload.startswith(_XMP_EXTENSION):
            extended_xmp += payload[len(_XMP_EXTENSION) + 40:]  # GUID, length, offset
        elif marker == 0xED:
            fields += photoshop_fields(payload)
        elif marker == 0xFE:
            fields.append(MetadataField("comment", f"JPEG comment (COM, {len(payload)} "
                                                   "bytes)"))
        elif marker == 0xE0:
            if containers.jfif_thumbnail(data, segment):
                fields.append(MetadataField("thumbnail", "JFIF thumbnail (APP0)"))
            elif payload.startswith(b"JFXX\0"):
                fields.append(MetadataField("thumbnail", "JFXX thumbnail (APP0)"))
        elif marker == 0xE2 and payload.startswith(b"MPF\0"):
            fields.append(MetadataField("thumbnail", "MPF: more pictures in the file (APP2)"))
        elif 0xE1 <= marker <= 0xEF and not _harmless_app(marker, payload):
            name = payload[:payload.find(b"\0")] if b"\0" in payload[:32] else payload[:8]
            label = name.decode("ascii", "replace").strip() or "unnamed"
            fields.append(MetadataField("exif", f"APP{marker - 0xE0} block ({label})"))
    if extended_xmp:
        fields += xmp_fields(extended_xmp, "XMP (extended)")
    end = segments[-1].end if segments else len(data)
    if segments and segments[-1].marker == 0xD9 and len(data) - end > _TRAILER_SLACK:
        picture = b"\xff\xd8\xff" in data[end:]
        fields.append(MetadataField(
            "trailer", f"{len(data) - end} bytes after the end of the image"
            + (" (another JPEG picture among them)" if picture else "")))
    return fields


def _harmless_app(marker: int, payload: bytes) -> bool:
    """Blocks that describe colour, not people: ICC profiles (APP2), Adobe (APP14)."""
    return ((marker == 0xE2 and payload.startswith(b"ICC_PROFILE\0"))
            or (marker == 0xEE and payload.startswith(b"Adobe")))


# --------------------------------------------------------------------------- PNG


def _png_fields(data: bytes) -> list[MetadataField]:
    fields: list[MetadataField] = []
    try:
        chunks = list(containers.png_chunks(data, strict=False))
    except ImageError:
        return [MetadataField("png-text", "PNG structure (unreadable: metadata not listed)")]
    for chunk in chunks:
        body = data[chunk.offset + 8:chunk.offset + 8 + chunk.length]
        if chunk.type in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = containers.png_text(chunk.type, body)
            fields += _png_text_fields(chunk.type.decode("latin-1"), keyword, text)
        elif chunk.type == b"eXIf":
            fields += exif_fields(body, "PNG eXIf")
    return fields


def _png_text_fields(ctype: str, keyword: bytes, text: bytes) -> list[MetadataField]:
    name = keyword.decode("latin-1", "replace")
    if keyword == b"XML:com.adobe.xmp":
        return xmp_fields(text, f"PNG {ctype} XMP")
    if keyword.startswith(b"Raw profile type"):
        profile = keyword.removeprefix(b"Raw profile type").strip().lower()
        raw = _raw_profile(text)
        where = f"PNG {ctype} {name}"
        if profile in (b"exif", b"app1") and raw is not None:
            return exif_fields(raw, where)
        if profile == b"iptc" and raw is not None:
            return iptc_fields(raw, where)
        if profile == b"8bim" and raw is not None:
            return photoshop_fields(raw)
        if profile == b"xmp" and raw is not None:
            return xmp_fields(raw, where)
        kind = {b"iptc": "iptc", b"8bim": "iptc", b"xmp": "xmp"}.get(profile, "exif")
        return [MetadataField(kind, where)]
    return [MetadataField("png-text", f"PNG {ctype} {name}")]


def _raw_profile(text: bytes) -> bytes | None:
    """ImageMagick's raw profile: ``\\n<type>\\n<length>\\n<hex lines>``, decoded."""
    lines = text.strip().split(b"\n")
    try:
        return bytes.fromhex(b"".join(lines[2:]).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------- others


def _pillow_fields(data: bytes) -> list[MetadataField]:
    """WebP, TIFF, GIF and the rest: the metadata Pillow exposes when it opens the file."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "image"
            info = dict(im.info)
            if fmt == "TIFF":
                return _tiff_fields(im.getexif(), info)
    except Exception as exc:  # not a format Pillow reads: the audit reports that elsewhere
        raise ImageError(f"cannot read the metadata: {exc}") from None
    fields: list[MetadataField] = []
    if info.get("exif"):
        fields += exif_fields(info["exif"], f"{fmt} EXIF")
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if xmp:
        fields += xmp_fields(xmp.encode() if isinstance(xmp, str) else xmp, f"{fmt} XMP")
    if info.get("comment"):
        fields.append(MetadataField("comment", f"{fmt} comment"))
    return fields


# Descriptive TIFF tags (the rest describe the pixels): as veil.images reads them.
_TIFF_DESCRIPTIVE = frozenset({269, 270, 271, 272, 305, 306, 315, 316, 33432, 42016})


def _tiff_fields(exif: Image.Exif, info: dict[str | tuple[int, int], Any]
                 ) -> list[MetadataField]:
    fields = [MetadataField("exif", f"TIFF {_tag(tag)}") for tag in exif
              if tag in _TIFF_DESCRIPTIVE]
    for tag in exif.get_ifd(ExifTags.IFD.Exif):
        kind = "maker-note" if tag == _MAKER_NOTE else "exif"
        fields.append(MetadataField(kind, f"TIFF EXIF {_tag(tag)}"))
    fields += [MetadataField("gps", f"TIFF GPS {ExifTags.GPSTAGS.get(tag, _hex(tag))}")
               for tag in exif.get_ifd(ExifTags.IFD.GPSInfo)]
    xmp = exif.get(700) or info.get("xmp")
    if xmp:
        fields += xmp_fields(xmp.encode() if isinstance(xmp, str) else bytes(xmp), "TIFF XMP")
    if 33723 in exif:
        fields.append(MetadataField("iptc", "TIFF IPTC (tag 33723)"))
    if 34377 in exif:
        fields.append(MetadataField("iptc", "TIFF Photoshop resources (tag 34377)"))
    return fields
