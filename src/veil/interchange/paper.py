"""The paper's format: ``face_annotations_ILSVRC.json``.

A JSON list of ``{"url": key, "bboxes": [{"x0", "y0", "x1", "y1"}, ...]}``, faceless
images included with ``"bboxes": []``. Written one image per line, sorted by key,
floats in Python's shortest round-trip form, so export -> import -> export is
byte-identical and the file diffs well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from veil.boxes import Box
from veil.errors import FacesFileError
from veil.interchange.common import (
    COORDS,
    FacesFile,
    atomic_text,
    box_row,
    flat_val_key,
    load_json,
    number,
    optional_number,
)

#: Box fields that become part of the Box itself; any others are kept as extras.
_BOX_FIELDS = {*COORDS, "score", "source"}


def read_paper(path: str | os.PathLike[str], document: Any = None) -> FacesFile:
    """Parse a paper-format file (``document`` if it was already loaded)."""
    path = Path(path)
    data = load_json(path) if document is None else document
    if not isinstance(data, list):
        raise FacesFileError(
            f"{path}: expected a JSON list of {{\"url\", \"bboxes\"}} entries (the paper's "
            f"format), found a JSON {type(data).__name__}"
        )
    out = FacesFile(format="paper", path=path)
    for i, entry in enumerate(data):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise FacesFileError(f"{path}: {where}: expected an object, found {entry!r:.80}")
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            raise FacesFileError(f"{path}: {where}: missing or empty \"url\"")
        where = f"entry {i} ({url})"
        bboxes = entry.get("bboxes")
        if not isinstance(bboxes, list):
            raise FacesFileError(f"{path}: {where}: \"bboxes\" must be a list")
        boxes = [_parse_box(raw, f"{where} box {j}", path) for j, raw in enumerate(bboxes)]
        extra = {k: v for k, v in entry.items() if k not in ("url", "bboxes")}
        out.add(url, boxes, extra)
    return out


def _parse_box(raw: Any, where: str, path: Path) -> tuple[Box, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise FacesFileError(f"{path}: {where}: expected an object, found {raw!r:.80}")
    missing = [name for name in COORDS if name not in raw]
    if missing:
        raise FacesFileError(f"{path}: {where}: missing {', '.join(missing)}")
    coords = [number(raw[name], f"{where} {name}", path) for name in COORDS]
    score = optional_number(raw.get("score"), f"{where} score", path)
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise FacesFileError(f"{path}: {where}: \"source\" must be a string")
    extra = {k: v for k, v in raw.items() if k not in _BOX_FIELDS}
    x0, y0, x1, y1 = coords
    return Box(x0, y0, x1, y1, score=score, source=source), extra


def write_paper(
    faces: Mapping[str, Sequence[Box]],
    path: str | os.PathLike[str],
    *,
    flatten_val: bool = True,
) -> int:
    """Write the paper's format; returns the number of images written.

    With ``flatten_val`` (the released file's convention) ``val/<wnid>/<file>``
    becomes ``val/<file>``; two keys that would flatten to the same name are an error.
    """
    entries: dict[str, str] = {}
    for key in faces:
        out_key = flat_val_key(key) if flatten_val else key
        if out_key in entries:
            raise FacesFileError(
                f"{entries[out_key]} and {key} both become {out_key} when val folders are "
                "flattened; keep the folders instead"
            )
        entries[out_key] = key
    with atomic_text(path) as f:
        f.write("[")
        for n, out_key in enumerate(sorted(entries)):
            key = entries[out_key]
            try:
                bboxes = [box_row(box) for box in faces[key]]
            except FacesFileError as exc:
                raise FacesFileError(f"{key}: {exc}") from exc
            f.write(",\n" if n else "\n")
            f.write(json.dumps({"url": out_key, "bboxes": bboxes}, allow_nan=False))
        f.write("\n]\n")
    return len(entries)
