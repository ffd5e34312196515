"""veil.files: atomic writes (old file or new, never half), one temp-name pattern that
resume cleans, and durability by fsync of what was written (files and directories)."""

from __future__ import annotations

import errno
import io
import json
import os
import re
from pathlib import Path

import pytest

import veil.files as files
from veil.files import (
    atomic_copy,
    atomic_path,
    atomic_write_bytes,
    remove_stale_temps,
    sync_written,
    write_json,
)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.jpg"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _listing(target.parent) == ["out.jpg"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   KeyboardInterrupt("interrupted mid-write")])
def test_atomic_write_failure_leaves_old_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_in: str,
        error: BaseException) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old content")
    seen: list[str] = []
    real_fdopen = os.fdopen

    class HalfWriter(io.FileIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            super().write(bytes(data)[: len(data) // 2])  # a partial temp file exists
            raise error

    def fdopen(fd: int, mode: str = "r", *args: object, **kwargs: object) -> io.IOBase:
        seen.append(_listing(tmp_path)[0])
        if fail_in == "write":
            return HalfWriter(fd, "wb")
        return real_fdopen(fd, mode, *args, **kwargs)

    def failing(*args: object) -> None:
        raise error

    monkeypatch.setattr(os, "fdopen", fdopen)
    if fail_in != "write":
        monkeypatch.setattr(os, fail_in, failing)
    with pytest.raises(type(error), match=re.escape(str(error))):
        atomic_write_bytes(target, b"new content that is long")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["out.png"]
    assert seen and files.is_temp_name(seen[0]) and seen[0].startswith(".out.png.")


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on (a temp file shows as its temp name)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                                reason="reads fsynced paths from /proc/self/fd")


@needs_proc
def test_durable_is_what_fsyncs_the_file_and_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _record_fsyncs(monkeypatch)
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    atomic_write_bytes(tmp_path / "a.bin", b"abc", durable=False)
    atomic_copy(src, tmp_path / "b.bin", durable=False)
    with atomic_path(tmp_path / "c.bin", durable=False) as tmp:
        tmp.write_bytes(b"abc")
    assert synced == []
    atomic_write_bytes(tmp_path / "a.bin", b"abc")
    atomic_copy(src, tmp_path / "b.bin")
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"abc")
    names = [Path(p).name for p in synced]
    assert [files.is_temp_name(n) for n in names] == [True, False] * 3
    assert all(n.startswith(f".{x}.bin.") for n, x in zip(names[::2], "abc", strict=True))
    assert synced[1::2] == [str(tmp_path)] * 3  # the directory, after each rename
    assert {(tmp_path / x).read_bytes() for x in ("a.bin", "b.bin", "c.bin")} == {b"abc"}


@needs_proc
def test_sync_written_fsyncs_the_files_and_the_folders_up_to_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    written = [out / "a" / "b" / "1.jpg", out / "a" / "b" / "2.jpg", out / "c.jpg"]
    for path in written:
        atomic_write_bytes(path, b"x", durable=False)
    synced = _record_fsyncs(monkeypatch)
    sync_written(written, out)
    assert sorted(synced[:3]) == sorted(str(p) for p in written)  # files first, any order
    assert synced[3:] == [str(out / "a" / "b"), str(out / "a"), str(out)]  # not tmp_path


def test_atomic_path_failure_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "faces.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["faces.parquet"]


def test_a_killed_atomic_path_leaves_a_temp_that_resume_removes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """atomic_path and atomic_write_bytes share one temp name: remove_stale_temps finds both."""
    monkeypatch.setattr(files, "_discard", lambda path: None)  # as if killed mid-write
    with pytest.raises(KeyboardInterrupt, match="killed"), \
            atomic_path(tmp_path / "run" / "history.csv") as tmp:
        tmp.write_text("epoch\n")
        raise KeyboardInterrupt("killed")
    monkeypatch.undo()
    assert len(_listing(tmp_path / "run")) == 1
    assert remove_stale_temps(tmp_path) == 1
    assert _listing(tmp_path / "run") == []


def test_write_json_is_indented_utf8_with_a_final_newline(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "study.json"
    write_json(target, {"name": "blur", "values": [1, 2], "text": "é"})
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "\n  \"values\": [\n" in text
    assert json.loads(text) == {"name": "blur", "values": [1, 2], "text": "é"}


def test_atomic_write_long_unicode_name(tmp_path: Path) -> None:
    target = tmp_path / ("日本" * 40 + ".jpg")  # 244 bytes: the temp name must still fit
    atomic_write_bytes(target, b"x")
    assert target.read_bytes() == b"x"
    assert _listing(tmp_path) == [target.name]


def test_atomic_copy_copies_and_links(tmp_path: Path) -> None:
    src = tmp_path / "src.jpg"
    src.write_bytes(b"\xff\xd8 some image bytes")
    copied, linked = tmp_path / "out" / "copy.jpg", tmp_path / "out" / "link.jpg"
    copied.parent.mkdir()
    copied.write_bytes(b"stale")
    atomic_copy(src, copied)
    atomic_copy(src, linked, link=True)
    assert copied.read_bytes() == linked.read_bytes() == src.read_bytes()
    assert copied.stat().st_ino != src.stat().st_ino
    assert linked.stat().st_ino == src.stat().st_ino
    assert _listing(copied.parent) == ["copy.jpg", "link.jpg"]


def test_atomic_copy_falls_back_when_linking_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src.jpg"
    src.write_bytes(b"bytes")

    def cross_device(*args: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    dst = tmp_path / "dst.jpg"
    atomic_copy(src, dst, link=True)
    assert dst.read_bytes() == b"bytes" and dst.stat().st_ino != src.stat().st_ino
    assert _listing(tmp_path) == ["dst.jpg", "src.jpg"]


def test_atomic_copy_of_missing_source_leaves_nothing(tmp_path: Path) -> None:
    for link in (False, True):
        with pytest.raises(FileNotFoundError, match=r"gone\.jpg"):
            atomic_copy(tmp_path / "gone.jpg", tmp_path / "dst.jpg", link=link)
    assert _listing(tmp_path) == []


def test_remove_stale_temps(tmp_path: Path) -> None:
    keep = [tmp_path / "a.jpg", tmp_path / ".hidden", tmp_path / "sub" / "b.png",
            tmp_path / "sub" / ".b.png.veil-tmp-xyz"]  # not our random suffix
    stale = [tmp_path / ".a.jpg.veil-tmp-0123456789ab",
             tmp_path / "sub" / "deeper" / ".c.png.veil-tmp-ba9876543210"]
    for path in keep + stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 2
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert remove_stale_temps(tmp_path) == 0
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_temp_names_from_a_killed_write_are_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temp file left by a real (interrupted) write is what remove_stale_temps removes."""
    monkeypatch.setattr(files, "_discard", lambda path: None)  # as if killed mid-write

    def killed(*args: object) -> None:
        raise KeyboardInterrupt("killed mid-rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt, match="killed mid-rename"):
        atomic_write_bytes(tmp_path / "x" / "out.jpg", b"data")
    monkeypatch.undo()
    assert len(_listing(tmp_path / "x")) == 1
    assert remove_stale_temps(tmp_path) == 1
    assert _listing(tmp_path / "x") == []


