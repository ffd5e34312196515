"""What every faces-file format shares: the parsed result, key rules, safe writing."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from veil.boxes import Box, usable_boxes
from veil.errors import FacesFileError
from veil.files import atomic_path
from veil.store.records import ImageRecord

FORMATS = ("paper", "coco", "parquet")
COORDS = ("x0", "y0", "x1", "y1")


@dataclass(eq=False)
class FacesFile(Mapping[str, list[Box]]):
    """A parsed faces file: key -> usable boxes, with everything else the file said.

    ``box_extras[key][i]`` holds the fields of box ``i`` that are not coordinates,
    score or source (WIDER's ``invalid``, ``blur``, ...); ``image_extras[key]`` the
    per-image fields beyond key and boxes (WIDER's ``event``); ``images`` the sizes
    and labels the file gives (COCO, Parquet). Skipped boxes are named in ``warnings``.
    """

    faces: dict[str, list[Box]] = field(default_factory=dict)
    box_extras: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    image_extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, ImageRecord] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    format: str = ""
    path: Path | None = None

    def __getitem__(self, key: str) -> list[Box]:
        return self.faces[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.faces)

    def __len__(self) -> int:
        return len(self.faces)

    def extras(self, key: str) -> list[dict[str, Any]]:
        """Per-box extra fields of ``key``, parallel to ``self[key]``."""
        return self.box_extras.get(key) or [{} for _ in self.faces.get(key, ())]

    def add(
        self,
        key: str,
        boxes: list[tuple[Box, dict[str, Any]]],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one image's boxes, skipping degenerate ones with a warning naming ``key``.

        A key seen twice gets the union of its boxes (and a warning): dropping either
        set could leave a face unobfuscated.
        """
        kept, problems = usable_boxes(box for box, _ in boxes)
        self.warnings.extend(f"{key}: {problem}" for problem in problems)
        kept_ids = {id(box) for box in kept}
        extras = [ext for box, ext in boxes if id(box) in kept_ids]
        if key in self.faces:
            self.warnings.append(f"{key}: appears more than once; its boxes were merged")
            self.faces[key].extend(kept)
            self.box_extras[key].extend(extras)
        else:
            self.faces[key] = kept
            self.box_extras[key] = extras
        if extra:
            self.image_extras.setdefault(key, {}).update(extra)


def number(value: Any, where: str, path: Path) -> float:
    """A coordinate as float; JSON NaN passes (it is skipped later, with a warning)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FacesFileError(f"{path}: {where}: expected a number, found {value!r}")
    return float(value)


def optional_number(value: Any, where: str, path: Path) -> float | None:
    return None if value is None else number(value, where, path)


def flat_val_key(key: str) -> str:
    """The released file's val key: ``val/<wnid>/<file>`` -> ``val/<file>``. A row of a
    Hugging Face shard (``val/<shard>.parquet/<row>``) keeps its key: its row number is no
    file name."""
    if key.startswith("val/") and key.count("/") >= 2:
        if key.split("/")[1].lower().endswith((".parquet", ".arrow")):
            return key
        return "val/" + key.rsplit("/", 1)[1]
    return key


def key_split(key: str) -> str:
    """The split a key belongs to: its first folder (``train``, ``val``), "" when flat."""
    head, sep, _ = key.partition("/")
    return head if sep else ""


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _stem(key: str) -> str:
    name = _name(key)
    return name.rsplit(".", 1)[0] if "." in name else name


class KeyResolver:
    """Maps a faces source's keys onto a dataset's: the one rule every stage uses.

    A key resolves to the dataset key that is the same path; else to the one dataset
    key of the same split (first folder) with the same file name; else to the one with
    the same file name but another suffix (``.jpg`` on disk for ``.JPEG`` in the
    file, as the authors' own scripts convert). ILSVRC's released annotations name val
    images ``val/<file>`` while an ImageFolder tree keeps them in ``val/<wnid>/<file>``
    (or the other way round): this is what makes the two meet. A name that occurs in
    two folders of one split is ambiguous: ``__call__`` gives None and
    :meth:`candidates` names them.
    """

    def __init__(self, known: Collection[str]) -> None:
        self.known = known if isinstance(known, set | frozenset) else set(known)
        self._by_name: dict[tuple[str, str], list[str]] = {}
        self._by_stem: dict[tuple[str, str], list[str]] = {}
        for key in sorted(self.known):
            split = key_split(key)
            self._by_name.setdefault((split, _name(key)), []).append(key)
            self._by_stem.setdefault((split, _stem(key)), []).append(key)

    def candidates(self, key: str) -> list[str]:
        """Every dataset key ``key`` could mean (one: it resolves; several: ambiguous)."""
        if key in self.known:
            return [key]
        split = key_split(key)
        found = self._by_name.get((split, _name(key)))
        if found:
            return list(found)
        return list(self._by_stem.get((split, _stem(key)), []))

    def __call__(self, key: str) -> str | None:
        found = self.candidates(key)
        return found[0] if len(found) == 1 else None


def box_row(box: Box) -> dict[str, float]:
    """The coordinates as floats, refusing what JSON and the paper cannot hold."""
    coords = {name: float(getattr(box, name)) for name in COORDS}
    if not all(math.isfinite(v) for v in coords.values()):
        raise FacesFileError(f"cannot write a box with a non-finite coordinate: {box}")
    return coords


@contextmanager
def atomic_text(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A UTF-8 text file (``\n`` line ends) written atomically, see
    :func:`veil.files.atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        yield f


def load_json(path: Path) -> Any:
    """The parsed JSON document, or a FacesFileError that says where it breaks."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise FacesFileError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise FacesFileError(f"{path}: not UTF-8 text at byte {exc.start}") from exc
    except OSError as exc:
        raise FacesFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
