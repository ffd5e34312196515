"""A Hugging Face dataset on disk: its shard files, splits, columns and the key of each row.

Two forms of one thing (a table per split whose image column is the ``Image`` feature, a
struct of ``bytes`` and ``path``, the features recorded as JSON in the schema metadata
under ``b"huggingface"``):

- **hub**: ``.parquet`` files anywhere under the folder (hidden folders skipped), named as
  ``push_to_hub`` names them, ``data/<split>-NNNNN-of-NNNNN.parquet``. A file's split is
  the ``<split>`` of that name, else the first of ``datasets``' keywords in its folders or
  file name (``train``/``training``; ``validation``/``valid``/``val``/``dev``;
  ``test``/``testing``/``eval``/``evaluation``), else ``train``, as ``datasets`` decides.
- **disk**: what ``Dataset.save_to_disk`` writes (``state.json``, ``dataset_info.json``,
  ``data-NNNNN-of-NNNNN.arrow``), or ``DatasetDict.save_to_disk`` (``dataset_dict.json``
  and one such folder per split).

Keys. Row ``r`` of shard file ``F`` in split ``S`` is ``S/F/r``: the file's name (not its
folders) and the row zero-padded to six digits or more, so keys sort in row order
(``train/train-00000-of-00004.parquet/000042``). With an id column the key is
``S/<id>`` instead, which survives re-sharding. Either way the split is the key's first
folder, as in every other veil layout.

Columns. The image column is the one feature of type ``Image`` (the one named ``image``
among several; without recorded features, the one ``struct<bytes: binary, ...>``
column), unless named. Labels come from the ``ClassLabel`` column (the one named
``label`` among several; its name for each value, ``-1`` is no label) or from any column
named as the label column. Every shard of a split must have the same schema, as
``datasets`` requires of a split. Listing the rows reads footers and the label and id
columns, never the images.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from veil.errors import DatasetError
from veil.hf.storage import ARROW, PARQUET, iter_batches, require_pyarrow, shard_schema

if TYPE_CHECKING:
    import pyarrow as pa

META_KEY = b"huggingface"
DICT_FILE, STATE_FILE, INFO_FILE = "dataset_dict.json", "state.json", "dataset_info.json"
ROW_DIGITS = 6
_HUB_NAME = re.compile(r"^(\w+?)-\d{5}-of-\d{5}(?:[-.].*)?\.(?:parquet|arrow)$")
_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


@dataclass(frozen=True)
class Shard:
    """One data file: its split, its path relative to the dataset root, its row count."""

    split: str
    relative: str
    rows: int

    @property
    def name(self) -> str:
        return PurePosixPath(self.relative).name

    def key(self, row: int) -> str:
        width = max(ROW_DIGITS, len(str(max(self.rows - 1, 0))))
        return f"{self.split}/{self.name}/{row:0{width}d}"


@dataclass(frozen=True)
class Columns:
    """Which columns hold the image, the label and the id (``None``: there is none)."""

    image: str
    label: str | None = None
    id: str | None = None
    label_names: tuple[str, ...] | None = None  # a ClassLabel's names, by value


@dataclass(frozen=True)
class Row:
    key: str
    shard: Shard
    row: int
    label: str | None


@dataclass
class Layout:
    """A Hugging Face dataset as found on disk."""

    root: Path
    form: str  # "hub" or "disk"
    shards: list[Shard]
    columns: Columns
    features: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- finding


def is_shard_name(name: str) -> bool:
    return name.lower().endswith((PARQUET, ARROW)) and not name.startswith(".")


def looks_like(path: Path, has_images: Callable[[Path], bool]) -> bool:
    """Whether ``path`` is a Hugging Face dataset: a ``.parquet``/``.arrow`` file, a
    ``save_to_disk`` folder, or a folder holding no images (``has_images`` says; it may
    stop at the first it sees) and some ``.parquet`` files."""
    if path.is_file():
        return is_shard_name(path.name)
    if not path.is_dir():
        return False
    if (path / DICT_FILE).is_file() or (path / STATE_FILE).is_file():
        return True
    return not has_images(path) and any(_walk(path, PARQUET))


def _walk(folder: Path, suffix: str) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(suffix) and not name.startswith("."):
                yield Path(dirpath) / name


def split_of(relative: str) -> str:
    """The split ``datasets`` gives a Hub data file (see the module's docstring)."""
    parts = PurePosixPath(relative).parts
    match = _HUB_NAME.match(parts[-1])
    if match:
        return match[1]
    for part in parts:
        for split, words in _KEYWORDS.items():
            if any(re.match(rf"^{w}(?:$|[-._ 0-9])", part.lower()) for w in words):
                return split
    return "train"


def find_shards(source: Path) -> tuple[Path, str, list[tuple[str, str]]]:
    """(root, form, [(split, relative path)]) of the data files ``source`` names."""
    if source.is_file():
        if not is_shard_name(source.name):
            raise DatasetError(f"{source} is not a .parquet or .arrow file")
        return source.parent, "hub", [(split_of(source.name), source.name)]
    if (source / DICT_FILE).is_file():
        splits = read_json(source / DICT_FILE).get("splits")
        if not isinstance(splits, list) or not splits:
            raise DatasetError(f"{source / DICT_FILE} lists no splits")
        found = []
        for split in map(str, splits):
            found += [(split, f"{split}/{name}") for name in _disk_files(source / split)]
        return source, "disk", found
    if (source / STATE_FILE).is_file():
        split = read_json(source / STATE_FILE).get("_split") or "train"
        return source, "disk", [(str(split), name) for name in _disk_files(source)]
    relatives = [p.relative_to(source).as_posix() for p in _walk(source, PARQUET)]
    if not relatives:
        raise DatasetError(f"no .parquet files found in {source}")
    return source, "hub", [(split_of(r), r) for r in relatives]


def _disk_files(folder: Path) -> list[str]:
    """The Arrow files ``save_to_disk`` listed in ``state.json``, in its order."""
    state = read_json(folder / STATE_FILE)
    files = [f.get("filename") for f in state.get("_data_files") or [] if isinstance(f, dict)]
    names = [f for f in files if isinstance(f, str)]
    if not names or len(names) != len(files):
        raise DatasetError(f"{folder / STATE_FILE} lists no data files")
    missing = [f for f in names if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"{folder}: data file(s) listed in {STATE_FILE} are missing: "
                           f"{', '.join(missing[:3])}")
    return names


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a JSON object")
    return data


# --------------------------------------------------------------------------- columns


def features_of(schema: pa.Schema) -> dict[str, Any]:
    """The ``datasets`` features recorded in a schema's metadata ({} when there are none)."""
    raw = (schema.metadata or {}).get(META_KEY)
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    features = (meta.get("info") or {}).get("features") if isinstance(meta, dict) else None
    return features if isinstance(features, dict) else {}


def _type_name(feature: Any) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None


def _is_binary(pa_type: pa.DataType) -> bool:
    pa = require_pyarrow()
    return bool(pa.types.is_binary(pa_type) or pa.types.is_large_binary(pa_type))


def _is_image_struct(pa_type: pa.DataType) -> bool:
    if not require_pyarrow().types.is_struct(pa_type):
        return False
    index = pa_type.get_field_index("bytes")
    return index >= 0 and _is_binary(pa_type.field(index).type)


def choose_columns(schema: pa.Schema, where: str, *, image_column: str | None = None,
                   label_column: str | None = None, id_column: str | None = None) -> Columns:
    """The image, label and id columns of a shard's schema (see the module's docstring)."""
    features = features_of(schema)
    names = schema.names
    for flag, name in (("--image-column", image_column), ("--label-column", label_column),
                       ("--id-column", id_column)):
        if name is not None and name not in names:
            raise DatasetError(f"{where} has no column {name!r} ({flag}); its columns: "
                               f"{', '.join(names)}")
    if image_column is None:
        image_column = _find_image_column(schema, features, where)
    else:
        kind = schema.field(image_column).type
        if not (_is_image_struct(kind) or _is_binary(kind)):
            raise DatasetError(f"{where}: column {image_column!r} holds {kind}, not images "
                               "(an Image feature: struct<bytes: binary, path: string>, or "
                               "binary)")
    if label_column is None:
        labels = [n for n in names if _type_name(features.get(n)) == "ClassLabel"]
        label_column = labels[0] if len(labels) == 1 else "label" if "label" in labels else None
    label_names = None
    feature = features.get(label_column) if label_column is not None else None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(
            feature.get("names"), list):
        label_names = tuple(str(n) for n in feature["names"])
    return Columns(image_column, label_column, id_column, label_names)


def _find_image_column(schema: pa.Schema, features: dict[str, Any], where: str) -> str:
    found = [n for n in schema.names if _type_name(features.get(n)) == "Image"]
    if not found and not features:  # no features recorded: go by the Image struct
        found = [f.name for f in schema if _is_image_struct(f.type)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            f"{where} has no image column (no feature of type Image, no struct<bytes, "
            f"path> column); its columns: {', '.join(schema.names)}. Name the column that "
            "holds the image bytes with --image-column")
    if "image" in found:
        return "image"
    raise DatasetError(f"{where} has several image columns ({', '.join(found)}); choose one "
                       "with --image-column")


# --------------------------------------------------------------------------- rows


def open_layout(source: Path, *, image_column: str | None = None,
                label_column: str | None = None, id_column: str | None = None
                ) -> tuple[Layout, list[Row]]:
    """Find a Hugging Face dataset's shards and columns, and list its rows."""
    require_pyarrow()
    root, form, found = find_shards(source)
    shards: list[Shard] = []
    first: dict[str, tuple[str, pa.Schema]] = {}  # split -> its first shard and schema
    per_split: dict[str, Columns] = {}
    names: dict[tuple[str, str], str] = {}
    rows: list[Row] = []
    for split, relative in sorted(found):
        path = root / relative
        schema, count = shard_schema(path)
        shard = Shard(split, relative, count)
        other = names.setdefault((split, shard.name), relative)
        if other != relative:
            raise DatasetError(
                f"{root}: split {split!r} has two files named {shard.name} ({other} and "
                f"{relative}); point veil at one configuration's folder")
        if split not in first:
            first[split] = (relative, schema)
            per_split[split] = choose_columns(schema, str(path), image_column=image_column,
                                              label_column=label_column, id_column=id_column)
        elif not schema.equals(first[split][1], check_metadata=False):
            raise DatasetError(
                f"{root}: the shards of split {split!r} have different schemas: "
                f"{first[split][0]} has ({_describe(first[split][1])}), {relative} has "
                f"({_describe(schema)}); a split's shards must share one schema")
        shards.append(shard)
        rows += _shard_rows(path, shard, per_split[split])
    images = {c.image for c in per_split.values()}
    if len(images) > 1:
        raise DatasetError(f"{root}: the splits keep their images in different columns "
                           f"({', '.join(sorted(images))}); name one with --image-column")
    columns = next(iter(per_split.values()))
    seen: set[str] = set()
    for row in rows:
        if row.key in seen:
            raise DatasetError(f"{root}: the id {row.key.split('/', 1)[1]!r} occurs twice in "
                               f"split {row.shard.split!r} (--id-column {columns.id})")
        seen.add(row.key)
    features = features_of(first[shards[0].split][1])
    return Layout(root, form, shards, columns, features), rows


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _shard_rows(path: Path, shard: Shard, columns: Columns) -> list[Row]:
    wanted = [c for c in (columns.label, columns.id) if c]
    values: dict[str, list[Any]] = {c: [] for c in wanted}
    for batch in iter_batches(path, wanted) if wanted else ():
        for c in wanted:
            values[c] += batch.column(c).to_pylist()
    labels = values.get(columns.label or "") or [None] * shard.rows
    ids = values.get(columns.id or "") or []
    rows = []
    for r in range(shard.rows):
        if columns.id:
            if ids[r] is None or ids[r] == "":
                raise DatasetError(f"{path}: row {r} has no {columns.id!r} (--id-column)")
            key = f"{shard.split}/{ids[r]}"
        else:
            key = shard.key(r)
        rows.append(Row(key, shard, r, _label(labels[r], columns)))
    return rows


def _label(value: Any, columns: Columns) -> str | None:
    if value is None:
        return None
    if columns.label_names is not None and isinstance(value, int):
        if 0 <= value < len(columns.label_names):
            return columns.label_names[value]
        return None  # ClassLabel's -1: no label
    return str(value)
