"""How a Hugging Face shard is stored, read in bounded memory: Parquet (row groups) or an
Arrow IPC stream (what ``save_to_disk`` writes).

A Parquet shard is read row group by row group, in batches of :data:`READ_BATCH` rows:
pyarrow holds at most one row group's column chunks, and ``datasets`` writes row groups of
at most 100 MB, so a 1 GB shard is never in memory whole. An Arrow shard is memory-mapped
and its record batches point into the map. pyarrow is imported on first use, never when
veil is imported (``veil --help`` stays fast).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.errors import DatasetError

if TYPE_CHECKING:
    import pyarrow as pa

PARQUET, ARROW = ".parquet", ".arrow"
READ_BATCH = 64
"""Rows per batch read from a Parquet row group (each batch holds their image bytes)."""
GROUP_BUFFER = 128 << 20
"""A row group up to this size (uncompressed) is one unit of :func:`iter_groups` (and is
rewritten as one row group); a larger one is streamed batch by batch."""


def require_pyarrow() -> Any:
    """pyarrow, or a DatasetError that says how to get it."""
    try:
        import pyarrow
    except ImportError as exc:  # pragma: no cover - pyarrow is a core dependency
        raise DatasetError("Hugging Face datasets need pyarrow, a dependency of veil: "
                           "pip install 'pyarrow>=15'") from exc
    return pyarrow


def is_arrow(path: Path | str) -> bool:
    """An Arrow IPC shard (``save_to_disk``), not a Parquet one."""
    return str(path).lower().endswith(ARROW)


def shard_schema(path: Path) -> tuple[pa.Schema, int]:
    """(schema, rows) of a shard, from its footer (Parquet) or batch headers (Arrow)."""
    pa = require_pyarrow()
    try:
        if is_arrow(path):
            with pa.memory_map(str(path)) as source:
                reader = open_ipc(source)
                return reader.schema, sum(b.num_rows for b in ipc_batches(reader))
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as file:
            return file.schema_arrow, file.metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path} is not a readable {path.suffix} file: {exc}") from exc


def open_ipc(source: Any) -> Any:
    """A reader of an Arrow IPC file: the stream format ``datasets`` writes, or the file
    format."""
    pa = require_pyarrow()
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source)


def ipc_batches(reader: Any) -> Iterator[pa.RecordBatch]:
    if hasattr(reader, "num_record_batches"):  # the file format
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def iter_batches(path: Path, columns: Sequence[str] | None = None
                 ) -> Iterator[pa.RecordBatch]:
    """The shard's rows in order, as record batches."""
    for group in iter_groups(path, columns):
        yield from group


def iter_groups(path: Path, columns: Sequence[str] | None = None
                ) -> Iterator[list[pa.RecordBatch]]:
    """The shard's rows in storage units: a Parquet row group up to :data:`GROUP_BUFFER`
    as one list of batches (a larger one batch by batch), an Arrow record batch alone."""
    pa = require_pyarrow()
    if is_arrow(path):
        with pa.memory_map(str(path)) as source:
            for batch in ipc_batches(open_ipc(source)):
                yield [batch.select(list(columns)) if columns is not None else batch]
        return
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as file:
        meta = file.metadata
        for g in range(meta.num_row_groups):
            batches = file.iter_batches(batch_size=READ_BATCH, row_groups=[g],
                                        columns=columns, use_threads=False)
            if meta.row_group(g).total_byte_size <= GROUP_BUFFER:
                yield list(batches)
            else:
                for batch in batches:
                    yield [batch]
