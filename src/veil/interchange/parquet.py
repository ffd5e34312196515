"""Parquet: one row per image, boxes as a list of structs; exact and compact.

Columns: ``key`` string, ``width``/``height`` int32, ``label`` string, ``boxes``
``list<struct<x0, y0, x1, y1: double, score: double, source: string>>``. Faceless
images are rows with an empty list. Extra columns and box fields are kept as extras.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from veil import __version__
from veil.boxes import Box
from veil.errors import FacesFileError
from veil.files import atomic_path
from veil.interchange.common import COORDS, FacesFile
from veil.store.records import ImageRecord

BOX_TYPE = pa.struct(
    [(name, pa.float64()) for name in COORDS] + [("score", pa.float64()), ("source", pa.string())]
)
SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("boxes", pa.list_(BOX_TYPE)),
    ],
    metadata={"veil.format": "faces/1", "veil.version": __version__},
)
_ROWS_PER_GROUP = 65_536
_STANDARD = {"key", "width", "height", "label", "boxes"}
_BOX_FIELDS = {*COORDS, "score", "source"}


def read_parquet(path: str | os.PathLike[str]) -> FacesFile:
    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise FacesFileError(f"{path}: not a readable Parquet file: {exc}") from exc
    _check_schema(parquet.schema_arrow, path)
    out = FacesFile(format="parquet", path=path)
    for n, row in _rows(parquet, path):
        key = row.get("key")
        if not isinstance(key, str) or not key:
            raise FacesFileError(f"{path}: row {n}: missing or empty key")
        raw_boxes = row.get("boxes")
        if raw_boxes is None:
            out.warnings.append(f"{key}: row {n} has no boxes list (null); image skipped")
            continue
        boxes = [_box(raw) for raw in raw_boxes]
        extra = {k: v for k, v in row.items() if k not in _STANDARD and v is not None}
        out.add(key, boxes, extra)
        out.images[key] = ImageRecord(
            key, width=row.get("width"), height=row.get("height"), label=row.get("label")
        )
    return out


def _check_schema(schema: pa.Schema, path: Path) -> None:
    names = set(schema.names)
    if "key" not in names or "boxes" not in names:
        raise FacesFileError(f"{path}: a faces table needs columns \"key\" and \"boxes\"")
    if not pa.types.is_string(schema.field("key").type) and not pa.types.is_large_string(
        schema.field("key").type
    ):
        raise FacesFileError(f"{path}: column \"key\" must hold strings")
    boxes = schema.field("boxes").type
    ok = (pa.types.is_list(boxes) or pa.types.is_large_list(boxes)) and pa.types.is_struct(
        boxes.value_type
    )
    fields = {boxes.value_type.field(i).name for i in range(boxes.value_type.num_fields)} if ok \
        else set()
    if not ok or not set(COORDS) <= fields:
        raise FacesFileError(
            f"{path}: column \"boxes\" must be a list of structs with x0, y0, x1, y1"
        )
    for name in ("width", "height"):
        if name in names and not pa.types.is_integer(schema.field(name).type):
            raise FacesFileError(f"{path}: column \"{name}\" must hold integers")


def _rows(parquet: pq.ParquetFile, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    n = 0
    try:
        for batch in parquet.iter_batches(batch_size=_ROWS_PER_GROUP):
            for row in batch.to_pylist():
                yield n, row
                n += 1
    except (pa.ArrowException, OSError) as exc:
        raise FacesFileError(f"{path}: unreadable after row {n}: {exc}") from exc


def _box(raw: dict[str, Any]) -> tuple[Box, dict[str, Any]]:
    coords = [math.nan if raw[name] is None else float(raw[name]) for name in COORDS]
    score = raw.get("score")
    source = raw.get("source")
    extra = {k: v for k, v in raw.items() if k not in _BOX_FIELDS and v is not None}
    x0, y0, x1, y1 = coords
    return Box(x0, y0, x1, y1, score=None if score is None else float(score),
               source=None if source is None else str(source)), extra


def write_parquet(
    faces: Mapping[str, Sequence[Box]],
    path: str | os.PathLike[str],
    *,
    images: Mapping[str, ImageRecord] | None = None,
) -> int:
    """Write one row per image in key order; returns the number of rows."""
    images = images or {}
    keys = sorted(faces)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
        for start in range(0, len(keys), _ROWS_PER_GROUP):
            rows = []
            for key in keys[start:start + _ROWS_PER_GROUP]:
                record = images.get(key)
                rows.append({
                    "key": key,
                    "width": record.width if record else None,
                    "height": record.height if record else None,
                    "label": record.label if record else None,
                    "boxes": [
                        {"x0": float(b.x0), "y0": float(b.y0), "x1": float(b.x1),
                         "y1": float(b.y1), "score": None if b.score is None else float(b.score),
                         "source": b.source}
                        for b in faces[key]
                    ],
                })
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
        if not keys:
            writer.write_table(SCHEMA.empty_table())
    return len(keys)
