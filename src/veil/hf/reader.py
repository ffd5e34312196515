"""Read one image of a Hugging Face dataset by key, in any process, without loading its
shard whole (see :mod:`veil.hf.storage`)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from veil.hf.layout import Shard
from veil.hf.storage import (
    GROUP_BUFFER,
    READ_BATCH,
    ipc_batches,
    is_arrow,
    iter_batches,
    open_ipc,
    require_pyarrow,
)


def image_bytes(value: Any, shard_path: Path) -> bytes:
    """The bytes of one image cell (``{"bytes", "path"}`` or bytes); a cell with no bytes
    is read from its ``path`` (absolute, or relative to the shard's folder), as
    ``datasets`` decodes it. FileNotFoundError when there is no image."""
    if value is None:
        raise FileNotFoundError("no image in this row (the image is null)")
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (
        value, None)
    if data:
        return bytes(data)
    if path:
        file = Path(path) if os.path.isabs(path) else shard_path.parent / path
        try:
            return file.read_bytes()
        except OSError as exc:
            raise FileNotFoundError(
                f"the row's image has no bytes and its path {path} cannot be read: "
                f"{exc.strerror or exc}") from exc
    raise FileNotFoundError("the row's image has neither bytes nor a path")


class _Cursor:
    """The image column of one open shard. Parquet: the current row group's column, held
    whole when it is at most :data:`GROUP_BUFFER` (as pyarrow reads it anyway), else read
    forward :data:`READ_BATCH` rows at a time (reading backwards restarts it); Arrow: the
    record batches of the memory map."""

    def __init__(self, path: Path, column: str) -> None:
        self.path = path
        self.column = column
        self._batch: Any = None
        self._start = 0  # the row of the current batch's first value
        self._batches: Iterator[Any] | None = None
        self._group = -1
        self._arrow: list[Any] | None = None
        if is_arrow(path):
            self._map = require_pyarrow().memory_map(str(path))
            self._arrow = [b.column(column) for b in ipc_batches(open_ipc(self._map))]
            self.starts = _starts([len(b) for b in self._arrow])
        else:
            import pyarrow.parquet as pq

            self._file = pq.ParquetFile(path)
            meta = self._file.metadata
            self.starts = _starts([meta.row_group(g).num_rows
                                   for g in range(meta.num_row_groups)])
            self._whole = [meta.row_group(g).total_byte_size <= GROUP_BUFFER
                           for g in range(meta.num_row_groups)]

    def value(self, row: int) -> Any:
        if not 0 <= row < self.starts[-1]:
            raise FileNotFoundError(f"{self.path} has no row {row}")
        group = bisect.bisect_right(self.starts, row) - 1
        if self._arrow is not None:
            return self._arrow[group][row - self.starts[group]].as_py()
        if self._whole[group]:
            if group != self._group:
                self._group, self._start = group, self.starts[group]
                self._batch = self._file.read_row_group(group, columns=[self.column],
                                                        use_threads=False).column(0)
            return self._batch[row - self._start].as_py()
        if group != self._group or row < self._start:
            self._group, self._start, self._batch = group, self.starts[group], None
            self._batches = self._file.iter_batches(
                batch_size=READ_BATCH, row_groups=[group], columns=[self.column],
                use_threads=False)
        while self._batch is None or row >= self._start + len(self._batch):
            if self._batch is not None:
                self._start += len(self._batch)
            assert self._batches is not None
            self._batch = next(self._batches).column(0)
        return self._batch[row - self._start].as_py()

    def close(self) -> None:
        if self._arrow is not None:
            self._arrow = None
            self._map.close()
        else:
            self._file.close()


def _starts(counts: list[int]) -> list[int]:
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    return starts


class HFReader:
    """Read an image's bytes by key (the :class:`veil.datasets.ImageReader` of a Hugging
    Face dataset).

    Pickles as the shard list and column names: each process opens one shard at a time
    as it needs it and, for id keys, indexes a split's ids the first time it reads from
    that split.
    """

    def __init__(self, root: str | os.PathLike[str], shards: tuple[Shard, ...], image: str,
                 id_column: str | None = None) -> None:
        self.root = Path(root)
        self.shards = shards
        self.image = image
        self.id_column = id_column
        self._reset()

    def _reset(self) -> None:
        self._by_name = {(s.split, s.name): s for s in self.shards}
        self._ids: dict[str, dict[str, tuple[Shard, int]]] = {}
        self._cursor: _Cursor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "shards": self.shards, "image": self.image,
                "id_column": self.id_column}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def shard_path(self, shard: Shard) -> Path:
        return self.root / shard.relative

    def locate(self, key: str) -> tuple[Shard, int]:
        """The shard and row of ``key``; FileNotFoundError when there is none."""
        split, _, rest = key.partition("/")
        if self.id_column is not None:
            if split not in self._ids:
                self._ids[split] = self._index(split)
            found = self._ids[split].get(key)
            if found is None:
                raise FileNotFoundError(f"no row with {self.id_column} {rest!r} in split "
                                        f"{split!r}")
            return found
        name, _, row = rest.rpartition("/")
        shard = self._by_name.get((split, name))
        if shard is None or not row.isdigit():
            raise FileNotFoundError(f"{key!r} is not a row of a shard of {self.root}")
        return shard, int(row)

    def _index(self, split: str) -> dict[str, tuple[Shard, int]]:
        index: dict[str, tuple[Shard, int]] = {}
        column = self.id_column or ""
        for shard in self.shards:
            if shard.split == split:
                row = 0
                for batch in iter_batches(self.shard_path(shard), [column]):
                    for value in batch.column(0).to_pylist():
                        index[f"{split}/{value}"] = (shard, row)
                        row += 1
        return index

    def read(self, key: str) -> bytes:
        """The image's bytes; OSError (FileNotFoundError for a missing row or image)."""
        pa = require_pyarrow()
        try:
            shard, row = self.locate(key)
            path = self.shard_path(shard)
            if self._cursor is None or self._cursor.path != path:
                if self._cursor is not None:
                    self._cursor.close()
                    self._cursor = None
                self._cursor = _Cursor(path, self.image)
            return image_bytes(self._cursor.value(row), path)
        except pa.ArrowException as exc:
            raise OSError(f"cannot read {key}: {exc}") from exc
