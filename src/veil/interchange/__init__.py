"""Faces files in and out of the face store: the paper's JSON, COCO JSON, Parquet.

``read_faces`` / ``write_faces`` convert between files and ``key -> boxes`` mappings;
``import_faces`` / ``export_faces`` move them between files and a :class:`FaceStore`.
Imported annotations are the human answer (a review per image) unless they are
another detector's predictions (``as_detections``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.boxes import Box
from veil.errors import FacesFileError, VeilError
from veil.interchange.coco import read_coco, write_coco
from veil.interchange.common import FORMATS, FacesFile, KeyResolver, flat_val_key, load_json
from veil.interchange.paper import read_paper, write_paper
from veil.store import ImageRecord, RunItem

if TYPE_CHECKING:  # a FaceStore comes from the caller: SQLAlchemy loads only then
    from veil.store import FaceStore

__all__ = [
    "FORMATS",
    "FacesFile",
    "ImportReport",
    "KeyResolver",
    "export_faces",
    "flat_val_key",
    "guess_format",
    "import_faces",
    "read_faces",
    "write_faces",
]

#: Images per shard when a file is imported as a detection run.
IMPORT_SHARD_SIZE = 10_000
_PARQUET_SUFFIXES = (".parquet", ".pq")


def guess_format(path: str | os.PathLike[str]) -> str:
    """'parquet' for Parquet files (by magic bytes), else 'json' (paper or COCO, by content)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise FacesFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return "parquet" if head == b"PAR1" else "json"


def read_faces(path: str | os.PathLike[str], fmt: str = "auto") -> FacesFile:
    """Read a faces file; ``fmt`` is 'auto', 'paper', 'coco' or 'parquet'.

    Degenerate boxes are skipped with a warning naming the image; malformed files
    raise :class:`FacesFileError` saying where.
    """
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"unknown faces format {fmt!r}; use auto, {', '.join(FORMATS)}")
    if fmt == "parquet" or (fmt == "auto" and guess_format(path) == "parquet"):
        from veil.interchange.parquet import read_parquet  # pyarrow: only for Parquet

        return read_parquet(path)
    document = load_json(path)
    if fmt == "auto":
        fmt = "coco" if isinstance(document, dict) else "paper"
    return read_coco(path, document) if fmt == "coco" else read_paper(path, document)


def write_faces(
    faces: Mapping[str, Sequence[Box]],
    path: str | os.PathLike[str],
    fmt: str = "auto",
    *,
    images: Mapping[str, ImageRecord] | None = None,
    flatten_val: bool = True,
) -> int:
    """Write ``faces`` atomically; returns the number of images written.

    ``fmt='auto'`` picks Parquet for ``.parquet``/``.pq`` and the paper's JSON
    otherwise. ``images`` supplies sizes and labels (COCO, Parquet). ``flatten_val``
    applies to the paper's format only, whose released file names val images
    ``val/<file>``; COCO and Parquet keep keys exactly.
    """
    if fmt == "auto":
        fmt = "parquet" if Path(path).suffix.lower() in _PARQUET_SUFFIXES else "paper"
    if fmt == "paper":
        return write_paper(faces, path, flatten_val=flatten_val)
    if fmt == "coco":
        return write_coco(faces, path, images=images)
    if fmt == "parquet":
        from veil.interchange.parquet import write_parquet

        return write_parquet(faces, path, images=images)
    raise ValueError(f"unknown faces format {fmt!r}; use {', '.join(FORMATS)}")


@dataclass
class ImportReport:
    """What an import did, for the user to check (unknown keys are never imported)."""

    path: Path
    format: str
    run_id: int
    as_detections: bool
    annotator: str | None
    images: int = 0
    boxes: int = 0
    faceless: int = 0
    remapped: int = 0
    unknown: int = 0
    unknown_examples: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self, max_examples: int = 5) -> list[str]:
        """A short human summary: totals, then unknown keys and warnings (first few)."""
        what = "detections" if self.as_detections else f"reviews by {self.annotator}"
        out = [
            f"imported {self.images:,} images ({self.boxes:,} boxes, {self.faceless:,} without "
            f"faces) from {self.path.name} ({self.format}) as {what}, run {self.run_id}"
        ]
        if self.remapped:
            out.append(f"{self.remapped:,} val keys matched the dataset by file name")
        if self.unknown:
            shown = ", ".join(self.unknown_examples[:max_examples])
            out.append(
                f"{self.unknown:,} keys are not in the dataset and were skipped, e.g. {shown}"
            )
        if self.warnings:
            first = min(max_examples, len(self.warnings))
            out.append(f"{len(self.warnings):,} warnings, first {first}:")
            out.extend(f"  {w}" for w in self.warnings[:max_examples])
        return out


def import_faces(
    store: FaceStore,
    path: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    annotator: str | None = None,
    as_detections: bool = False,
    known_keys: Collection[str] | None = None,
) -> ImportReport:
    """Import a faces file into ``store`` as one run.

    By default every image becomes a review of kind 'import' by ``annotator``
    (default ``import:<file name>``): imported annotations are the human answer.
    With ``as_detections`` they become a 'detect' run instead (another detector's
    predictions). With ``known_keys`` (a dataset's keys), keys resolve exactly, then
    val keys by file name; keys that do not resolve are reported and not imported.
    """
    path = Path(path)
    started = time.perf_counter()
    faces = read_faces(path, fmt)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    annotator = None if as_detections else (annotator or f"import:{path.name}")
    config: dict[str, Any] = {
        "file": path.name, "sha256": digest, "format": faces.format,
        "as_detections": as_detections,
    }
    if annotator is not None:
        config["annotator"] = annotator
    resolved, report_bits = _resolve(faces, known_keys)
    if faces and not resolved:
        examples = ", ".join(report_bits["unknown_examples"][:3])
        raise VeilError(
            f"none of the {len(faces):,} keys in {path.name} are in the dataset (e.g. {examples}); "
            "nothing was imported"
        )
    keys = sorted(resolved)
    shards = (
        [keys[i:i + IMPORT_SHARD_SIZE] for i in range(0, len(keys), IMPORT_SHARD_SIZE)]
        if as_detections else []
    )
    run_id = store.start_run("detect" if as_detections else "import", config, shards)
    report = ImportReport(
        path=path, format=faces.format, run_id=run_id, as_detections=as_detections,
        annotator=annotator, warnings=list(faces.warnings), **report_bits,
    )
    report.images = len(resolved)
    report.boxes = sum(len(boxes) for boxes, _ in resolved.values())
    report.faceless = sum(not boxes for boxes, _ in resolved.values())
    try:
        records = [rec for _, rec in resolved.values() if rec is not None]
        if as_detections:
            _import_detections(store, run_id, shards, resolved, f"import:{path.name}")
        else:
            if records:
                store.register_images(records)
            store.add_reviews(
                ((key, boxes) for key, (boxes, _) in resolved.items()),
                annotator=annotator or "", kind="import", run_id=run_id,
            )
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    store.finish_run(run_id, "done", {"seconds": round(time.perf_counter() - started, 3)})
    return report


def _resolve(
    faces: FacesFile, known_keys: Collection[str] | None
) -> tuple[dict[str, tuple[list[Box], ImageRecord | None]], dict[str, Any]]:
    """Dataset key -> (boxes, catalogue info) for every key of the file that resolves."""
    resolver = KeyResolver(known_keys) if known_keys is not None else None
    out: dict[str, tuple[list[Box], ImageRecord | None]] = {}
    unknown: list[str] = []
    remapped = 0
    warnings: list[str] = []
    for key, boxes in faces.items():
        target = key if resolver is None else resolver(key)
        if target is None:
            unknown.append(key)
            continue
        remapped += target != key
        record = faces.images.get(key)
        if record is not None:
            record = replace(record, key=target)
        if target in out:
            warnings.append(f"{key}: resolves to {target} like another entry; boxes merged")
            out[target] = (out[target][0] + list(boxes), out[target][1] or record)
        else:
            out[target] = (list(boxes), record)
    bits = {"remapped": remapped, "unknown": len(unknown), "unknown_examples": unknown[:10]}
    faces.warnings.extend(warnings)
    return out, bits


def _import_detections(
    store: FaceStore,
    run_id: int,
    shards: Sequence[Sequence[str]],
    resolved: Mapping[str, tuple[list[Box], ImageRecord | None]],
    source: str,
) -> None:
    """Complete each shard of a detection-run import (boxes keep a source of their own)."""
    for index, shard in enumerate(shards):
        store.complete_shard(
            run_id, index,
            items=[RunItem(key) for key in shard],
            images=[rec for key in shard if (rec := resolved[key][1]) is not None],
            detections={
                key: [b if b.source is not None else replace(b, source=source)
                      for b in resolved[key][0]]
                for key in shard
            },
        )


def export_faces(
    store: FaceStore,
    path: str | os.PathLike[str],
    fmt: str,
    *,
    keys: Collection[str] | None = None,
    flatten_val: bool = True,
) -> int:
    """Write the store's current boxes (see :meth:`FaceStore.current_boxes`) to a file.

    Only images with an answer are written (a review, or a detection run that
    processed them); images never looked at are left out rather than called
    faceless. Returns the number of images written.
    """
    faces = store.current_boxes(keys)
    images = None
    if fmt in ("coco", "parquet"):
        images = {rec.key: rec for rec in _catalogue(store, faces, keys)}
    return write_faces(faces, path, fmt, images=images, flatten_val=flatten_val)


def _catalogue(
    store: FaceStore, faces: Mapping[str, Any], keys: Collection[str] | None
) -> Iterator[ImageRecord]:
    for record in store.images(None if keys is None else list(faces)):
        if record.key in faces:
            yield record
