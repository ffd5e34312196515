"""Where a stage gets its face boxes: a face store or a faces file, as one snapshot.

``--faces`` accepts either, so a curator can obfuscate straight from the paper's
released JSON or from the store their review produced. The snapshot carries a
fingerprint of every box, so a resumed run can tell whether the faces changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from veil.boxes import Box
from veil.errors import FacesFileError, VeilError

if TYPE_CHECKING:
    from veil.store import FaceStore

STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class FacesSnapshot:
    """Image key -> boxes. A key with an empty list is known to be faceless; a key
    that is absent was never detected or reviewed."""

    boxes: dict[str, list[Box]]
    description: str
    warnings: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.boxes):
            coords = [b.as_xyxy() for b in self.boxes[key]]
            digest.update(json.dumps([key, coords]).encode())
        return digest.hexdigest()

    @property
    def face_count(self) -> int:
        return sum(len(b) for b in self.boxes.values())


def is_store_location(spec: str | os.PathLike[str]) -> bool:
    """A SQLAlchemy URL or an SQLite file (by suffix or by its header)."""
    text = str(spec)
    if "://" in text:
        return True
    path = Path(text)
    if path.suffix.lower() in STORE_SUFFIXES:
        return True
    if path.is_file():
        with path.open("rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    return False


def load_faces(
    source: str | os.PathLike[str] | FaceStore | Mapping[str, Sequence[Box]],
) -> FacesSnapshot:
    """Read the current boxes of every image from a store, a faces file or a mapping."""
    if isinstance(source, Mapping):
        return FacesSnapshot({k: list(v) for k, v in source.items()}, "boxes given in Python")
    from veil.store import FaceStore

    if isinstance(source, FaceStore):
        return FacesSnapshot(source.current_boxes(), f"face store {source.display_url}")
    if is_store_location(source):
        if "://" not in str(source) and not Path(source).exists():
            raise VeilError(f"face store not found: {source}")
        with FaceStore(source, create=False) as store:
            return FacesSnapshot(store.current_boxes(), f"face store {store.display_url}")
    from veil.interchange import read_faces

    path = Path(source)
    if not path.exists():
        raise FacesFileError(f"faces file not found: {path}")
    faces = read_faces(path)
    return FacesSnapshot(
        {k: list(v) for k, v in faces.items()}, f"faces file {path}", list(faces.warnings)
    )
