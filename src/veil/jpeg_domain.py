"""Obfuscate a JPEG in the JPEG domain: only the MCUs a face region touches change.

Re-encoding a whole JPEG puts every 8x8 block through a second lossy generation although
only the faces changed. :func:`splice` instead takes the method's output, computed on the
decoded image (the blur needs its context), encodes just the MCU-aligned rectangle
around the affected region with the source's quantisation tables and sampling, and puts
those quantised DCT coefficients into the source's coefficient arrays; every other
block keeps the source's coefficients exactly, so its pixels decode identically. The
entropy coding is libjpeg-turbo's (its lossless-transform API, ``tjTransform`` with a
coefficient filter), never ours.

:func:`splice_window` is what ``veil obfuscate`` runs for a JPEG stored as displayed: in
the one ``tjTransform`` call that re-encodes the file, libjpeg-turbo first writes a
lossless crop around what the method reads, which is decoded and obfuscated on a canvas,
then the changed MCUs are replaced as above. The file's entropy-coded data is decoded
once instead of twice (Pillow's whole decode and the transform's), and the output is
byte for byte :func:`splice`'s (tested on every sampling layout, baseline and
progressive, and every method).

Options measured (``python benchmarks/obfuscate.py --repeat 2 --skip wider --skip
imagenette --skip dataset --skip photos``: 60 of the full-size ILSVRC photos of
``imagenet-samples``, ~500x375, one core, ms per image, on the shared 2-core machine in a
quieter and a heavily loaded moment; the ratios matter more than the absolute figures):

=========================================  =====  ======
                                           quiet  loaded
=========================================  =====  ======
Pillow decode                               1.99    7.47
Pillow decode + re-encode (today's path)    2.80   13.51
tjTransform + coefficient filter (chosen)   2.31    8.36
tjTransform, read coefficients only         1.92    6.07
``jpegtran -drop`` as a subprocess          16.21   25.37
jpeglib ``read_dct`` + ``write_dct``         22.44   58.95
=========================================  =====  ======

* ``tjTransform`` + coefficient filter through ctypes (this module): one call reads the
  source's coefficients, lets the filter swap the affected blocks, and entropy-codes the
  result in C. About a Pillow decode's cost.
* ``jpegtran -drop`` (Debian's libjpeg-turbo-progs): the same library work plus a process
  start and temp files per image, and one rectangle per call: 3-7x slower, not on PyPI.
* ``jpeglib`` (PyPI, bundles libjpeg builds): coefficient read + write through temp files
  in Python, 7-10x slower than the transform (issue 14 measured ~80 img/s); veil's tests use
  it as an independent coefficient reader.
* PyPI bindings of the transform API: ``PyTurboJPEG`` is ctypes over a system
  libturbojpeg (its wheel bundles no library) and gives a caller no coefficient filter;
  ``jpegtran-cffi`` (2015), ``jpegtran-cffi-wheels`` (a 2023 dev build) and the
  ``turbojpeg`` pybind module (0.0.2) bundle a libturbojpeg 2.1.9x but offer crop and
  rotate only.

Chosen: ``tjTransform`` through ctypes, loaded from the TurboJPEG library the system
provides (Debian/Ubuntu ``libturbojpeg0``, Homebrew/conda ``jpeg-turbo``), or from the
path in ``VEIL_LIBTURBOJPEG``. It is the fastest, needs no temp files and no new pip
dependency. Where no library is found, or a file is one it cannot handle (arithmetic
coding, lossless or 12-bit JPEG, CMYK/YCCK, an RGB-coded JPEG, a sampling layout Pillow
cannot write, a decode error), :func:`splice` raises :class:`Unsupported` with the reason,
and the caller re-encodes the whole image as before and records that reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

from veil import containers
from veil.errors import VeilError
from veil.images import as_rgb

__all__ = ["Frame", "Unsupported", "available", "parse_frame", "splice"]

Rect = tuple[int, int, int, int]


class Unsupported(VeilError):
    """This JPEG cannot be obfuscated in the JPEG domain; the message says why."""


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class Frame:
    """What the JPEG domain needs of a JPEG's header."""

    width: int  # stored (not displayed) size
    height: int
    components: tuple[tuple[int, int, int], ...]  # (h, v, quantisation table) each
    tables: dict[int, tuple[int, ...]]  # table id -> 64 steps, natural order
    progressive: bool
    adobe_transform: int | None  # APP14's colour transform flag, None without APP14

    @property
    def mcu(self) -> tuple[int, int]:
        """MCU width and height in pixels (one block for a single component)."""
        if len(self.components) == 1:
            return 8, 8
        return 8 * max(c[0] for c in self.components), 8 * max(c[1] for c in self.components)

    def component_tables(self) -> list[tuple[int, ...]]:
        return [self.tables[c[2]] for c in self.components]


_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34,
    27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37,
    44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])
_SOF_NAMES = {
    0xC3: "lossless JPEG", 0xC5: "hierarchical JPEG", 0xC6: "hierarchical JPEG",
    0xC7: "hierarchical lossless JPEG", 0xC9: "arithmetic coding", 0xCA: "arithmetic coding",
    0xCB: "arithmetic lossless JPEG", 0xCD: "arithmetic coding", 0xCE: "arithmetic coding",
    0xCF: "arithmetic lossless JPEG",
}


def parse_frame(data: bytes) -> Frame:
    """The frame header, tables and APP14 flag of ``data``; :class:`Unsupported` for a
    JPEG this module does not handle, with the reason."""
    if data[:2] != containers.JPEG_SOI:
        raise Unsupported("not a JPEG")
    try:
        segments = containers.jpeg_header(data)
    except containers.ContainerError as e:
        raise Unsupported(f"malformed or truncated header: {e}") from None
    tables: dict[int, tuple[int, ...]] = {}
    frame: tuple[int, int, int, list[tuple[int, int, int]]] | None = None
    adobe: int | None = None
    ids = b""
    for segment in segments[:-1]:  # the last is the first scan's header
        marker, payload = segment.marker, segment.payload(data)
        try:
            if marker == containers.DQT:
                for _, tid, values in containers.quantisation_tables(data, segment):
                    natural = [0] * 64
                    for i, v in enumerate(values):
                        natural[int(_ZIGZAG[i])] = v
                    tables[tid] = tuple(natural)
            elif marker in _SOF_NAMES:
                raise Unsupported(_SOF_NAMES[marker])
            elif marker in (0xC0, 0xC1, 0xC2):
                sof = containers.jpeg_frame(data, segment)
                if sof.precision != 8:
                    raise Unsupported(f"{sof.precision}-bit samples")
                comps = [(h, v, table) for _, h, v, table in sof.components]
                ids = bytes(c[0] for c in sof.components)
                frame = (sof.width, sof.height, marker, comps)
            elif marker == 0xEE and payload[:5] == b"Adobe" and segment.length >= 14:
                adobe = payload[11]
        except containers.ContainerError as e:
            raise Unsupported(f"malformed header: {e}") from None
    if frame is None:
        raise Unsupported("no frame header before the first scan")
    width, height, marker, comps = frame
    if len(comps) not in (1, 3):
        raise Unsupported(f"{len(comps)} colour components (CMYK/YCCK)")
    if len(comps) == 3 and (adobe == 0 or (adobe is None and ids == b"RGB")):
        raise Unsupported("RGB-coded JPEG (no YCbCr transform)")
    if any(c[2] not in tables for c in comps):
        raise Unsupported("a component's quantisation table is missing")
    if len(comps) == 3:
        (h0, v0, _), rest = comps[0], comps[1:]
        if any(c[:2] != (1, 1) for c in rest) or (h0, v0) not in ((1, 1), (2, 1), (2, 2)):
            layout = ",".join(f"{h}x{v}" for h, v, _ in comps)
            raise Unsupported(f"sampling {layout} (only 4:4:4, 4:2:2 and 4:2:0 are written)")
    return Frame(width, height, tuple((h, v, t) for h, v, t in comps), tables,
                 marker == 0xC2, adobe)


# --------------------------------------------------------------------------- libturbojpeg


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int),
                ("h", ctypes.c_int)]


class _Transform(ctypes.Structure):
    pass


# The coefficients' address arrives as a plain int (c_void_p): no pointer object per call.
_FILTER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _Region, _Region,
                           ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_Transform._fields_ = [("r", _Region), ("op", ctypes.c_int), ("options", ctypes.c_int),
                       ("data", ctypes.c_void_p), ("customFilter", _FILTER)]

_TJXOPT_CROP = 4
_TJXOPT_NOOUTPUT = 16
_TJXOPT_PROGRESSIVE = 32
_TJXOPT_COPYNONE = 64  # no marker of the source: the caller adds back what may stay
_TJFLAG_STOPONWARNING = 8192
_TJPF_RGB, _TJPF_GRAY = 0, 6  # pixel formats
_TJCS_GRAY = 2  # colour space
LIBRARY_ENV = "VEIL_LIBTURBOJPEG"


@cache
def _library() -> ctypes.CDLL | str:
    """The TurboJPEG library, or why there is none."""
    path = os.environ.get(LIBRARY_ENV) or ctypes.util.find_library("turbojpeg")
    candidates = [path] if path else ["libturbojpeg.so.0", "libturbojpeg.dylib"]
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            lib.tjInitTransform.restype = ctypes.c_void_p  # TurboJPEG >= 1.2 API
        except (OSError, AttributeError):
            continue
        lib.tjDestroy.argtypes = [ctypes.c_void_p]
        lib.tjFree.argtypes = [ctypes.c_void_p]
        lib.tjGetErrorStr2.restype = ctypes.c_char_p
        lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
        lib.tjInitDecompress.restype = ctypes.c_void_p
        int_out = ctypes.POINTER(ctypes.c_int)
        lib.tjDecompressHeader3.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, int_out, int_out, int_out, int_out]
        lib.tjDecompress2.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_int,
            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.tjTransform.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ulong),
            ctypes.POINTER(_Transform), ctypes.c_int]
        return lib
    return (f"no TurboJPEG library found (install libjpeg-turbo's, e.g. Debian's "
            f"libturbojpeg0, or set {LIBRARY_ENV})")


def available() -> str | None:
    """None if the JPEG domain can be used here, else why not."""
    lib = _library()
    return lib if isinstance(lib, str) else None


BlocksFilter = Callable[[Any, int, int, int], int]


def _transform(data: bytes, blocks_filter: BlocksFilter, *, output: bool,
               progressive: bool = False) -> bytes:
    """Run libjpeg-turbo's lossless transform (no geometry change) over ``data``, calling
    ``blocks_filter(coeffs, row, width_in_blocks, component)`` for each block row."""
    lib = _library()
    if isinstance(lib, str):
        raise Unsupported(lib)
    transforms = (_Transform * 1)()
    transforms[0].options = _TJXOPT_COPYNONE | (0 if output else _TJXOPT_NOOUTPUT) | (
        _TJXOPT_PROGRESSIVE if progressive else 0)
    outputs, sizes = (ctypes.c_void_p * 1)(), (ctypes.c_ulong * 1)()
    return _run_transforms(lib, data, transforms, outputs, sizes, [blocks_filter])[0]


def _run_transforms(lib: ctypes.CDLL, data: bytes, transforms: Any, outputs: Any, sizes: Any,
                    filters: Sequence[BlocksFilter | None]) -> list[bytes]:
    """One ``tjTransform`` call making ``len(transforms)`` outputs from one decode of
    ``data``, in order; ``filters[i]`` sees output i's block rows before it is encoded.
    An exception a filter raises is raised here (it cannot cross the C frames)."""
    raised: list[BaseException] = []
    keep_alive = []
    for transform, blocks_filter in zip(transforms, filters, strict=True):
        if blocks_filter is None:
            continue

        def callback(coeffs, array_region, _plane, component, _index, _t,  # type: ignore[no-untyped-def]
                     blocks_filter=blocks_filter):
            if raised:
                return -1
            try:
                return blocks_filter(coeffs, array_region.y // 8, array_region.w // 8,
                                     component)
            except BaseException as exc:  # reported after the C call returns
                raised.append(exc)
                return -1

        c_filter = _FILTER(callback)
        keep_alive.append(c_filter)
        transform.customFilter = c_filter
    handle = lib.tjInitTransform()
    if not handle:
        raise Unsupported("libturbojpeg could not start a transform")
    try:
        status = lib.tjTransform(handle, data, len(data), len(transforms), outputs, sizes,
                                 transforms, _TJFLAG_STOPONWARNING)
        if raised:
            raise raised[0]
        if status != 0:
            message = (lib.tjGetErrorStr2(handle) or b"unknown error").decode(errors="replace")
            raise Unsupported(f"libjpeg-turbo: {message}")
        return [ctypes.string_at(outputs[i], sizes[i]) if outputs[i] else b""
                for i in range(len(transforms))]
    finally:
        for i in range(len(transforms)):
            if outputs[i]:
                lib.tjFree(outputs[i])
        lib.tjDestroy(handle)


def read_coefficients(data: bytes) -> list[np.ndarray]:
    """Quantised DCT coefficients of each component, shape (rows, cols, 64), natural
    order, padded to whole MCUs as stored."""
    rows: dict[int, list[bytes]] = {}
    widths: dict[int, int] = {}

    def keep(coeffs, row, width, component):  # type: ignore[no-untyped-def]
        rows.setdefault(component, []).append(ctypes.string_at(coeffs, width * 128))
        widths[component] = width
        return 0

    _transform(data, keep, output=False)
    return [np.frombuffer(b"".join(rows[c]), np.int16).reshape(len(rows[c]), widths[c], 64)
            for c in sorted(rows)]


# --------------------------------------------------------------------------- splice

_TO_STORED = {  # the transpose that takes displayed pixels back to the stored layout
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_rect(rect: Rect, orientation: int, stored_size: tuple[int, int]) -> Rect:
    """A displayed-pixel rectangle in the stored image's pixels (EXIF ``orientation``)."""
    w, h = stored_size  # stored width and height
    x0, y0, x1, y1 = rect
    if orientation in (5, 6, 7, 8):  # displayed is w' = h, h' = w: swap the axes first
        x0, y0, x1, y1 = y0, x0, y1, x1
    # now (x0, x1) spans stored columns, possibly mirrored; (y0, y1) stored rows
    mirror_x = orientation in (2, 3, 7, 8)
    mirror_y = orientation in (3, 4, 6, 7)
    if mirror_x:
        x0, x1 = w - x1, w - x0
    if mirror_y:
        y0, y1 = h - y1, h - y0
    return x0, y0, x1, y1


def _mcu_mask(frame: Frame, rects: Sequence[Rect]) -> np.ndarray:
    mw, mh = frame.mcu
    cols, rows = -(-frame.width // mw), -(-frame.height // mh)
    mask = np.zeros((rows, cols), bool)
    for x0, y0, x1, y1 in rects:
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, frame.width), min(y1, frame.height)
        if x0 < x1 and y0 < y1:
            mask[y0 // mh:-(-y1 // mh), x0 // mw:-(-x1 // mw)] = True
    return mask


def _encode_patch(patch: Image.Image, frame: Frame) -> bytes:
    """``patch`` as a JPEG with ``frame``'s tables and sampling (Pillow's libjpeg)."""
    tables = [list(t) for t in frame.component_tables()]
    if len(frame.components) == 1:
        out = io.BytesIO()
        patch.convert("L").save(out, "JPEG", qtables=tables[:1])
        return out.getvalue()
    subsampling = {(1, 1): 0, (2, 1): 1, (2, 2): 2}[frame.components[0][:2]]
    out = io.BytesIO()
    # one table per component, in component order: Y 0, Cb 1, Cr 2
    patch.save(out, "JPEG", qtables=tables, subsampling=subsampling)
    return out.getvalue()


@dataclass(frozen=True)
class Spliced:
    """The JPEG-domain output and what it changed."""

    data: bytes  # the output file: libjpeg's JFIF header, no marker of the source
    mcus: int  # MCUs replaced
    total_mcus: int
    grey: bool  # one component


def splice(source: bytes, obfuscated: Image.Image, orientation: int,
           regions: Sequence[Rect]) -> Spliced:
    """``source`` with the MCUs that ``regions`` touch taken from ``obfuscated``.

    ``obfuscated`` is the method's output on the decoded, displayed image (EXIF
    ``orientation`` applied); ``regions`` are displayed-pixel rectangles outside which
    it equals the decoded source. Raises :class:`Unsupported` with the reason when the
    file cannot be handled in the JPEG domain.
    """
    frame = parse_frame(source)
    if orientation in (5, 6, 7, 8):
        displayed = (frame.height, frame.width)
    else:
        displayed = (frame.width, frame.height)
    if obfuscated.size != displayed:
        raise Unsupported(f"decoded size {obfuscated.size} is not the frame's {displayed}")
    stored = obfuscated if orientation == 1 else obfuscated.transpose(_TO_STORED[orientation])
    stored_rects = [stored_rect(r, orientation, (frame.width, frame.height)) for r in regions]
    replacements = _Replacements(frame, stored_rects)
    replacements.plan(stored)
    out = _transform(source, replacements, output=True, progressive=frame.progressive)
    return replacements.spliced(out)


WHOLE_DECODE_SHARE = 0.6
"""Above this share of the picture, :func:`splice_window` decodes the whole file instead of
a crop (same bytes): the crop must be written by the transform and decoded again, which
costs more than one whole decode once it covers most of the picture (per faced ILSVRC
photo, CPU, best of 7: 0.1-0.7 ms more above 60%, less below)."""


def splice_window(source: bytes, regions: Sequence[Rect], reads: Sequence[Rect],
                  obfuscate: Callable[[Image.Image], Image.Image]) -> Spliced:
    """:func:`splice` without decoding the whole picture first, for a JPEG stored as
    displayed (EXIF orientation 1).

    ``reads`` are the pixels the method reads to compute ``regions``; ``obfuscate`` runs
    the method on a full-size RGB canvas, which is scratch: it may write into it
    (:func:`veil.obfuscation.obfuscate_canvas`). One ``tjTransform`` call decodes the file's
    entropy-coded data once and makes two outputs: first a lossless crop around the
    regions, what the method reads and a margin of one MCU (chroma upsampling reads one
    sample across a block edge, so inside that margin the crop decodes to exactly the
    pixels of a whole decode); then, from the first filter call of the second output, the
    crop is decoded into the canvas, obfuscated, and the changed MCUs replaced as
    :func:`splice` does. The whole decode and the second entropy decode that
    :func:`splice` needs beside it are saved. Where the crop would cover more than
    :data:`WHOLE_DECODE_SHARE` of the picture, the file is decoded whole instead (by
    TurboJPEG, as the crop is) and transformed once without a crop: the same bytes.
    """
    frame = parse_frame(source)
    replacements = _Replacements(frame, list(regions))
    crop = _crop_window(frame, replacements.patches, reads)
    lib = _library()
    if isinstance(lib, str):
        raise Unsupported(lib)
    if crop[2] * crop[3] > WHOLE_DECODE_SHARE * frame.width * frame.height:
        # writing a crop this large and decoding it again costs more than decoding the file
        replacements.plan(obfuscate(_decoded_rgb(source)))
        return replacements.spliced(_transform(source, replacements, output=True,
                                               progressive=frame.progressive))
    outputs = (ctypes.c_void_p * 2)()
    sizes = (ctypes.c_ulong * 2)()
    transforms = (_Transform * 2)()
    transforms[0].options = _TJXOPT_COPYNONE | _TJXOPT_CROP
    transforms[0].r = _Region(*crop)

    def first_call() -> None:
        cropped = ctypes.string_at(outputs[0] or 0, sizes[0])
        # left uninitialised outside the crop: the method reads only inside it (``reads``),
        # and only MCUs inside it are taken from the result
        canvas = Image.new("RGB", (frame.width, frame.height), None)
        canvas.paste(_decoded_rgb(cropped), crop[:2])
        replacements.plan(obfuscate(canvas))

    replacements.before_first = first_call
    transforms[1].options = _TJXOPT_COPYNONE | (_TJXOPT_PROGRESSIVE if frame.progressive else 0)
    written = _run_transforms(lib, source, transforms, outputs, sizes, [None, replacements])
    if replacements.before_first is not None:
        raise Unsupported("libjpeg-turbo made no second output")  # the filter never ran
    return replacements.spliced(written[1])


def _decoded_rgb(data: bytes) -> Image.Image:
    """The pixels of a JPEG :func:`parse_frame` accepted (the crop the transform wrote, or
    the whole source), decoded as :func:`veil.images.load_image` decodes it: the same
    decoding (libjpeg-turbo's accurate integer IDCT, fancy upsampling, YCbCr to RGB or
    grey), then veil's colour rule; TurboJPEG decodes straight into a buffer, without
    Pillow's header parse in Python. The splice tests compare every layout's output with
    the whole-decode path's, byte for byte."""
    lib = _library()
    assert not isinstance(lib, str), "splice_window checked that the library is there"
    handle = lib.tjInitDecompress()
    if not handle:
        raise Unsupported("libturbojpeg could not start a decompressor")
    try:
        width, height, subsampling, colourspace = (ctypes.c_int() for _ in range(4))
        if lib.tjDecompressHeader3(handle, data, len(data), ctypes.byref(width),
                                   ctypes.byref(height), ctypes.byref(subsampling),
                                   ctypes.byref(colourspace)) != 0:
            raise Unsupported("libjpeg-turbo could not read the header of the JPEG to decode")
        grey = colourspace.value == _TJCS_GRAY
        mode, pixel_format = ("L", _TJPF_GRAY) if grey else ("RGB", _TJPF_RGB)
        # every byte is written by the decoder: no zero-fill, no ctypes array type per call
        pixels = np.empty(width.value * height.value * (1 if grey else 3), np.uint8)
        if lib.tjDecompress2(handle, data, len(data), pixels.ctypes.data, width.value, 0,
                             height.value, pixel_format, 0) != 0:
            raise Unsupported("libjpeg-turbo could not decode the JPEG")
    finally:
        lib.tjDestroy(handle)
    image = Image.frombuffer(mode, (width.value, height.value), pixels, "raw", mode,
                             0, 1)
    return as_rgb(image) if grey else image


def _crop_window(frame: Frame, patches: Sequence[tuple[int, int, int, int]],
                 reads: Sequence[Rect]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of an MCU-aligned crop holding the patches' MCUs and the pixels the
    method reads, one MCU wider on every side that is not the picture's edge."""
    mw, mh = frame.mcu
    cols, rows = -(-frame.width // mw), -(-frame.height // mh)
    r0 = min([p[0] for p in patches] + [max(r[1], 0) // mh for r in reads])
    r1 = max([p[1] for p in patches] + [-(-min(r[3], frame.height) // mh) for r in reads])
    c0 = min([p[2] for p in patches] + [max(r[0], 0) // mw for r in reads])
    c1 = max([p[3] for p in patches] + [-(-min(r[2], frame.width) // mw) for r in reads])
    r0, c0 = max(r0 - 1, 0), max(c0 - 1, 0)
    r1, c1 = min(r1 + 1, rows), min(c1 + 1, cols)
    x, y = c0 * mw, r0 * mh
    return x, y, min(c1 * mw, frame.width) - x, min(r1 * mh, frame.height) - y


class _Replacements:
    """The blocks to replace in a JPEG's coefficient arrays, and the transform filter
    that replaces them (a callable with the filter's arguments)."""

    def __init__(self, frame: Frame, stored_rects: Sequence[Rect]) -> None:
        self.frame = frame
        self.stored_rects = list(stored_rects)
        self.mask = _mcu_mask(frame, self.stored_rects)
        if not self.mask.any():
            raise Unsupported("the affected region lies outside the image")
        self.patches = _patches(frame, self.stored_rects)
        # per component and block row: (first block, address of the patch's blocks, bytes)
        # for each run of replaced blocks, so the filter only copies memory; the patches'
        # coefficient arrays are kept alive in ``arrays``
        self.plans: list[dict[int, list[tuple[int, int, int]]]] = [
            {} for _ in frame.components]
        self.arrays: list[np.ndarray] = []
        self.before_first: Callable[[], None] | None = None

    def plan(self, stored: Image.Image) -> None:
        """Encode the patches of ``stored`` (the obfuscated image in stored layout)."""
        frame = self.frame
        single = len(frame.components) == 1
        factors = [(1, 1) if single else (h, v) for h, v, _ in frame.components]
        for r0, r1, c0, c1 in self.patches:
            coefficients = _patch_coefficients(stored, frame, (r0, r1, c0, c1))
            self.arrays.extend(coefficients)
            if self.mask[r0:r1, c0:c1].all():  # the common case: one face
                runs = [[(c0, c1)]] * (r1 - r0)
            else:
                runs = [_runs(self.mask[row], c0, c1) for row in range(r0, r1)]
            for (h, v), coeffs, plan in zip(factors, coefficients, self.plans, strict=True):
                rows, blocks = coeffs.shape[:2]
                address, pitch = coeffs.ctypes.data, coeffs.strides[0]
                for prow in range(min(rows, (r1 - r0) * v)):
                    entries = plan.setdefault(r0 * v + prow, [])
                    for first, last in runs[prow // v]:
                        start, stop = (first - c0) * h, min((last - c0) * h, blocks)
                        if stop > start:
                            entries.append((first * h, address + prow * pitch + start * 128,
                                            (stop - start) * 128))

    def __call__(self, coeffs: Any, row: int, width: int, component: int) -> int:
        if self.before_first is not None:
            before, self.before_first = self.before_first, None
            before()
        runs = self.plans[component].get(row)
        if runs:
            base = coeffs or 0
            for first, source, size in runs:
                size = min(size, (width - first) * 128)
                if size > 0:
                    ctypes.memmove(base + first * 128, source, size)
        return 0

    def spliced(self, data: bytes) -> Spliced:
        return Spliced(data, int(self.mask.sum()), int(self.mask.size),
                       len(self.frame.components) == 1)


def _patches(frame: Frame, rects: Sequence[Rect]) -> list[tuple[int, int, int, int]]:
    """MCU rows and columns (r0, r1, c0, c1) to encode: each rectangle's MCUs, rectangles
    merged where their bounding box is no larger than the two apart (near faces)."""
    mw, mh = frame.mcu
    boxes = []
    for x0, y0, x1, y1 in rects:
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, frame.width), min(y1, frame.height)
        if x0 < x1 and y0 < y1:
            boxes.append((y0 // mh, -(-y1 // mh), x0 // mw, -(-x1 // mw)))

    def area(b: tuple[int, int, int, int]) -> int:
        return (b[1] - b[0]) * (b[3] - b[2])

    # Passes until none merges; a pass folds each box into the first kept box it merges
    # with. (Restarting the scan after every merge was cubic in the faces: 0.9 s of CPU
    # for the 473 faces of the most crowded WIDER photo.) The grouping only decides what
    # is encoded together: a changed block's coefficients are a whole re-encode's either
    # way (tests/test_jpeg_domain.py).
    merging = True
    while merging:
        merging = False
        kept: list[tuple[int, int, int, int]] = []
        for box in boxes:
            for k, other in enumerate(kept):
                if (other[0] > box[1] or box[0] > other[1] or other[2] > box[3]
                        or box[2] > other[3]):
                    continue  # a gap between them: their bounding box holds more than both
                both = (min(box[0], other[0]), max(box[1], other[1]),
                        min(box[2], other[2]), max(box[3], other[3]))
                if area(both) <= area(box) + area(other):
                    kept[k] = both
                    merging = True
                    break
            else:
                kept.append(box)
        boxes = kept
    return boxes


def _patch_coefficients(stored: Image.Image, frame: Frame,
                        patch: tuple[int, int, int, int]) -> list[np.ndarray]:
    """The quantised coefficients of ``stored``'s MCU rows r0..r1, columns c0..c1,
    encoded with ``frame``'s tables and sampling (MCU-aligned, so each block is what a
    whole-image encode gives it)."""
    mw, mh = frame.mcu
    r0, r1, c0, c1 = patch
    box = (c0 * mw, r0 * mh, min(c1 * mw, frame.width), min(r1 * mh, frame.height))
    encoded = _encode_patch(stored.crop(box), frame)
    _check_reproduced(encoded, frame)
    return read_coefficients(encoded)


_REPRODUCED: set[tuple[object, ...]] = set()
"""(sampling, tables) that Pillow's encoder was seen to write as given: its output
depends on those settings, never on the pixels, so one look per combination suffices."""


def _check_reproduced(encoded: bytes, frame: Frame) -> None:
    """Raise :class:`Unsupported` unless the patch ``encoded`` has ``frame``'s tables and
    sampling (Pillow may clamp or reorder what it is given)."""
    single = len(frame.components) == 1  # one block per MCU, whatever its factors say
    sampling = () if single else tuple(c[:2] for c in frame.components)
    key = (sampling, tuple(frame.component_tables()))
    if key in _REPRODUCED:
        return
    written = parse_frame(encoded)
    if (not single and tuple(c[:2] for c in written.components) != sampling) or \
            tuple(written.component_tables()) != key[1]:
        raise Unsupported("the encoder did not reproduce the source's tables and sampling")
    _REPRODUCED.add(key)


def _runs(line: np.ndarray, start: int, stop: int) -> list[tuple[int, int]]:
    """(first, last + 1) of each run of True in ``line[start:stop]``."""
    cells = line[start:stop].tolist()
    runs, col = [], 0
    while col < len(cells):
        if cells[col]:
            end = col
            while end < len(cells) and cells[end]:
                end += 1
            runs.append((start + col, start + end))
            col = end
        else:
            col += 1
    return runs
