"""`veil demo` offline on the gallery, and `--download` with the network stubbed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from corpus import jpeg_bytes, photo
from PIL import Image

from veil import download
from veil.cli import main


def test_demo_runs_offline_and_writes_a_report(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VEIL_DATA", raising=False)
    monkeypatch.setenv("VEIL_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "Gallery" in report and report.count("data:image/jpeg;base64,") >= 20
    assert "skipped: Imagenette" in result.output  # said clearly, not silently left out
    assert "http://" not in report and "https://" not in report  # self-contained
    for method in ("blur", "minimal-blur", "overlay", "mosaic", "solid"):
        assert (tmp_path / "demo" / "gallery" / "obfuscated" / method / "astronaut.png").exists()


def _fake_imagenette() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for key in ("imagenette2-320/val/n01440764/a.JPEG", "imagenette2-320/val/n03394916/b.JPEG",
                    "imagenette2-320/train/n01440764/c.JPEG"):
            data = jpeg_bytes(Image.fromarray(photo(48, 40, seed=len(key))))
            info = tarfile.TarInfo(key)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _Response(io.BytesIO):
    headers: ClassVar[dict[str, str]] = {}

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_download_is_cached_and_used_by_the_demo(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VEIL_DATA", raising=False)
    monkeypatch.setenv("VEIL_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_urlopen(url: str, timeout: float) -> _Response:  # the network boundary
        calls.append(url)
        return _Response(_fake_imagenette())

    monkeypatch.setattr(download.urllib.request, "urlopen", fake_urlopen)
    result = CliRunner().invoke(main, ["demo", "--download", "--out", str(tmp_path / "demo"),
                                       "--no-study", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert calls == [download.IMAGENETTE_URL]
    assert "Imagenette val: 2 images" in result.output
    assert download.cached_imagenette() == tmp_path / "cache" / "imagenette2-320"
    # a second run finds the cache and does not download again
    again = CliRunner().invoke(main, ["demo", "--download", "--out", str(tmp_path / "demo2"),
                                      "--no-study", "--no-progress"])
    assert again.exit_code == 0 and calls == [download.IMAGENETTE_URL]


def test_hostile_archives_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VEIL_CACHE", str(tmp_path / "cache"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    monkeypatch.setattr(download.urllib.request, "urlopen",
                        lambda url, timeout: _Response(buffer.getvalue()))
    with pytest.raises(download.VeilError, match="outside the cache"):
        download.download_imagenette(progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_demo_study_on_an_imagenette_style_folder(tmp_path: Path, monkeypatch) -> None:
    """With a labelled train/val dataset the demo also trains and links a study report."""
    from veil import demo
    from veil.gallery import write_gallery

    gallery = tmp_path / "gallery"
    write_gallery(gallery)
    data = tmp_path / "imagenette"
    for split, count in (("train", 8), ("val", 4)):
        for label, source in (("n00000001", "astronaut.png"), ("n00000002", "coffee.png")):
            folder = data / split / label
            folder.mkdir(parents=True)
            with Image.open(gallery / source) as image:
                base = image.convert("RGB").resize((96, 96))
            for i in range(count):
                base.rotate(i * 7).save(folder / f"{label}_{i}.JPEG", quality=90)
    monkeypatch.setattr(demo, "DEMO_STUDY_IMAGES", 16)
    monkeypatch.setattr(demo, "DEMO_STUDY_EPOCHS", 1)
    result = demo.run_demo(tmp_path / "out", data=data, workers=1, progress=False,
                           log=lambda message: None)
    assert result.study_report is not None and result.study_report.is_file()
    assert "study/report.html" in result.report.read_text()
