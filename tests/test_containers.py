"""veil.containers: JPEG segments and PNG chunks read from hand-built byte strings."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from veil.containers import (
    PNG_MAGIC,
    ContainerError,
    jfif_thumbnail,
    jpeg_frame,
    jpeg_header,
    jpeg_segments,
    png_chunks,
    quantisation_tables,
    restart_interval,
)
from veil.errors import ImageError
from veil.images import plain_jpeg


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


JFIF = _segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0")  # length 16: no thumbnail
DQT = _segment(0xDB, b"\x00" + bytes(range(1, 65)))  # table 0, 8-bit, steps 1..64
SOF0 = _segment(0xC0, b"\x08" + struct.pack(">HH", 48, 64) + b"\x03"
                + b"\x01\x22\x00" + b"\x02\x11\x01" + b"\x03\x11\x01")  # 4:2:0
DRI = _segment(0xDD, struct.pack(">H", 4))
SOS = _segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00")
SCAN = b"\x12\xff\x00\x34\xff\xd0\x56"  # a stuffed 0xFF00 and a restart marker inside
HEADER = b"\xff\xd8" + JFIF + DQT + SOF0 + DRI + SOS
JPEG = HEADER + SCAN + b"\xff\xd9"


def test_the_header_s_segments_in_order_with_their_spans() -> None:
    segments = jpeg_header(JPEG)
    assert [s.marker for s in segments] == [0xE0, 0xDB, 0xC0, 0xDD, 0xDA]
    assert segments[0].start == 2 and segments[0].end == 2 + len(JFIF)
    assert segments[-1].end == len(HEADER)  # the scan's header, not its data
    assert [s.length for s in segments] == [16, 67, 17, 4, 12]


def test_frame_sampling_tables_and_restart_interval() -> None:
    segments = {s.marker: s for s in jpeg_header(JPEG)}
    frame = jpeg_frame(JPEG, segments[0xC0])
    assert (frame.width, frame.height, frame.precision) == (64, 48, 8)
    assert frame.sampling == ((2, 2), (1, 1), (1, 1)) and not frame.progressive
    assert [c[3] for c in frame.components] == [0, 1, 1]
    [(precision, table, steps)] = quantisation_tables(JPEG, segments[0xDB])
    assert (precision, table, steps) == (0, 0, tuple(range(1, 65)))
    assert restart_interval(JPEG, segments[0xDD]) == 4


def test_fill_bytes_before_a_marker_are_counted_not_taken_for_a_marker() -> None:
    data = b"\xff\xd8" + b"\xff\xff" + JFIF + DQT + SOF0 + SOS + SCAN + b"\xff\xd9"
    first = jpeg_header(data)[0]
    assert (first.marker, first.fill, first.start) == (0xE0, 2, 4)


@pytest.mark.parametrize(("data", "message", "offset"), [
    (HEADER[:2 + len(JFIF) + 10], r"truncated JPEG data \(segment 0xDB of 67 bytes runs past"
                                  r" the end of the file\) \(at byte 20\)", 20),
    (HEADER[:2 + len(JFIF) + 3], r"truncated JPEG data \(the file ends inside a segment's"
                                 r" length\)", 20),
    (b"\xff\xd8" + JFIF + DQT, r"the file ends before the first scan", 2 + 18 + 69),
    (b"\xff\xd8" + JFIF + b"\x00" + DQT, r"no marker where a segment must start", 20),
    (b"\xff\xd8" + _segment(0xE1, b"")[:3] + b"\x01", r"malformed JPEG segment 0xE1 "
                                                       r"\(length 1\)", 2),
    (b"GIF89a", r"not a JPEG", 0),
])
def test_a_broken_header_is_a_clear_error_with_its_offset(
        data: bytes, message: str, offset: int) -> None:
    with pytest.raises(ContainerError, match=message) as error:
        jpeg_header(data)
    assert error.value.offset == offset
    assert isinstance(error.value, ImageError)  # stages report it as an unreadable image


def test_a_cut_frame_header_is_an_error_not_an_index_error() -> None:
    short = _segment(0xC0, b"\x08" + struct.pack(">HH", 48, 64) + b"\x03\x01\x22")
    with pytest.raises(ContainerError, match="shorter than its components"):
        jpeg_frame(short, jpeg_header(b"\xff\xd8" + short + SOS)[0])
    cut_table = _segment(0xDB, b"\x10" + bytes(64))  # a 16-bit table needs 128 bytes
    with pytest.raises(ContainerError, match="quantisation table"):
        quantisation_tables(cut_table, jpeg_header(b"\xff\xd8" + cut_table + SOS)[0])


def test_all_segments_run_through_the_scan_to_eoi() -> None:
    segments = jpeg_segments(JPEG + b"trailer after EOI")
    assert [s.marker for s in segments] == [0xE0, 0xDB, 0xC0, 0xDD, 0xDA, 0xD9]
    scan = segments[-2]
    assert JPEG[scan.start:scan.end] == SOS + SCAN  # stuffing and RSTn stay inside
    assert segments[-1].end == len(JPEG)


def test_a_file_cut_in_its_last_scan_is_kept_but_one_cut_elsewhere_is_not() -> None:
    cut = HEADER + SCAN[:3]
    assert jpeg_segments(cut)[-1].end == len(cut)
    with pytest.raises(ContainerError, match="ends inside a marker segment"):
        jpeg_segments(b"\xff\xd8" + JFIF + DQT[:30])


THUMBNAIL = _segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\x01\x01" + b"\x80\x80\x80")  # 1x1


def test_a_jfif_thumbnail_is_told_from_a_bare_jfif_header() -> None:
    def first(data: bytes) -> bool | None:
        return jfif_thumbnail(data, jpeg_header(data)[0])

    assert first(JPEG) is False
    assert first(JPEG.replace(JFIF, THUMBNAIL)) is True
    assert first(JPEG.replace(JFIF, _segment(0xE0, b"JFXX\0\x10" + bytes(8)))) is None
    assert first(JPEG.replace(JFIF, _segment(0xE0, b"JFIF\0\x01"))) is None  # cut short


def test_plain_jpeg_reads_the_same_structure_and_keeps_its_jfif_rule() -> None:
    assert plain_jpeg(JPEG)
    thumbnail = THUMBNAIL
    assert not plain_jpeg(JPEG.replace(JFIF, thumbnail))  # a JFIF thumbnail is not plain
    assert not plain_jpeg(HEADER[:40])  # cut in the tables: ask probe


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(ctype + payload))
    return struct.pack(">I", len(payload)) + ctype + payload + crc


IHDR = _chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
TEXT = _chunk(b"tEXt", b"Author\0Jane Doe")
IDAT = _chunk(b"IDAT", b"\x78\x9c" + bytes(20))
PNG = PNG_MAGIC + IHDR + TEXT + IDAT + _chunk(b"IEND", b"")


def test_png_chunks_from_bytes_and_from_a_file_alike() -> None:
    from_bytes = list(png_chunks(PNG + b"after IEND"))
    assert [c.type for c in from_bytes] == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    assert from_bytes[1].offset == 8 + len(IHDR) and from_bytes[1].length == 15
    assert PNG[from_bytes[1].offset + 8:from_bytes[1].end - 4] == b"Author\0Jane Doe"
    assert list(png_chunks(io.BytesIO(PNG))) == from_bytes


def test_a_truncated_png_chunk_is_an_error_or_the_end_of_a_lenient_walk() -> None:
    cut = PNG_MAGIC + IHDR + TEXT + IDAT[:10]
    with pytest.raises(ContainerError, match=r"truncated PNG data \(the file ends inside a"
                                             r" IDAT chunk\)"):
        list(png_chunks(cut))
    with pytest.raises(ContainerError, match="ends inside a chunk header"):
        list(png_chunks(PNG_MAGIC + IHDR + b"\0\0\0"))
    assert [c.type for c in png_chunks(io.BytesIO(PNG_MAGIC + IHDR + b"\0\0\0"),
                                       strict=False)] == [b"IHDR"]
    with pytest.raises(ContainerError, match="not a PNG"):
        list(png_chunks(b"\xff\xd8\xff"))
