"""WebDataset tar shards: the layout web-scale image sets ship in, read and written by veil.

A WebDataset shard is a plain (uncompressed) tar. Consecutive members that share a
*sample key* (the member name up to the first dot of its file name) form one sample:
``000123.jpg``, ``000123.cls``, ``000123.json`` are the fields ``jpg``, ``cls`` and
``json`` of sample ``000123``. This is the convention of the ``webdataset`` library,
followed exactly, so anything it reads veil reads and the other way round.

Key scheme. Every image member of every sample is one image of the dataset, keyed

    <shard path relative to the dataset root>/<member name>
    e.g. ``shards-000007.tar/000123.jpg``, ``train/part-3.tar/imgs/000123.jpg``

that is, the member's path as if the tar were a folder. The key is stable (it does
not depend on the order of shards or members, nor on where the data is mounted),
names exactly one member of one shard (``split_key``), and keeps the image's
extension, so it sorts, groups and converts like any other veil key. A member is an
image when its name ends with an image suffix (``.jpg``, ``.png``, ``.webp``, ...).
Labels come from the sample's ``cls`` member (its text), else from a ``label``,
``cls`` or ``class`` field of its ``json`` member.

Images are read by seeking to the member's data (``TarReader``): the index of a
shard's members is built once per process, on first use, so a reader pickles small
and any worker on any node can read any image without unpacking anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from veil import files
from veil.errors import DatasetError

TAR_SUFFIX = ".tar"
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
LABEL_FIELDS = ("label", "cls", "class")
# The webdataset library's split of a member name into sample key and extension.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def is_brace_pattern(text: str) -> bool:
    """``shards-{000000..000009}.tar`` or ``{train,val}.tar``: webdataset's shard lists."""
    return "{" in text and "}" in text and (".." in text or "," in text)


def is_shard_name(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIX)


def expand_shards(source: str | os.PathLike[str]) -> list[Path]:
    """The shard files ``source`` names: a brace pattern, one ``.tar`` file, or a folder
    (every ``.tar`` under it, hidden folders skipped), sorted."""
    text = os.fspath(source)
    if is_brace_pattern(text):
        try:
            from braceexpand import braceexpand
        except ImportError as exc:  # pragma: no cover - installed with webdataset
            raise DatasetError("brace patterns need braceexpand: pip install "
                               "'veil[scale]'") from exc
        paths = [Path(p).expanduser() for p in braceexpand(text)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(f"{text}: shard(s) not found: {', '.join(missing[:3])}{more}")
        return sorted(set(paths))
    path = Path(text).expanduser()
    if path.is_dir():
        return find_shards(path)
    if path.name.lower().endswith(COMPRESSED_SUFFIXES):
        raise DatasetError(f"{path}: compressed tar shards cannot be read image by image; "
                           "store WebDataset shards as plain .tar files")
    if not path.is_file():
        raise DatasetError(f"dataset not found: {path}")
    return [path]


def find_shards(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / n for n in filenames
                  if is_shard_name(n) and not n.startswith(".")]
    return sorted(found)


def shards_root(shards: Iterable[Path]) -> Path:
    """The folder the keys are relative to: the deepest folder holding every shard."""
    parents = [str(p.resolve().parent) for p in shards]
    if not parents:
        raise DatasetError("no .tar shards given")
    return Path(os.path.commonpath(parents))


def split_member(name: str) -> tuple[str, str] | None:
    """(sample key, extension) of a member name, or None when it has no extension."""
    match = _KEY_EXT.match(name)
    return (match[1], match[2]) if match else None


def member_key(shard: str, member: str) -> str:
    return f"{shard}/{member}"


def split_key(key: str) -> tuple[str, str]:
    """(shard path relative to the root, member name) of an image key."""
    cut = key.lower().find(TAR_SUFFIX + "/")
    if cut < 0:
        raise DatasetError(f"{key!r} is not a WebDataset key (<shard>.tar/<member>)")
    cut += len(TAR_SUFFIX)
    return key[:cut], key[cut + 1:]


def relative_shard(shard: Path, root: Path) -> str:
    try:
        parts = shard.resolve().relative_to(root.resolve()).parts
    except ValueError:
        raise DatasetError(f"shard {shard} is outside the dataset root {root}") from None
    return PurePosixPath(*parts).as_posix()


# --------------------------------------------------------------------------- reading


def open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise DatasetError(f"{path} is not a readable (uncompressed) tar: {exc}") from exc


def regular_members(archive: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """The file members in archive order; a truncated or corrupt tar is a DatasetError."""
    try:
        return [m for m in archive.getmembers() if m.isfile()]
    except (OSError, tarfile.TarError) as exc:
        raise DatasetError(f"{path}: corrupt tar shard: {exc}") from exc


Sample = tuple[str, list[tarfile.TarInfo]]


def group_samples(members: Iterable[tarfile.TarInfo]) -> Iterator[Sample]:
    """(sample key, members) for each run of consecutive members sharing a key; a
    member without an extension is a sample of its own (as webdataset skips it)."""
    current: str | None = None
    group: list[tarfile.TarInfo] = []
    for member in members:
        split = split_member(member.name)
        key = split[0] if split else member.name
        if group and (key != current or split is None):
            yield current or "", group
            group = []
        current = key
        group.append(member)
    if group:
        yield current or "", group


def field_of(member: tarfile.TarInfo) -> str:
    """The member's field name in its sample (lower case, as webdataset reads it)."""
    split = split_member(member.name)
    return split[1].lower() if split else ""


def sample_label(archive: tarfile.TarFile, members: list[tarfile.TarInfo]) -> str | None:
    """The label of a sample: its ``cls`` text, else a label field of its ``json``."""
    fields = {field_of(m): m for m in members}
    if "cls" in fields:
        text = _read(archive, fields["cls"]).decode("utf-8", "replace").strip()
        return text or None
    if "json" in fields:
        with contextlib.suppress(ValueError):
            data = json.loads(_read(archive, fields["json"]))
            if isinstance(data, dict):
                for name in LABEL_FIELDS:
                    value = data.get(name)
                    if isinstance(value, str | int) and not isinstance(value, bool):
                        return str(value)
    return None


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    return handle.read() if handle is not None else b""


@dataclass(frozen=True, slots=True)
class ShardImage:
    key: str
    label: str | None


def scan_shard(path: Path, root: Path, is_image: Callable[[str], bool]) -> list[ShardImage]:
    """Every image member of one shard, with its sample's label."""
    shard = relative_shard(path, root)
    images = []
    with open_tar(path) as archive:
        for _, members in group_samples(regular_members(archive, path)):
            pictures = [m for m in members if is_image(m.name)]
            if not pictures:
                continue
            label = sample_label(archive, members)
            images += [ShardImage(member_key(shard, m.name), label) for m in pictures]
    return images


class TarReader:
    """Read an image's bytes by key, seeking straight to its member's data.

    Pickles as its root alone: each process builds a shard's member index the first
    time it reads from that shard.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._index: dict[str, dict[str, tuple[int, int]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root = state["root"]
        self._index = {}

    def shard_path(self, shard: str) -> Path:
        return self.root / shard

    def _members(self, shard: str) -> dict[str, tuple[int, int]]:
        if shard not in self._index:
            path = self.shard_path(shard)
            with open_tar(path) as archive:
                self._index[shard] = {
                    m.name: (m.offset_data, m.size) for m in regular_members(archive, path)
                }
        return self._index[shard]

    def read(self, key: str) -> bytes:
        shard, member = split_key(key)
        try:
            offset, size = self._members(shard)[member]
        except KeyError:
            raise FileNotFoundError(f"no member {member!r} in {self.shard_path(shard)}") from None
        except DatasetError as exc:
            raise OSError(str(exc)) from exc
        with open(self.shard_path(shard), "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise OSError(f"{self.shard_path(shard)} ends inside member {member!r}")
        return data


# --------------------------------------------------------------------------- writing


class ShardWriter(files.CommitOnExit):
    """Write one tar shard atomically: members go to a temp file beside the target,
    which replaces the target only on ``commit`` (fsynced, and its directory after the
    rename)."""

    def __init__(self, target: Path, *, format: int = tarfile.DEFAULT_FORMAT) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self._temp = files.temp_path(target)  # the names remove_stale_temps cleans
        self._file: IO[bytes] = open(self._temp, "xb")  # noqa: SIM115 - closed in commit/abort
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=format)  # noqa: SIM115

    def add(self, info: tarfile.TarInfo, data: bytes | None = None) -> None:
        if data is None:
            self._tar.addfile(info)
            return
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def commit(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, self.target)
        files.fsync_directory(self.target.parent)  # the rename lasts a power cut too

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)
