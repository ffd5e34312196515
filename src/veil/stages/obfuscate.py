"""The obfuscate stage: write a mirrored copy of a dataset with every face obfuscated.

Faceless images are copied byte for byte (or hard-linked); only images with faces are
decoded and obfuscated. With ``fmt="keep"`` an obfuscated JPEG is changed in the JPEG
domain (:mod:`veil.jpeg_domain`): only the MCUs its affected region touches are
re-encoded, every other block keeps the source's DCT coefficients; a JPEG that cannot be
handled so is re-encoded whole with its own quantisation tables, and its ledger record
says why (``encoding``: ``jpeg-domain`` or ``reencoded`` with ``reencoded_because``). Every
file is written atomically, and the run is recorded shard by shard in a ledger, so a
killed run resumes and produces exactly the bytes an uninterrupted run would have. The
ledger records the host name and absolute paths of the machine that made the output, so
it lives *beside* the output folder, not in it (``OUT.veil-ledger.sqlite`` by default,
see :func:`ledger_path`): publishing OUT publishes none of it. A ledger an older veil left
inside (``OUT/.veil/ledger.sqlite``) is moved there on the next run into OUT.

A WebDataset input is written as WebDataset shards (``out_format="webdataset"``): each
input tar becomes the output tar of the same name, one shard of the run, written whole
and atomically. Its images are treated as in a folder; every other member is copied
byte for byte; each sample's ``json`` member (created if missing) gets a ``faces``
field: ``{"method", "options", "boxes": {<image field>: [{x0, y0, x1, y1, score,
source}, ...] or null}}``, boxes in the image's displayed pixels, ``null`` where the
faces source knew nothing of the image (``--unannotated copy``).

A Hugging Face dataset is written as the same dataset (``out_format="huggingface"``):
each Parquet or Arrow shard becomes the shard of the same path under OUT, one shard of
the run, written whole and atomically with the source's schema (features metadata
included), columns and row order; only image cells change, rendered as in a folder. A row
whose image is not written (left out of the run, skipped, unannotated or failed) gets a
null image, so every row keeps its key. A ``save_to_disk`` folder gets its JSON files
once every shard is written.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast

import numpy as np
from PIL import Image

from veil import containers, hf, wds
from veil.backends import Backend, ShardResult, get_backend
from veil.boxes import Box, usable_boxes
from veil.containers import is_jpeg
from veil.datasets import Dataset, FileReader, ImageReader, is_image_name
from veil.encoding import (
    SUFFIXES,
    encode_image,
    jpeg_with_colour_and_orientation,
    strip_identifying_metadata,
)
from veil.errors import ImageError, VeilError
from veil.faces import FacesSnapshot
from veil.files import atomic_copy, atomic_write_bytes, remove_stale_temps, sync_written
from veil.images import (
    LoadedImage,
    file_sha256,
    load_image,
    max_pixels_limit,
    plain_jpeg,
    plain_jpeg_header,
    probe,
)
from veil.obfuscation import (
    METHODS,
    affected_region,
    obfuscate,
    obfuscate_canvas,
    read_region,
)
from veil.obfuscation.array_stages import compiled_passes
from veil.runner import DEFAULT_SHARD_SIZE, RunSummary, execute, prepare_run
from veil.store import RunItem, RunLedger

FORMATS = ("keep", "png", "jpeg")
OUT_FORMATS = ("auto", "files", "webdataset", "huggingface")
UNANNOTATED_POLICIES = ("error", "copy", "skip")
LEGACY_LEDGER = PurePosixPath(".veil") / "ledger.sqlite"
"""Where veil before issue 14 kept the ledger: inside the output, published with it."""
LEDGER_SUFFIX = ".veil-ledger.sqlite"
_SQLITE_SIDECARS = ("", "-wal", "-shm", "-journal")


def ledger_path(out: str | Path, ledger: str | Path | None = None) -> Path:
    """The run's ledger: ``ledger`` if given, else ``OUT.veil-ledger.sqlite`` beside
    ``out`` (never inside it: it names the host and absolute paths)."""
    if ledger is not None:
        return Path(ledger)
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + LEDGER_SUFFIX)


def _adopt_legacy_ledger(out: Path, ledger: Path) -> None:
    """Move an older veil's ``OUT/.veil/ledger.sqlite`` out of the published folder."""
    legacy = out / LEGACY_LEDGER
    if not legacy.is_file() or ledger.exists():
        return
    ledger.parent.mkdir(parents=True, exist_ok=True)
    for suffix in _SQLITE_SIDECARS:
        part = Path(f"{legacy}{suffix}")
        if part.exists():
            os.replace(part, f"{ledger}{suffix}")
    with contextlib.suppress(OSError):
        legacy.parent.rmdir()  # .veil, if nothing else is in it


def _remove_ledger(ledger: Path) -> None:
    for suffix in _SQLITE_SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{ledger}{suffix}")
UNANNOTATED_MESSAGE = (
    "no face record for this image (never detected or reviewed): run `veil detect` on it,"
    " or pass --unannotated copy to copy it unchanged"
)


@dataclass
class Rendered:
    """One image's output, before it is written anywhere."""

    info: dict[str, Any]  # the ledger's record of the image
    data: bytes | None = None  # the output bytes; None: the source bytes, unchanged
    output: str | None = None  # the output key; None: nothing is written
    boxes: list[Box] | None = None  # the boxes applied; None: the faces source had none
    raw: bytes | None = None  # the source's bytes, when deciding to copy already read them


@dataclass
class ObfuscateTask:
    """Obfuscate or copy each image of a shard into the output folder."""

    root: str
    out: str
    faces: dict[str, list[Box]]
    method: str = "blur"
    options: dict[str, Any] = field(default_factory=dict)
    fmt: str = "keep"
    jpeg_quality: int = 95
    link: bool = False
    strip_metadata: bool = True
    unannotated: str = "error"
    max_pixels: int | None = None
    reader: ImageReader | None = None  # default: files under root

    @property
    def compiled(self) -> bool:
        """Whether the blur's compiled (numba) passes pay for their loading in this job:
        only from :data:`COMPILED_BLUR_FROM` faced images on."""
        return sum(1 for boxes in self.faces.values() if boxes) >= COMPILED_BLUR_FROM

    def setup(self) -> None:
        """Run the method once on a tiny image: compiled kernels it loads on first use
        (the blur's numba passes) count as the worker's start-up, not its first shard."""
        if not self.compiled:
            return  # nothing to load: the blur runs its Pillow passes
        with contextlib.suppress(VeilError):  # bad options fail on the first real image
            obfuscate(np.zeros((32, 32, 3), np.uint8), [Box(8, 8, 24, 24)], self.method,
                      **self.options)

    def __call__(self, index: int, keys: Sequence[str]) -> ShardResult:
        with compiled_passes(self.compiled):
            return self._shard(index, keys)

    def _shard(self, index: int, keys: Sequence[str]) -> ShardResult:
        result = ShardResult(index)
        written: list[str] = []
        for key in keys:
            try:
                source = self._source(key)
                rendered = self.render(key, source)
                if rendered.output is not None:
                    written.append(self._write(source, rendered))
                    _record_hashes(rendered, source)
            except (ImageError, OSError) as exc:
                _record_error(result, key, exc)
            else:
                _record(result, key, rendered)
        # The files were written without an fsync each; they and their folders are synced
        # here, together, before the shard is recorded as done: a power cut cannot leave a
        # 'done' shard torn, and other processes' buffers are not flushed (as os.sync would).
        sync_written(written, self.out)
        return result

    def _source(self, key: str) -> Path | bytes:
        """A file's path (copied without reading it), or the bytes of a tar member."""
        if self.reader is None or isinstance(self.reader, FileReader):
            return Path(self.root) / key
        return self.reader.read(key)

    def _write(self, source: Path | bytes, rendered: Rendered) -> str:
        """Write the output (not yet fsynced) and return its path."""
        target = os.path.join(self.out, rendered.output or "")
        if rendered.data is not None:
            atomic_write_bytes(target, rendered.data, durable=False)
        elif isinstance(source, Path) and (self.link or rendered.raw is None):
            atomic_copy(source, Path(target), link=self.link, durable=False)
        else:  # the bytes read already: written, not read a second time
            data = source if rendered.raw is None else rendered.raw
            assert isinstance(data, bytes), "a file with no bytes read is copied above"
            atomic_write_bytes(target, data, durable=False)
        return target

    def render(self, key: str, source: Path | bytes) -> Rendered:
        """What ``key`` becomes: obfuscated, converted, copied, skipped or unannotated."""
        boxes = self.faces.get(key)
        if boxes is None:
            if self.unannotated == "error":
                return Rendered({"action": "unannotated"})
            if self.unannotated == "skip":
                return Rendered({"action": "skipped"})
        kept, warnings = usable_boxes(boxes or [])
        info: dict[str, Any] = {"faces": len(kept)}
        if warnings:
            info["warnings"] = warnings
        applied = kept if boxes is not None else None
        if not kept and self.fmt != "png":
            return self._copy(key, source, info, applied)
        if isinstance(source, Path):  # read once, for whichever path takes it (and its hash)
            source = _read_quietly(source, head_only=False) or source
        if kept:
            info["boxes"] = [list(b.as_xyxy()) for b in kept]  # what `veil audit` verifies
        if kept and self.fmt == "keep":
            window = self._jpeg_domain_window(key, source, kept, info, applied)
            if window is not None:
                return window
        loaded = load_image(source, max_pixels=self.max_pixels)
        self._warn_outside(kept, (loaded.width, loaded.height), info)
        image = loaded.image
        if kept:  # a PIL image in, a PIL image out
            image = cast(Image.Image, obfuscate(image, kept, self.method, **self.options))
        regions = affected_region((loaded.width, loaded.height), kept, self.method,
                                  **self.options) if kept else []
        data = None
        if kept and self.fmt == "keep" and loaded.jpeg is not None:
            data = self._jpeg_domain(source, image, loaded, regions, info)
        if data is None:
            data, suffix = encode_image(image, loaded, fmt=self.fmt,
                                        jpeg_quality=self.jpeg_quality)
        else:
            suffix = SUFFIXES["JPEG"]
        target = output_key(key, suffix)
        info.update(action="obfuscated" if kept else "converted", output=target)
        if kept:
            info["regions"] = [list(r) for r in regions]
        return Rendered(info, data, target, applied,
                        source if isinstance(source, bytes) else None)

    @staticmethod
    def _warn_outside(kept: list[Box], size: tuple[int, int], info: dict[str, Any]) -> None:
        outside = [b for b in kept if b.clipped(*size).is_degenerate]
        if outside:
            info.setdefault("warnings", []).append(
                f"{len(outside)} box(es) lie entirely outside the {size[0]}x{size[1]} image"
            )

    def _jpeg_domain_window(self, key: str, source: Path | bytes, kept: list[Box],
                            info: dict[str, Any], applied: list[Box] | None) -> Rendered | None:
        """The JPEG-domain output made from a decoded crop around the faces
        (:func:`veil.jpeg_domain.splice_window`), for a JPEG stored as displayed; None
        where the whole-decode path must decide (another format or orientation, over the
        pixel limit, no TurboJPEG, or a file the crop path cannot handle)."""
        from veil import jpeg_domain  # ctypes and the library: only for faced JPEGs

        if not isinstance(source, bytes):
            return None  # unreadable: load_image says why
        raw = source
        if not containers.is_jpeg(raw) or jpeg_domain.available() is not None:
            return None
        size, icc_profile = _plain_jpeg_size(raw, self.max_pixels), None
        if size is None:  # metadata, an ICC profile or anything unusual: Pillow's reading
            try:
                header = probe(raw, max_pixels=self.max_pixels)
            except ImageError:
                return None  # the whole-decode path reports it in its words
            if header.format != "JPEG" or header.orientation != 1:
                return None
            size, icc_profile = (header.width, header.height), header.icc_profile
        regions = affected_region(size, kept, self.method, **self.options)
        if not regions:
            return None
        reads = read_region(size, kept, self.method, **self.options)

        def run(canvas: Image.Image) -> Image.Image:  # a scratch canvas: may be written
            return obfuscate_canvas(canvas, kept, self.method, **self.options)

        try:
            spliced = jpeg_domain.splice_window(raw, regions, reads, run)
        except jpeg_domain.Unsupported:
            return None
        self._warn_outside(kept, size, info)
        info.update(action="obfuscated", output=output_key(key, SUFFIXES["JPEG"]),
                    regions=[list(r) for r in regions], encoding="jpeg-domain",
                    mcus=[spliced.mcus, spliced.total_mcus])
        data = jpeg_with_colour_and_orientation(spliced.data, icc_profile, 1,
                                                grey=spliced.grey)
        return Rendered(info, data, info["output"], applied, raw)

    @staticmethod
    def _jpeg_domain(source: Path | bytes, image: Any, loaded: LoadedImage,
                     regions: list[tuple[int, int, int, int]],
                     info: dict[str, Any]) -> bytes | None:
        """The JPEG-domain output (only the MCUs the regions touch re-encoded), or None
        with the reason in ``info`` when the whole image must be re-encoded instead."""
        from veil import jpeg_domain  # ctypes and the library: only for faced JPEGs

        try:
            raw = source if isinstance(source, bytes) else Path(source).read_bytes()
            spliced = jpeg_domain.splice(raw, image, loaded.orientation, regions)
        except jpeg_domain.Unsupported as exc:
            info.update(encoding="reencoded", reencoded_because=str(exc))
            return None
        info.update(encoding="jpeg-domain", mcus=[spliced.mcus, spliced.total_mcus])
        return jpeg_with_colour_and_orientation(spliced.data, loaded.icc_profile,
                                                loaded.orientation, grey=spliced.grey)

    def _copy(self, key: str, source: Path | bytes, info: dict[str, Any],
              boxes: list[Box] | None) -> Rendered:
        """Faceless: the source bytes, minus identifying metadata (removed losslessly)."""
        if self.fmt != "jpeg" and not self.strip_metadata:
            return Rendered({**info, "action": "copied", "output": key}, None, key, boxes)
        # Most faceless files are plain JPEGs: a look at their marker segments settles it
        # without Pillow, and the bytes read are the bytes written.
        raw = source if isinstance(source, bytes) else _read_quietly(source, self.link)
        # (and nothing after its end: an appended picture is no part of a plain JPEG)
        if raw is not None and (self.link or raw.endswith(b"\xff\xd9")) \
                and plain_jpeg(raw, self.max_pixels):
            return Rendered({**info, "action": "copied", "output": key}, None, key, boxes,
                            None if self.link else raw)
        if raw is not None and not self.link and self.strip_metadata:
            cleaned = _cleaned_jpeg(raw, self.max_pixels)
            if cleaned is not None:  # a JPEG with metadata segments: dropped, no Pillow
                stripped = {"stripped": True} if cleaned != raw else {}
                return Rendered({**info, "action": "copied", "output": key, **stripped},
                                cleaned if stripped else None, key, boxes, raw)
        if self.fmt == "jpeg" and probe(source).format != "JPEG":
            loaded = load_image(source, max_pixels=self.max_pixels)
            data, suffix = encode_image(loaded.image, loaded, fmt="jpeg",
                                        jpeg_quality=self.jpeg_quality)
            target = output_key(key, suffix)
            return Rendered({**info, "action": "converted", "output": target}, data, target,
                            boxes)
        if self.strip_metadata:
            found = probe(source).metadata
            # A JPEG that is not plain may carry blocks probe does not name (an XMP packet
            # behind a malformed header, bytes after its end): the strip decides.
            if found or (raw is not None and is_jpeg(raw)):
                if raw is None or self.link:
                    raw = source.read_bytes() if isinstance(source, Path) else source
                cleaned = strip_identifying_metadata(raw)
                if found or cleaned != raw:
                    return Rendered({**info, "action": "copied", "output": key,
                                     "stripped": True}, cleaned, key, boxes, raw)
        return Rendered({**info, "action": "copied", "output": key}, None, key, boxes)


@dataclass
class ShardObfuscateTask(ObfuscateTask):
    """Mirror one WebDataset tar shard: the shard's images obfuscated or copied as in a
    folder, every other member copied byte for byte, the boxes added to each sample's
    JSON, the whole shard written atomically (it is the unit of resumption)."""

    def _shard(self, index: int, keys: Sequence[str]) -> ShardResult:
        result = ShardResult(index)
        if not keys:
            return result
        shard = wds.split_key(keys[0])[0]
        wanted = set(keys)
        source = Path(self.root) / shard
        with wds.open_tar(source) as archive, wds.ShardWriter(Path(self.out) / shard) as out:
            for _, members in wds.group_samples(archive.getmembers()):
                self._sample(archive, shard, members, wanted, out, result)
        return result

    def _sample(self, archive: tarfile.TarFile, shard: str, members: list[tarfile.TarInfo],
                wanted: set[str], out: wds.ShardWriter, result: ShardResult) -> None:
        images = [m for m in members if m.isfile() and is_image_name(m.name)]
        if not images:  # no pictures, nothing to hide: the sample as it is
            for member in members:
                out.add(copy.copy(member), _member_bytes(archive, member))
            return
        outcomes: list[tuple[str, Rendered | Exception]] = []
        written: dict[str, Rendered] = {}  # member name -> its output
        for member in images:
            key = wds.member_key(shard, member.name)
            if key not in wanted:
                continue  # not part of this run's dataset (--split, --limit): left out
            try:
                data = _member_bytes(archive, member) or b""
                rendered = self.render(key, data)
            except (ImageError, OSError) as exc:
                outcomes.append((key, exc))
                continue
            outcomes.append((key, rendered))
            if rendered.output is not None:
                rendered.data = data if rendered.data is None else rendered.data
                _record_hashes(rendered, data)
                written[member.name] = rendered
        if written:
            self._write_sample(archive, members, images, written, out)
        for key, outcome in outcomes:
            if isinstance(outcome, Exception):
                _record_error(result, key, outcome)
            else:
                _record(result, key, outcome)

    def _write_sample(self, archive: tarfile.TarFile, members: list[tarfile.TarInfo],
                      images: list[tarfile.TarInfo], written: dict[str, Rendered],
                      out: wds.ShardWriter) -> None:
        """The sample's members in their order: pictures as rendered (those left out,
        skipped or failed are dropped), the JSON with the faces, the rest as they are."""
        faces = self._faces_field(written)
        json_member = next((m for m in members if wds.field_of(m) == "json"), None)
        for member in members:
            if member in images:
                if member.name in written:
                    done = written[member.name]
                    out.add(_renamed(member, wds.split_key(done.output or "")[1]), done.data)
            elif member is json_member:
                out.add(copy.copy(member), self._with_faces(
                    _member_bytes(archive, member), faces, written))
            else:
                out.add(copy.copy(member), _member_bytes(archive, member))
        if json_member is None:
            first = images[0]
            split = wds.split_member(first.name)
            name = f"{split[0] if split else first.name}.json"
            out.add(_renamed(first, name), self._with_faces(None, faces, written))

    def _faces_field(self, rendered: dict[str, Rendered]) -> dict[str, Any]:
        boxes = {}
        for done in rendered.values():
            member = wds.split_key(done.output or "")[1]
            split = wds.split_member(member)
            name = split[1].lower() if split else member
            boxes[name] = None if done.boxes is None else [b.to_dict() for b in done.boxes]
        return {"method": self.method, "options": self.options, "boxes": boxes}

    @staticmethod
    def _with_faces(data: bytes | None, faces: dict[str, Any],
                    rendered: dict[str, Rendered]) -> bytes | None:
        """The sample's JSON with ``faces`` set; unchanged (with a warning on its images)
        when it is not a JSON object."""
        try:
            meta = {} if data is None else json.loads(data)
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            for done in rendered.values():
                done.info.setdefault("warnings", []).append(
                    "the sample's json member is not a JSON object: its faces are not in it")
            return data
        meta["faces"] = faces
        return json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class HFShardObfuscateTask(ObfuscateTask):
    """Mirror one Parquet or Arrow shard of a Hugging Face dataset (see the module's
    docstring): its images rendered as in a folder, everything else as it is."""

    def _shard(self, index: int, keys: Sequence[str]) -> ShardResult:
        result = ShardResult(index)
        if not keys:
            return result
        reader = cast(hf.HFReader, self.reader)
        shard, _ = reader.locate(keys[0])
        source = reader.shard_path(shard)
        wanted = set(keys)
        outcomes: list[tuple[str, Rendered | Exception]] = []
        with hf.ShardWriter(source, Path(self.out) / shard.relative) as out:
            start = 0
            for group in hf.iter_groups(source):
                rendered = []
                for batch in group:
                    rendered.append(self._batch(batch, reader, shard, start, wanted, outcomes))
                    start += batch.num_rows
                out.write(rendered)
        for key, outcome in outcomes:
            if isinstance(outcome, Exception):
                _record_error(result, key, outcome)
            else:
                _record(result, key, outcome)
        return result

    def _batch(self, batch: Any, reader: hf.HFReader, shard: hf.Shard, start: int,
               wanted: set[str], outcomes: list[tuple[str, Rendered | Exception]]) -> Any:
        """The batch with its rows' images rendered; a row not written: a null image."""
        images = batch.column(reader.image)
        ids = batch.column(reader.id_column).to_pylist() if reader.id_column else None
        changed: dict[int, bytes | None] = {}
        for i in range(batch.num_rows):
            key = f"{shard.split}/{ids[i]}" if ids is not None else shard.key(start + i)
            if key not in wanted:
                changed[i] = None  # not part of this run (--limit): not published
                continue
            try:
                data = hf.image_bytes(images[i].as_py(), reader.shard_path(shard))
                rendered = self.render(key, data)
            except (ImageError, OSError) as exc:
                outcomes.append((key, exc))
                changed[i] = None
                continue
            outcomes.append((key, rendered))
            if rendered.output is None:
                changed[i] = None
            else:  # the row keeps its key whatever the format (.png and all)
                rendered.output = rendered.info["output"] = key
                _record_hashes(rendered, data)
                if rendered.data is not None:
                    changed[i] = rendered.data
        return hf.replace_images(batch, reader.image, changed)


_HEAD = 1 << 16
"""Bytes read to look at a file's header when it is hard-linked, not written."""


def _read_quietly(path: Path, head_only: bool) -> bytes | None:
    """The file's bytes (its first :data:`_HEAD` with ``head_only``), or None if it
    cannot be read: :func:`veil.images.probe` then reports why, in its words."""
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read(_HEAD) if head_only else f.readall()
    except OSError:
        return None


def _record_hashes(rendered: Rendered, source: Path | bytes) -> None:
    """Put the SHA-256 and size of the output, and the SHA-256 of its source, into the
    image's ledger record, so that `veil audit` can prove each published file is the one
    written. Hashes the bytes in memory; only a file copied without being read (``--link``,
    ``--keep-metadata``) is read for it."""
    info = rendered.info
    raw = source if isinstance(source, bytes) else rendered.raw
    if raw is not None:
        source_sha, size = hashlib.sha256(raw).hexdigest(), len(raw)
    else:
        path = cast(Path, source)
        source_sha, size = file_sha256(path), os.stat(path).st_size
    if rendered.data is None:  # the source's bytes, unchanged
        output_sha = source_sha
    else:
        output_sha = hashlib.sha256(rendered.data).hexdigest()
        size = len(rendered.data)
    info.update(sha256=output_sha, bytes=size, source_sha256=source_sha)


def _plain_jpeg_size(raw: bytes, max_pixels: int | None) -> tuple[int, int] | None:
    """(width, height) of a :func:`plain_jpeg` without an ICC profile: what
    :func:`probe` would say of it (a JPEG, orientation 1, within the pixel limit, no
    colour profile), read from its header without Pillow's parse. None for any other
    file: ask probe."""
    plain = plain_jpeg_header(raw, max_pixels)
    return None if plain is None or plain.icc else (plain.width, plain.height)


def _cleaned_jpeg(raw: bytes, max_pixels: int | None) -> bytes | None:
    """``raw`` without its identifying marker segments, when it is a JPEG whose header
    walks cleanly to one 8-bit frame within the pixel limit; None: let :func:`probe` judge
    it (and name what is wrong). Most faceless files that are not :func:`plain_jpeg` only
    carry a comment, IPTC or XMP: this settles them without Pillow's ~1 ms parse."""
    if not containers.is_jpeg(raw):
        return None
    try:
        frame = next((s for s in containers.jpeg_header(raw)
                      if s.marker in (0xC0, 0xC1, 0xC2)), None)
        if frame is None:
            return None
        sof = containers.jpeg_frame(raw, frame)
        if sof.precision != 8 or not 0 < sof.width * sof.height <= max_pixels_limit(max_pixels):
            return None
        return strip_identifying_metadata(raw)
    except ImageError:
        return None


def _record(result: ShardResult, key: str, rendered: Rendered) -> None:
    info = rendered.info
    if info["action"] == "unannotated":
        result.items.append(RunItem(key, status="error", error=UNANNOTATED_MESSAGE))
        result.counts["errors"] += 1
        return
    _count(result.counts, info)
    result.items.append(RunItem(key, info=info))


def _count(counts: Counter[str], info: Mapping[str, Any]) -> None:
    """An image's contribution to the summary: its action, faces and JPEG encoding."""
    counts[info.get("action", "copied")] += 1
    counts["faces"] += info.get("faces", 0)
    if info.get("encoding") == "jpeg-domain":
        counts["jpeg-domain"] += 1
    elif info.get("encoding") == "reencoded":
        counts["re-encoded whole"] += 1


def _record_error(result: ShardResult, key: str, exc: Exception) -> None:
    if isinstance(exc, ImageError):
        message = str(exc)
    else:
        reason = getattr(exc, "strerror", None) or exc
        message = f"{reason} ({getattr(exc, 'filename', None) or key})"
    result.items.append(RunItem(key, status="error", error=message))
    result.counts["errors"] += 1


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | None:
    if not member.isfile():
        return None
    handle = archive.extractfile(member)
    return handle.read() if handle is not None else b""


def _renamed(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    """A copy of ``member``'s header (mode, owner, time) for a member called ``name``."""
    info = copy.copy(member)
    info.pax_headers = {k: v for k, v in member.pax_headers.items() if k not in ("path", "size")}
    info.name = name
    return info


def output_key(key: str, suffix: str) -> str:
    """The output's key: the input key, with the suffix the output format demands."""
    path = PurePosixPath(key)
    if not suffix or path.suffix.lower() == suffix.lower():
        return key
    if suffix.lower() in (".jpg", ".jpeg") and path.suffix.lower() in (".jpg", ".jpeg"):
        return key
    return str(path.with_suffix(suffix))


def _fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def obfuscate_dataset(
    dataset: Dataset,
    faces: FacesSnapshot,
    out: str | Path,
    *,
    method: str = "blur",
    options: dict[str, Any] | None = None,
    fmt: str = "keep",
    jpeg_quality: int = 95,
    link: bool = False,
    strip_metadata: bool = True,
    unannotated: str = "error",
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    out_format: str = "auto",
    backend: str | Backend | None = None,
    ledger: str | Path | None = None,
) -> RunSummary:
    """Write ``dataset`` with every face in ``faces`` obfuscated into ``out``.

    ``ledger``: where the run is recorded (default ``OUT.veil-ledger.sqlite`` beside
    ``out``, see :func:`ledger_path`); it must not be inside ``out``.

    ``out_format``: ``files`` (a folder mirroring the keys), ``webdataset`` (tar shards
    mirroring a WebDataset input, one run shard per tar; ``shard_size`` does not apply)
    or ``auto`` (``webdataset`` for a WebDataset input, else ``files``). Resumes an
    interrupted run into the same folder with the same settings, on any backend;
    refuses to mix the output of different settings in one folder unless ``overwrite``.
    """
    if method not in METHODS:
        raise VeilError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if fmt not in FORMATS:
        raise VeilError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if unannotated not in UNANNOTATED_POLICIES:
        raise VeilError(f"--unannotated must be one of {', '.join(UNANNOTATED_POLICIES)}")
    out_format = _resolve_out_format(out_format, dataset, link)
    out = Path(out)
    root = dataset.root.resolve()
    if out.resolve() == root or root in out.resolve().parents:
        raise VeilError(f"the output folder {out} must not be inside the dataset {root}")
    config = {
        "dataset": str(root), "images": len(dataset), "faces": faces.fingerprint(),
        "faces_source": faces.description, "method": method, "options": options or {},
        "format": fmt, "jpeg_quality": jpeg_quality, "link": link,
        "strip_metadata": strip_metadata, "unannotated": unannotated, "max_pixels": max_pixels,
    }
    if out_format != "files":
        config["out_format"] = out_format
    ledger_file = ledger_path(out, ledger)
    if out.resolve() in ledger_file.resolve().parents:
        raise VeilError(f"the ledger {ledger_file} must not be inside the output folder {out}: "
                        "it records this machine's name and paths, and would be published")
    if overwrite or not out.exists():
        # with OUT gone its ledger describes nothing: deleting OUT is starting over
        if out.exists():
            shutil.rmtree(out)
        _remove_ledger(ledger_file)
    else:
        _adopt_legacy_ledger(out, ledger_file)
    ledger_file.parent.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with RunLedger(ledger_file) as store:
        previous = [r for r in store.runs("obfuscate") if r.config != config]
        if previous:
            raise VeilError(
                f"{out} already holds output made with other settings (run {previous[-1].id});"
                " use another folder or --overwrite"
            )
        remove_stale_temps(out)
        keys = dataset.keys()
        file_shards = dataset.groups() if out_format != "files" else None
        run_id, done = prepare_run(store, "obfuscate", config, keys, shard_size=shard_size,
                                   shards=file_shards)
        task_type = {"webdataset": ShardObfuscateTask,
                     "huggingface": HFShardObfuscateTask}.get(out_format, ObfuscateTask)
        task = task_type(
            str(root), str(out.resolve()),
            {k: faces.boxes[k] for k in keys if k in faces.boxes},
            method, dict(options or {}), fmt, jpeg_quality, link, strip_metadata, unannotated,
            max_pixels, dataset.reader(),
        )
        runner = get_backend(backend)
        if workers is None:
            workers = default_obfuscate_workers(runner, len(keys))
        summary = execute(
            store, run_id, task, workers=workers,
            progress=progress, description=f"obfuscate ({method})", resumed_shards=done,
            backend=runner,
        )
        if done:
            _add_earlier_counts(store, run_id, summary)
    if dataset.hf_layout is not None and not summary.interrupted and not summary.failed_shards:
        _write_hf_sidecars(dataset, out, _fingerprint(config))  # once every shard is there
    return summary


COMPILED_BLUR_FROM = 750
"""Faced images from which a job loads the blur's numba passes. Measured on the full-size
ILSVRC photos, one core: loading them costs ~0.9 s per process (numba's import and its
dispatcher), and they save ~1.2 ms per faced image over the Pillow passes (1.1 vs 2.2 ms),
so below some 750 faced images the Pillow passes finish first (same pixels either way)."""

IMAGES_PER_LOCAL_WORKER = 5000
"""A local worker process costs ~1.5 s to start (forkserver, imports, the blur's compiled
passes), what one core obfuscates ~2,700 images in: below about twice that per worker a pool
loses to one in-process worker (571 images: 0.87x vs 3.5x the paper script)."""


def default_obfuscate_workers(backend: Backend, images: int) -> int:
    """Workers when the user gives none: the backend's default, but locally no more than
    one per :data:`IMAGES_PER_LOCAL_WORKER` images (at least one)."""
    workers = backend.default_workers()
    if backend.name == "local":
        workers = max(1, min(workers, images // IMAGES_PER_LOCAL_WORKER))
    return workers


def _resolve_out_format(out_format: str, dataset: Dataset, link: bool) -> str:
    if out_format not in OUT_FORMATS:
        raise VeilError(f"unknown output format {out_format!r}; choose one of "
                        f"{', '.join(OUT_FORMATS)}")
    if out_format == "auto":
        out_format = dataset.layout if dataset.layout in ("webdataset", "huggingface") else (
            "files")
    if out_format != "files" and dataset.layout != out_format:
        name = {"webdataset": "WebDataset tar", "huggingface": "Hugging Face"}[out_format]
        raise VeilError(f"--out-format {out_format} mirrors {name} shards, but the dataset "
                        f"is a {dataset.layout} dataset; use --out-format files")
    if dataset.layout == "huggingface" and out_format != "huggingface":
        raise VeilError("a Hugging Face dataset's images are rows of its shards, not files: "
                        "it is written back as the same dataset (--out-format huggingface)")
    if out_format != "files" and link:
        raise VeilError(f"--link hard-links files of a folder output; {out_format} shards are "
                        "written whole")
    return out_format


def _write_hf_sidecars(dataset: Dataset, out: Path, fingerprint: str) -> None:
    """A Hugging Face output's files besides its shards (those of this run's shards)."""
    assert dataset.hf_layout is not None
    used = {e.path for e in dataset}
    written = [s for s in dataset.hf_layout.shards if dataset.hf_layout.root / s.relative in used]
    hf.write_sidecars(dataset.hf_layout, out, written, fingerprint)


def _add_earlier_counts(ledger: RunLedger, run_id: int, summary: RunSummary) -> None:
    """After a resume, report the whole run, not only the shards this process did."""
    counts: Counter[str] = Counter()
    errors = []
    for item in ledger.run_items(run_id):
        if item.status == "error":
            counts["errors"] += 1
            errors.append((item.key, item.error or "error"))
            continue
        _count(counts, item.info or {})
    summary.counts = counts
    summary.errors = errors
