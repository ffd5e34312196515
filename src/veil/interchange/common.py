"""What every faces-file format shares: the parsed result, key rules, safe writing."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from veil.boxes import Box, usable_boxes
from veil.errors import FacesFileError
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
    """The released file's val key: ``val/<wnid>/<file>`` -> ``val/<file>``."""
    if key.startswith("val/") and key.count("/") >= 2:
        return "val/" + key.rsplit("/", 1)[1]
    return key


class KeyResolver:
    """Maps a file's keys onto a dataset's: exact match first, then val by file name.

    ILSVRC's released annotations name val images ``val/<file>`` while a dataset on
    disk may keep them in class folders (or the other way round); a val file name
    that occurs in two folders is ambiguous and does not resolve.
    """

    def __init__(self, known: Collection[str]) -> None:
        self.known = known if isinstance(known, set | frozenset) else set(known)
        self._val: dict[str, str | None] = {}
        for key in self.known:
            if key.startswith("val/"):
                name = key.rsplit("/", 1)[1]
                self._val[name] = key if self._val.get(name, key) == key else None

    def __call__(self, key: str) -> str | None:
        if key in self.known:
            return key
        if key.startswith("val/"):
            return self._val.get(key.rsplit("/", 1)[1])
        return None


def box_row(box: Box) -> dict[str, float]:
    """The coordinates as floats, refusing what JSON and the paper cannot hold."""
    coords = {name: float(getattr(box, name)) for name in COORDS}
    if not all(math.isfinite(v) for v in coords.values()):
        raise FacesFileError(f"cannot write a box with a non-finite coordinate: {box}")
    return coords


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed into place if the block succeeds.

    Readers never see a half-written faces file, and a failed export leaves the old one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_text(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A UTF-8 text file (``\n`` line ends) written atomically, see :func:`atomic_path`."""
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
