"""Write a Hugging Face dataset back: each shard with its source's schema (features
metadata included), columns, row order and storage settings, only image cells changed,
atomically; and the files besides the shards that make the output the same kind of
dataset (``save_to_disk``'s JSON files, a Hub folder's card)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from veil.files import CommitOnExit, atomic_copy, fsync_directory, temp_path, write_json
from veil.hf.layout import DICT_FILE, INFO_FILE, META_KEY, STATE_FILE, Layout, Shard, read_json
from veil.hf.storage import is_arrow, require_pyarrow, shard_schema

if TYPE_CHECKING:
    import pyarrow as pa

CARD_FILES = ("README.md", "dataset_infos.json")
"""Files of a Hub folder that describe the whole dataset; copied when a run writes it all."""
_CODECS = {"UNCOMPRESSED": "none"}


def replace_images(batch: pa.RecordBatch, column: str, images: dict[int, bytes | None]
                   ) -> pa.RecordBatch:
    """``batch`` with the image cells of the rows in ``images`` replaced: new bytes (the
    struct's other fields, such as ``path``, kept), or a null image for None."""
    if not images:
        return batch
    pa = require_pyarrow()
    index = batch.schema.get_field_index(column)
    old = batch.column(index)
    if pa.types.is_struct(old.type):
        nulls = [not valid for valid in old.is_valid().to_pylist()]
        for row, data in images.items():
            nulls[row] = data is None
        children = [old.field(i) for i in range(old.type.num_fields)]
        at = old.type.get_field_index("bytes")
        children[at] = _with_values(children[at], images)
        new = pa.StructArray.from_arrays(children, fields=list(old.type),
                                         mask=pa.array(nulls, pa.bool_()))
    else:
        new = _with_values(old, images)
    return batch.set_column(index, batch.schema.field(index), new)


def _with_values(array: pa.Array, images: dict[int, bytes | None]) -> pa.Array:
    """``array`` with the values at ``images``' rows replaced (the rest not copied through
    Python)."""
    pa = require_pyarrow()
    import pyarrow.compute as pc

    rows = sorted(images)
    mask = [False] * len(array)
    for row in rows:
        mask[row] = True
    return pc.replace_with_mask(array, pa.array(mask, pa.bool_()),
                                pa.array([images[r] for r in rows], type=array.type))


def _parquet_options(path: Path) -> tuple[dict[str, Any], dict[bytes, bytes]]:
    """The source's Parquet settings worth keeping (per-column compression and dictionary
    use, the page index, ``datasets``' content-defined chunking, which lets the Hub store
    only the pages that changed) and its file metadata other than the schema's."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    options: dict[str, Any] = {}
    if meta.num_row_groups:
        group = meta.row_group(0)
        chunks = [group.column(j) for j in range(group.num_columns)]
        options["compression"] = {c.path_in_schema: _CODECS.get(c.compression, c.compression)
                                  for c in chunks}
        options["use_dictionary"] = [c.path_in_schema for c in chunks
                                     if any("DICTIONARY" in e for e in c.encodings)]
        options["write_page_index"] = any(getattr(c, "has_offset_index", False)
                                          for c in chunks)
    extra = {k: v for k, v in (meta.metadata or {}).items()
             if k not in (b"ARROW:schema", META_KEY)}
    chunking = extra.get(b"content_defined_chunking")
    if chunking:
        with contextlib.suppress(ValueError):
            options["use_content_defined_chunking"] = json.loads(chunking)
    return options, extra


class ShardWriter(CommitOnExit):
    """Write one shard (Parquet or Arrow stream, as ``source``) with ``source``'s schema
    and settings, atomically: a temp file beside ``target`` (the name
    :func:`veil.files.remove_stale_temps` cleans), fsynced and renamed on ``commit``."""

    def __init__(self, source: Path, target: Path) -> None:
        pa = require_pyarrow()
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self._temp = temp_path(target)
        schema, _ = shard_schema(source)
        self._arrow = is_arrow(source)
        self._extra: dict[bytes, bytes] = {}
        self._sink: Any = None
        if self._arrow:
            self._sink = pa.OSFile(str(self._temp), "wb")
            self._writer: Any = pa.ipc.new_stream(self._sink, schema)
            return
        import pyarrow.parquet as pq

        options, self._extra = _parquet_options(source)
        try:
            self._writer = pq.ParquetWriter(self._temp, schema, **options)
        except TypeError:  # a pyarrow without content-defined chunking
            options.pop("use_content_defined_chunking", None)
            self._writer = pq.ParquetWriter(self._temp, schema, **options)

    def write(self, batches: list[pa.RecordBatch]) -> None:
        """One storage unit: a Parquet row group, or Arrow record batches."""
        if self._arrow:
            for batch in batches:
                self._writer.write_batch(batch)
        elif batches:
            table = require_pyarrow().Table.from_batches(batches)
            self._writer.write_table(table, row_group_size=max(1, table.num_rows))

    def commit(self) -> None:
        if self._extra:
            self._writer.add_key_value_metadata(
                {k.decode(): v.decode() for k, v in self._extra.items()})
        self._writer.close()
        if self._sink is not None:
            self._sink.close()
        with open(self._temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._temp, self.target)
        fsync_directory(self.target.parent)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the temp file goes either way
            self._writer.close()
            if self._sink is not None:
                self._sink.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


def write_sidecars(layout: Layout, out: Path, written: Sequence[Shard], fingerprint: str
                   ) -> None:
    """The files besides the shards: for a ``save_to_disk`` folder its JSON files (the
    splits and data files of ``written``, a new ``_fingerprint``, since the data differ),
    for a Hub folder its card files when ``written`` is every shard."""
    root = layout.root
    if layout.form == "hub":
        if {s.relative for s in written} == {s.relative for s in layout.shards}:
            for name in CARD_FILES:
                if (root / name).is_file():
                    atomic_copy(root / name, out / name)
        return
    splits = list(dict.fromkeys(s.split for s in written))
    nested = (root / DICT_FILE).is_file()
    if nested:
        write_json(out / DICT_FILE, {**read_json(root / DICT_FILE), "splits": splits})
    for split in splits:
        folder = split if nested else "."
        state = read_json(root / folder / STATE_FILE)
        state["_data_files"] = [{"filename": PurePosixPath(s.relative).name}
                                for s in written if s.split == split]
        state["_fingerprint"] = fingerprint
        write_json(out / folder / STATE_FILE, state)
        if (root / folder / INFO_FILE).is_file():
            atomic_copy(root / folder / INFO_FILE, out / folder / INFO_FILE)
