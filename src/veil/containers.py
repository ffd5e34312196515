"""The container structure of JPEG and PNG files: where each marker segment or chunk is,
and the frame, table and restart fields of a JPEG header. Nothing is decoded here.

One reader, used by decoding (:mod:`veil.images`: ``plain_jpeg`` and the PNG metadata
scan), metadata forensics and stripping (:mod:`veil.encoding`) and the JPEG domain
(:mod:`veil.jpeg_domain`), so that a byte layout is understood the same way everywhere.
What a segment *means* (which metadata a stage keeps, what counts as a plain JPEG) is
left to those modules.

Malformed or truncated structure raises :class:`ContainerError` (an ``ImageError``)
with the offset where the structure breaks.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from veil.errors import ImageError

__all__ = [
    "JPEG_SOI",
    "PNG_MAGIC",
    "ContainerError",
    "JpegFrame",
    "PngChunk",
    "Segment",
    "iptc_datasets",
    "is_jpeg",
    "is_png",
    "jfif_thumbnail",
    "jpeg_frame",
    "jpeg_header",
    "jpeg_segments",
    "photoshop_resources",
    "png_chunks",
    "png_text",
    "quantisation_tables",
    "restart_interval",
]

JPEG_SOI = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SOS, EOI, DQT, DRI = 0xDA, 0xD9, 0xDB, 0xDD
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                         0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
"""Start-of-frame markers (0xC4 DHT, 0xC8 JPG and 0xCC DAC are not frames)."""
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: a marker alone
_HEADLESS = _NO_LENGTH | {EOI, 0xD8}  # never in a header: a marker alone, EOI, SOI
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class ContainerError(ImageError):
    """The file's segment or chunk structure is malformed or cut short."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts like a JPEG (SOI and the next marker's 0xFF)."""
    return data[:3] == b"\xff\xd8\xff"


def is_png(data: bytes) -> bool:
    return data[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- JPEG


@dataclass(frozen=True)
class Segment:
    """One marker segment: ``data[start:end]`` is all of it, marker included."""

    marker: int
    start: int  # offset of the marker's 0xFF
    end: int  # past the segment (an SOS from jpeg_segments: past its entropy-coded data)
    fill: int = 0  # 0xFF fill bytes before the marker

    @property
    def has_length(self) -> bool:
        return self.marker not in _NO_LENGTH and self.marker != EOI

    @property
    def length(self) -> int:
        """The length field: the payload and the field itself (0 for a bare marker)."""
        return self.end - self.start - 2 if self.has_length else 0

    def payload(self, data: bytes) -> bytes:
        """The bytes after the length field (an SOS's header only, from jpeg_header)."""
        return data[self.start + 4:self.end] if self.has_length else b""


def _marker_at(data: bytes, pos: int) -> tuple[int, int, int]:
    """(position of the marker's 0xFF, the marker, fill bytes skipped) at ``pos``."""
    n, fill = len(data), 0
    while pos + 1 < n and data[pos + 1] == 0xFF:
        pos += 1  # fill bytes: any number of 0xFF may come before a marker
        fill += 1
    if pos + 1 >= n:
        raise ContainerError("truncated JPEG data (the file ends inside a marker)", pos)
    return pos, data[pos + 1], fill


def _segment_end(data: bytes, pos: int, marker: int) -> int:
    n = len(data)
    if pos + 4 > n:
        raise ContainerError("truncated JPEG data (the file ends inside a segment's length)",
                             pos)
    length = (data[pos + 2] << 8) | data[pos + 3]
    if length < 2:
        raise ContainerError(f"malformed JPEG segment 0x{marker:02X} (length {length})", pos)
    end = pos + 2 + length
    if end > n:
        raise ContainerError(
            f"truncated JPEG data (segment 0x{marker:02X} of {length} bytes runs past the"
            f" end of the file)", pos)
    return end


def jpeg_header(data: bytes) -> list[Segment]:
    """The segments from SOI up to and including the first scan's header (SOS), strictly:
    each segment must start with 0xFF right where the previous one ends.

    Raises ContainerError for a file that is not a JPEG, a stray byte where a marker must
    be, a segment cut short, or a file that ends before its first scan.
    """
    if data[:2] != JPEG_SOI:
        raise ContainerError("not a JPEG (no SOI marker)", 0)
    segments: list[Segment] = []
    pos, n = 2, len(data)
    while True:  # the common case inline (a stage walks every faceless file's header)
        if pos + 4 <= n and data[pos] == 0xFF and (marker := data[pos + 1]) != 0xFF \
                and marker not in _HEADLESS:
            end = pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
            if end <= n and end >= pos + 4:
                segments.append(Segment(marker, pos, end))
                if marker == SOS:
                    return segments
                pos = end
                continue
        if pos >= n:
            raise ContainerError("truncated JPEG data (the file ends before the first scan)",
                                 pos)
        if data[pos] != 0xFF:
            raise ContainerError("malformed JPEG: no marker where a segment must start", pos)
        pos, marker, fill = _marker_at(data, pos)
        if marker in _HEADLESS:
            raise ContainerError(f"malformed JPEG: marker 0x{marker:02X} in the header", pos)
        end = _segment_end(data, pos, marker)
        segments.append(Segment(marker, pos, end, fill))
        if marker == SOS:
            return segments
        pos = end


def jpeg_segments(data: bytes) -> list[Segment]:
    """Every segment after SOI up to and including EOI, leniently, as decoders read them:
    stray bytes between segments are skipped, and an SOS's span runs on through its
    entropy-coded data to the next marker that is neither a stuffed 0xFF00 nor a restart
    marker. A file cut inside its last scan gives the segments up to there (decoders show
    such files); one cut inside any other segment raises ContainerError.
    """
    if data[:2] != JPEG_SOI:
        raise ContainerError("not a JPEG (no SOI marker)", 0)
    segments: list[Segment] = []
    pos, n = 2, len(data)
    while pos < n:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)  # stray bytes: decoders skip them
            if pos < 0:
                break
        try:
            pos, marker, fill = _marker_at(data, pos)
        except ContainerError:
            break
        if marker == EOI or marker in _NO_LENGTH:
            segments.append(Segment(marker, pos, pos + 2, fill))
            if marker == EOI:
                return segments
            pos += 2
            continue
        try:
            end = _segment_end(data, pos, marker)
        except ContainerError:
            break
        if marker == SOS:  # the scan runs on to the next real marker
            scan_end = _ENTROPY_END.search(data, end)
            end = scan_end.start() if scan_end else n
        segments.append(Segment(marker, pos, end, fill))
        pos = end
    if segments and segments[-1].marker == SOS:
        return segments  # no EOI after the last scan: what is there, byte for byte
    raise ContainerError("truncated JPEG data (the file ends inside a marker segment)", pos)


@dataclass(frozen=True)
class JpegFrame:
    """A start-of-frame segment's fields."""

    marker: int  # 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...
    precision: int  # bits per sample
    height: int
    width: int
    components: tuple[tuple[int, int, int, int], ...]  # (id, h, v, quantisation table)

    @property
    def progressive(self) -> bool:
        return self.marker in (0xC2, 0xC6, 0xCA, 0xCE)

    @property
    def sampling(self) -> tuple[tuple[int, int], ...]:
        """(horizontal, vertical) sampling factor of each component."""
        return tuple((h, v) for _, h, v, _ in self.components)


def jpeg_frame(data: bytes, segment: Segment) -> JpegFrame:
    """The frame header in ``segment`` (an SOFn); ContainerError if it is cut short."""
    payload = segment.payload(data)
    if segment.marker not in SOF_MARKERS:
        raise ContainerError(f"segment 0x{segment.marker:02X} is not a frame header",
                             segment.start)
    if len(payload) < 6 or len(payload) < 6 + 3 * payload[5]:
        raise ContainerError("malformed JPEG frame header (shorter than its components)",
                             segment.start)
    precision, height, width, count = struct.unpack(">BHHB", payload[:6])
    components = tuple(
        (payload[6 + 3 * i], payload[7 + 3 * i] >> 4, payload[7 + 3 * i] & 15,
         payload[8 + 3 * i]) for i in range(count))
    return JpegFrame(segment.marker, precision, height, width, components)


def quantisation_tables(data: bytes, segment: Segment
                        ) -> list[tuple[int, int, tuple[int, ...]]]:
    """(precision: 0 for 8-bit, 1 for 16-bit; table id; 64 steps in zigzag order) of each
    table in a DQT segment; ContainerError if a table is cut short."""
    payload, tables, at = segment.payload(data), [], 0
    while at < len(payload):
        precision, table = payload[at] >> 4, payload[at] & 15
        size = 128 if precision else 64
        raw = payload[at + 1:at + 1 + size]
        if len(raw) < size:
            raise ContainerError("malformed JPEG quantisation table (cut short)",
                                 segment.start)
        values = struct.unpack(">64H", raw) if precision else tuple(raw)
        tables.append((precision, table, tuple(values)))
        at += 1 + size
    return tables


def restart_interval(data: bytes, segment: Segment) -> int:
    """MCUs between restart markers, from a DRI segment (0: no restarts)."""
    payload = segment.payload(data)
    if segment.marker != DRI or len(payload) != 2:
        raise ContainerError("malformed JPEG restart interval", segment.start)
    return int.from_bytes(payload, "big")


def jfif_thumbnail(data: bytes, segment: Segment) -> bool | None:
    """Whether a JFIF APP0 segment carries a thumbnail (bytes after its 14-byte header);
    None if ``segment`` is not a well-formed JFIF APP0."""
    payload = segment.payload(data)
    if segment.marker != 0xE0 or len(payload) < 14 or payload[:5] != b"JFIF\0":
        return None
    return len(payload) > 14


def photoshop_resources(payload: bytes) -> list[tuple[int, bytes]]:
    """(resource id, data) of each Photoshop image resource in an APP13 payload
    (``Photoshop 3.0\\0`` then ``8BIM`` blocks: id, even-padded Pascal name, size, data).
    The walk stops quietly where the structure breaks: what is listed was well formed."""
    at = payload.find(b"8BIM")
    resources = []
    while at >= 0 and at + 12 <= len(payload) and payload[at:at + 4] == b"8BIM":
        ident = int.from_bytes(payload[at + 4:at + 6], "big")
        name_length = payload[at + 6]
        at += 6 + ((name_length + 2) & ~1)  # the length byte and the name, even in all
        if at + 4 > len(payload):
            break
        size = int.from_bytes(payload[at:at + 4], "big")
        data = payload[at + 4:at + 4 + size]
        if len(data) < size:
            break
        resources.append((ident, data))
        at += 4 + size + (size & 1)
    return resources


def iptc_datasets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(record, dataset, value) of each IPTC-IIM dataset (tag 0x1C, record, dataset, length,
    value; extended lengths included); stops quietly where the structure breaks."""
    at, found = 0, []
    while at + 5 <= len(data) and data[at] == 0x1C:
        record, dataset = data[at + 1], data[at + 2]
        length = int.from_bytes(data[at + 3:at + 5], "big")
        at += 5
        if length & 0x8000:  # extended: the next (length & 0x7FFF) bytes hold the length
            count = length & 0x7FFF
            length = int.from_bytes(data[at:at + count], "big")
            at += count
        value = data[at:at + length]
        if len(value) < length:
            break
        found.append((record, dataset, value))
        at += length
    return found


# --------------------------------------------------------------------------- PNG


@dataclass(frozen=True)
class PngChunk:
    """One chunk: its data is ``length`` bytes at ``offset + 8``, its CRC after them."""

    type: bytes
    offset: int  # of the length field
    length: int  # of the data

    @property
    def end(self) -> int:
        return self.offset + 12 + self.length


def png_chunks(source: bytes | IO[bytes], *, strict: bool = True) -> Iterator[PngChunk]:
    """The chunks of a PNG, through IEND, from bytes or a seekable file (read by seeking,
    so a large file's image data is never read).

    ``strict``: a chunk cut short raises ContainerError; otherwise the walk stops there
    quietly (for readers that only look for metadata a decoder would also find). Bytes
    after IEND are not read; a file that ends between chunks ends the walk. Not a PNG:
    ContainerError either way.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        size: int | None = len(data)

        def read(offset: int, count: int) -> bytes:
            return data[offset:offset + count]
    else:
        fp = source
        size = None

        def read(offset: int, count: int) -> bytes:
            fp.seek(offset)
            return fp.read(count)

    if read(0, 8) != PNG_MAGIC:
        raise ContainerError("not a PNG (no PNG signature)", 0)
    offset = 8
    while True:
        header = read(offset, 8)
        if not header:
            return  # no IEND: what is there, as decoders read it
        if len(header) < 8:
            if strict:
                raise ContainerError("truncated PNG data (the file ends inside a chunk header)",
                                     offset)
            return
        length, ctype = struct.unpack(">I4s", header)
        chunk = PngChunk(ctype, offset, length)
        if strict and size is not None and chunk.end > size:
            raise ContainerError(
                f"truncated PNG data (the file ends inside a {ctype.decode('latin-1')} chunk)",
                offset)
        yield chunk
        if ctype == b"IEND":
            return
        offset = chunk.end


_TEXT_LIMIT = 1 << 22
"""Bytes a compressed PNG text chunk may inflate to before it is cut (a zip-bomb guard)."""


def png_text(ctype: bytes, data: bytes) -> tuple[bytes, bytes]:
    """(keyword, text bytes) of a ``tEXt``, ``zTXt`` or ``iTXt`` chunk's data, inflated
    where compressed (at most 4 MiB; a corrupt stream gives what inflated before it)."""
    keyword, _, rest = data.partition(b"\0")
    compressed = False
    if ctype == b"zTXt":
        rest, compressed = rest[1:], True
    elif ctype == b"iTXt":
        compressed = rest[:1] == b"\1"
        parts = rest[2:].split(b"\0", 2)  # language tag, translated keyword, text
        rest = parts[2] if len(parts) == 3 else b""
    if compressed:
        inflater = zlib.decompressobj()
        try:
            rest = inflater.decompress(rest, _TEXT_LIMIT)
        except zlib.error:
            rest = b""
    return keyword, rest
