"""Hugging Face datasets stored locally, read and written by veil without the ``datasets``
library: Parquet shards as the Hub serves them (``data/<split>-NNNNN-of-NNNNN.parquet``)
and folders written by ``save_to_disk``.

- :mod:`veil.hf.layout`: finding the shards, splits and columns; the key of each row.
- :mod:`veil.hf.storage`: reading a Parquet or Arrow shard in bounded memory.
- :mod:`veil.hf.reader`: one image's bytes by key (:class:`HFReader`), in any process.
- :mod:`veil.hf.writer`: a shard written back, only image cells changed, atomically.

pyarrow is imported on first use, never when veil is imported.
"""

from veil.hf.layout import Columns, Layout, Row, Shard, looks_like, open_layout
from veil.hf.reader import HFReader, image_bytes
from veil.hf.storage import iter_batches, iter_groups
from veil.hf.writer import ShardWriter, replace_images, write_sidecars

__all__ = ["Columns", "HFReader", "Layout", "Row", "Shard", "ShardWriter", "image_bytes",
           "iter_batches", "iter_groups", "looks_like", "open_layout", "replace_images",
           "write_sidecars"]
