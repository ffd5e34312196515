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
    """Whether ``spec`` names a face store rather than a faces file.

    The one rule every ``--faces``/GT/PRED argument follows: a SQLAlchemy URL is a
    store; an existing file is one by its content (SQLite's header; an empty file with a
    store suffix too, SQLite's empty database), whatever its name, so a JSON faces file
    named ``.db`` is read as a faces file; a path that does not exist is one by its
    suffix (.sqlite, .sqlite3, .db), so its error says "no face store" rather than "no
    faces file". ``~`` is expanded, as the store expands it.
    """
    text = os.fspath(spec)
    if "://" in text:
        return True
    path = Path(text).expanduser()
    store_suffix = path.suffix.lower() in STORE_SUFFIXES
    if path.is_file():
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_MAGIC))
        return header == SQLITE_MAGIC or (header == b"" and store_suffix)
    return store_suffix and not path.exists()


def load_faces(
    source: str | os.PathLike[str] | FaceStore | Mapping[str, Sequence[Box]],
) -> FacesSnapshot:
    """Read the current boxes of every image from a store, a faces file or a mapping."""
    if isinstance(source, Mapping):
        return FacesSnapshot({k: list(v) for k, v in source.items()}, "boxes given in Python")
    if not isinstance(source, (str, os.PathLike)):  # an open FaceStore (no import here:
        # SQLAlchemy loads only for a store, not for a faces file)
        return FacesSnapshot(source.current_boxes(), f"face store {source.display_url}")
    if is_store_location(source):
        from veil.store import FaceStore

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


#: A split whose face records cover less than this share of its images is refused:
#: the faces source was almost surely keyed for another layout or another dataset,
#: and a study on it would silently compare "obfuscated" data that is mostly original.
#: (The authors' annotations list every ILSVRC image, so a faithful setup matches 100%.)
MIN_MATCHED_SHARE = 0.5


@dataclass(frozen=True)
class SplitMatch:
    """How one split's images met the faces source's records."""

    images: int  # images of the split in the dataset
    with_faces: int  # of those, matched to a record with at least one box
    face_records: int  # records of the faces source in this split (any image)
    matched: int  # images of the split that got a record

    def to_json(self) -> dict[str, int]:
        return {"images": self.images, "with_faces": self.with_faces,
                "face_records": self.face_records, "matched": self.matched}


@dataclass
class MatchedFaces:
    """A snapshot re-keyed onto the dataset's keys, with per-split counts."""

    snapshot: FacesSnapshot
    splits: dict[str, SplitMatch]
    remapped: int  # records that matched by file name rather than by path
    unmatched: list[str] = field(default_factory=list)  # records naming no dataset image

    def to_json(self) -> dict[str, dict[str, int]]:
        return {name: match.to_json() for name, match in self.splits.items()}


def match_faces(snapshot: FacesSnapshot, dataset_keys: Sequence[str], *,
                splits: Sequence[str] | None = None,
                min_share: float = MIN_MATCHED_SHARE) -> MatchedFaces:
    """Re-key ``snapshot`` onto ``dataset_keys`` with :class:`KeyResolver`, the rule every
    stage uses (same path, else same split + file name, else same split + stem).

    Raises VeilError when a record could mean several images, when two records land on
    one image, or when a split (a key's first folder; ``splits`` limits which) has
    images and face records but fewer than ``min_share`` of its images matched one
    (none matched always fails), with the counts.
    """
    from veil.interchange.common import KeyResolver, key_split

    resolve = KeyResolver(dataset_keys)
    boxes: dict[str, list[Box]] = {}
    origin: dict[str, str] = {}
    records: dict[str, int] = {}
    remapped = 0
    unmatched: list[str] = []
    for key, found in snapshot.boxes.items():
        records[key_split(key)] = records.get(key_split(key), 0) + 1
        candidates = resolve.candidates(key)
        if len(candidates) > 1:
            raise VeilError(
                f"face record {key!r} ({snapshot.description}) could be any of"
                f" {len(candidates)} images of the dataset ({', '.join(candidates[:3])}):"
                " the file name occurs in several folders of one split; key the faces"
                " by their full path relative to the dataset root")
        if not candidates:
            unmatched.append(key)
            continue
        target = candidates[0]
        if target in boxes:
            raise VeilError(
                f"face records {origin[target]!r} and {key!r} ({snapshot.description})"
                f" both name the image {target}; keep one of them")
        boxes[target], origin[target] = list(found), key
        remapped += target != key
    per_split: dict[str, list[str]] = {}
    for key in dataset_keys:
        per_split.setdefault(key_split(key), []).append(key)
    names = list(splits) if splits is not None else sorted(per_split)
    result: dict[str, SplitMatch] = {}
    for name in names:
        keys = per_split.get(name, [])
        matched = [k for k in keys if k in boxes]
        result[name] = SplitMatch(
            images=len(keys), with_faces=sum(1 for k in matched if boxes[k]),
            face_records=records.get(name, 0), matched=len(matched))
    problems = [
        f"{name}: {m.matched} of {m.images} images matched one of the split's"
        f" {m.face_records} face records"
        for name, m in result.items()
        if m.images and m.face_records and (not m.matched or m.matched < min_share * m.images)
    ]
    if problems:
        example = unmatched[0] if unmatched else ""
        raise VeilError(
            f"the faces source ({snapshot.description}) does not fit the dataset's layout:"
            f" {'; '.join(problems)} (at least {min_share:.0%} must match; keys are paths"
            f" relative to the folder holding the splits, matched by path, then by split"
            f" and file name; an unmatched record: {example!r})")
    resolved = FacesSnapshot(boxes, snapshot.description, list(snapshot.warnings))
    return MatchedFaces(resolved, result, remapped, unmatched)
