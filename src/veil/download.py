"""Fetch Imagenette into the user cache, for ``veil demo --download``.

The only place veil touches the network, and only when a user asks for it: tests and
every other stage read local files. Archives are extracted member by member with
path checks, so a hostile tarball cannot write outside the cache.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from veil.errors import VeilError

IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"
IMAGENETTE_DIR = "imagenette2-320"


def cache_dir() -> Path:
    """``$VEIL_CACHE``, else ``$XDG_CACHE_HOME/veil``, else ``~/.cache/veil``."""
    if os.environ.get("VEIL_CACHE"):
        return Path(os.environ["VEIL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "veil"


def cached_imagenette() -> Path | None:
    """A previously downloaded Imagenette, if there is one."""
    path = cache_dir() / IMAGENETTE_DIR
    return path if (path / "val").is_dir() else None


def _fetch(url: str, target: Path, *, progress: bool) -> None:
    """Stream ``url`` into ``target`` (the network boundary: tests replace urlopen)."""
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except OSError as exc:
        raise VeilError(f"cannot download {url}: {exc}") from exc
    with response, target.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="download",
                  disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _safe_extract(archive: Path, destination: Path) -> None:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not (member.isdir() or member.isfile()):
                raise VeilError(f"refusing archive member {member.name!r}: not a file or folder")
            resolved = (destination / member.name).resolve()
            if destination.resolve() not in resolved.parents and resolved != destination.resolve():
                raise VeilError(f"refusing archive member {member.name!r}: outside the cache")
        tar.extractall(destination, filter="data")


def download_imagenette(url: str = IMAGENETTE_URL, *, progress: bool = True) -> Path:
    """Download and extract Imagenette (about 330 MB) into the cache; returns its folder."""
    existing = cached_imagenette()
    if existing is not None:
        return existing
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        archive = Path(tmp) / "imagenette.tgz"
        _fetch(url, archive, progress=progress)
        staging = Path(tmp) / "extract"
        staging.mkdir()
        try:
            _safe_extract(archive, staging)
        except tarfile.TarError as exc:
            raise VeilError(f"the download from {url} is not a valid archive: {exc}") from exc
        found = [p.parent for p in staging.rglob("val") if p.is_dir()]
        if not found:
            raise VeilError(f"the archive from {url} has no val/ folder")
        shutil.move(str(found[0]), cache / IMAGENETTE_DIR)
    return cache / IMAGENETTE_DIR
