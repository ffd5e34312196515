"""Atomic, durable files: the one way veil writes a file a reader or a resumed run may see.

Every write goes through a temp file beside its target, named by :func:`temp_path`
(``.<name>.veil-tmp-<random>``), and ``os.replace``: a reader sees the old file or the
new one, never half of one, and a killed process leaves at most a temp file, which
:func:`remove_stale_temps` recognises by that one name pattern and deletes on resume.

Durability (surviving a power cut, not only a kill) needs ``fsync`` of the file *and* of
its directory after the rename. Writes that stand alone do both (``durable=True``); a
stage writing many small files passes ``durable=False`` and calls :func:`sync_written`
with what one shard wrote before recording the shard as done: only those files and their
directories are flushed, not the whole machine's buffers (``os.sync``).

This module sits at the bottom of veil's layers: it imports nothing of veil's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

__all__ = [
    "CommitOnExit",
    "atomic_copy",
    "atomic_path",
    "atomic_write_bytes",
    "fsync_directory",
    "is_temp_name",
    "remove_stale_temps",
    "sync_written",
    "temp_path",
    "write_json",
]

TEMP_MARK = ".veil-tmp-"
_TEMP_NAME = re.compile(r"^\..*\.veil-tmp-[0-9a-f]{12}$", re.DOTALL)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_DIRECTORY_FSYNC = os.name == "posix"  # Windows cannot open a directory to fsync it
_SYNC_THREADS = 16  # fsyncs in flight at once in sync_written


# --------------------------------------------------------------------------- temp names


def temp_path(target: str | os.PathLike[str]) -> Path:
    """``.<name>.veil-tmp-<random>`` beside ``target``; long names are cut to fit."""
    return Path(_temp_name(os.fspath(target)))


def _temp_name(target: str) -> str:
    """:func:`temp_path` on a plain string path (no pathlib objects on the per-file
    path of a stage)."""
    head, name = os.path.split(target)
    stem = name.encode("utf-8", "surrogateescape")[:120].decode("utf-8", "ignore")
    return os.path.join(head, f".{stem}{TEMP_MARK}{secrets.token_hex(6)}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one :func:`temp_path` makes."""
    return _TEMP_NAME.match(name) is not None


def remove_stale_temps(root: str | os.PathLike[str]) -> int:
    """Delete temp files a killed run left under ``root``; returns how many.

    Call it before a run resumes, never while another run writes under ``root``.
    """
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if is_temp_name(name):
                _discard(os.path.join(dirpath, name))
                removed += 1
    return removed


def _discard(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --------------------------------------------------------------------------- fsync


def _fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_all(paths: Iterable[str]) -> None:
    for path in paths:
        _fsync_path(path)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX; a no-op elsewhere)."""
    if _DIRECTORY_FSYNC:
        _fsync_path(path or ".")


def sync_written(paths: Iterable[str | os.PathLike[str]],
                 root: str | os.PathLike[str] | None = None) -> None:
    """fsync each written file, then each directory holding one, and (with ``root``)
    every directory between those and ``root``, so folders made for them last too.

    What a stage calls once per shard, after ``durable=False`` writes, before it records
    the shard as done: a power cut then cannot leave a 'done' shard with files missing.
    """
    written = [os.path.abspath(path) for path in paths]
    directories: set[str] = set()
    top = os.path.abspath(root) if root is not None else None
    for path in written:
        folder = os.path.dirname(path)
        while folder not in directories:
            directories.add(folder)
            if top is None or folder == top or not folder.startswith(top + os.sep):
                break
            folder = os.path.dirname(folder)
    # fsync waits for the disk and releases the GIL: issued together, the file system
    # commits them in a few batches instead of one round trip per file. Each thread takes
    # a share of the files (one task per thread, not one per file: at ~0.1 ms of Python
    # per task that was a fifth of copying a faceless image).
    shares = [written[i::_SYNC_THREADS] for i in range(min(_SYNC_THREADS, len(written)))]
    if len(shares) == 1:
        _fsync_all(shares[0])
    elif shares:
        with ThreadPoolExecutor(max_workers=len(shares)) as pool:
            list(pool.map(_fsync_all, shares))
    for folder in sorted(directories, key=len, reverse=True):  # children before parents
        fsync_directory(folder)


# --------------------------------------------------------------------------- writing


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *,
                       durable: bool = True) -> None:
    """Write ``data`` to ``path`` all at once: temp file, fsync, ``os.replace``.

    Parent directories are created. On any failure (or a kill) the temp file is removed
    (or left for :func:`remove_stale_temps`) and ``path`` is left as it was: absent or the
    old content. Atomicity against a killed process needs no fsync; ``durable`` adds one of
    the file and one of its directory, so the new bytes also survive a power cut. That
    costs milliseconds per file on a real disk: a stage writing many small files passes
    ``durable=False`` and calls :func:`sync_written` once per shard.
    """
    target = os.fspath(path)
    tmp = _temp_name(target)
    try:
        fd = os.open(tmp, _WRITE_FLAGS, 0o666)  # the umask decides, as for any new file
    except FileNotFoundError:  # the first file of its folder: make the folder, once
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        fd = os.open(tmp, _WRITE_FLAGS, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        _discard(tmp)
        raise
    if durable:
        fsync_directory(os.path.dirname(target))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                link: bool = False, durable: bool = True) -> None:
    """Put a byte-for-byte copy of ``src`` at ``dst`` atomically.

    With ``link=True`` a hard link is made instead where the file system allows one
    (same device, links supported); otherwise it falls back to copying. ``durable``
    as for :func:`atomic_write_bytes`.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    try:
        linked = False
        if link:
            try:
                os.link(src, tmp)
                linked = True
            except FileNotFoundError:
                raise
            except OSError:
                _discard(tmp)  # cross-device, no hard links here, too many links: copy
        if not linked:
            shutil.copyfile(src, tmp)
            if durable:
                _fsync_path(tmp)
        os.replace(tmp, dst)
    except BaseException:
        _discard(tmp)
        raise
    if durable:
        fsync_directory(dst.parent)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (Parquet,
    ``torch.save``, ``open``), renamed into place if the block succeeds.

    The temp file exists (empty) when the block starts. Readers never see a half-written
    file, and a failed block leaves the old one. ``durable`` as for
    :func:`atomic_write_bytes`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    os.close(os.open(tmp, _WRITE_FLAGS, 0o666))  # reserve the name; the umask decides
    try:
        yield tmp
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        _discard(tmp)
        raise
    if durable:
        fsync_directory(target.parent)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """``data`` as indented UTF-8 JSON with a final newline, written atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


class CommitOnExit:
    """A writer used as ``with``: its :meth:`commit` runs when the block ends cleanly,
    its :meth:`abort` (remove what was half written) when it raises. Shard writers of
    every layout (WebDataset tars, Parquet and Arrow shards) share this rule."""

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()
