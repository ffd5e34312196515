"""Decoding: every odd input becomes RGB as displayed, or an ImageError in plain words."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    CASE_NAMES,
    MARKED_PIXELS,
    CorpusCase,
    identifying_exif,
    insert_jpeg_segment,
    iptc_app13,
    jpeg_bytes,
    marked_image,
    orientation_exif,
    photo,
    png_bytes,
    srgb_icc,
    write_corpus,
)
from PIL import Image, ImageFile, ImageOps

from veil.errors import ImageError, VeilError
from veil.images import (
    DEFAULT_MAX_PIXELS,
    as_rgb,
    decode_native,
    file_sha256,
    load_image,
    max_pixels_limit,
    plain_jpeg,
    probe,
)

_HEADER_ERRORS = ("empty", "text_as_jpg", "unknown_format", "bomb_png", "bomb_jpeg",
                  "directory", "vanished")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusCase]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def _assert_colours(case: CorpusCase, image: Image.Image) -> None:
    a = _pixels(image)
    for (x, y), rgb in case.pixels:
        got = tuple(int(v) for v in a[y, x])
        assert max(abs(g - e) for g, e in zip(got, rgb, strict=True)) <= case.tolerance, (
            f"{case.name}: pixel {(x, y)} is {got}, expected {rgb} +- {case.tolerance}"
        )


@pytest.mark.parametrize("name", CASE_NAMES)
def test_corpus_case_behaves_as_recorded(corpus: dict[str, CorpusCase], name: str) -> None:
    case = corpus[name]
    if not case.ok:
        with pytest.raises(ImageError, match=re.escape(case.error)):
            load_image(case.path)
        return
    loaded = load_image(case.path)
    assert loaded.image.mode == "RGB"
    assert np.asarray(loaded.image).dtype == np.uint8
    assert (loaded.width, loaded.height) == case.size == loaded.image.size
    assert loaded.format == case.format
    assert loaded.orientation == case.orientation
    assert loaded.metadata == case.metadata
    assert loaded.image.info == {}
    _assert_colours(case, loaded.image)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_probe_agrees_with_load(corpus: dict[str, CorpusCase], name: str) -> None:
    case = corpus[name]
    if case.ok:
        loaded = load_image(case.path)
        found = probe(case.path)
        assert (found.width, found.height) == (loaded.width, loaded.height)
        assert (found.format, found.orientation, found.metadata) == (
            loaded.format, loaded.orientation, loaded.metadata)
    elif name in _HEADER_ERRORS:
        with pytest.raises(ImageError, match=re.escape(case.error)):
            probe(case.path)
    else:  # truncated pixel data: only decoding can tell
        assert probe(case.path).width > 0


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bytes_load_like_paths(corpus: dict[str, CorpusCase], name: str) -> None:
    case = corpus[name]
    if not case.path.is_file():
        return
    data = case.path.read_bytes()
    if not case.ok:
        with pytest.raises(ImageError, match=re.escape(case.error)):
            load_image(data)
        return
    from_bytes, from_path = load_image(data), load_image(case.path)
    assert np.array_equal(_pixels(from_bytes.image), _pixels(from_path.image))
    assert from_bytes.metadata == from_path.metadata


def test_same_pixels_as_torchvision_default_loader(corpus: dict[str, CorpusCase]) -> None:
    """Image.open(f).convert("RGB") is what ImageNet trains on; match it where it is sane."""
    checked = 0
    for case in corpus.values():
        if not case.ok or case.orientation != 1 or case.name in ("grey16_png", "rgb16_png"):
            continue
        with Image.open(case.path) as im:
            reference = _pixels(im.convert("RGB"))
        assert np.array_equal(_pixels(load_image(case.path).image), reference), case.name
        checked += 1
    assert checked >= 10


def test_sixteen_bit_is_scaled_not_clipped(corpus: dict[str, CorpusCase]) -> None:
    case = corpus["grey16_png"]
    with Image.open(case.path) as im:
        assert im.mode.startswith("I")
        clipped = _pixels(im.convert("RGB"))
    ours = _pixels(load_image(case.path).image)
    assert list(ours[8, [8, 24, 40, 56], 0]) == [0, 4, 128, 255]
    assert list(clipped[8, [8, 24, 40, 56], 0]) != [0, 4, 128, 255]  # what we avoid


def test_mode_i_and_f_follow_the_stated_rule() -> None:
    i32 = Image.fromarray(np.array([[0, 257, 65535, 70000, -5]], np.int32))
    assert i32.mode == "I"
    assert list(_pixels(as_rgb(i32))[0, :, 0]) == [0, 1, 255, 255, 0]
    f32 = Image.fromarray(np.array([[-3.0, 0.4, 127.6, 300.0]], np.float32))
    assert list(_pixels(as_rgb(f32))[0, :, 0]) == [0, 0, 128, 255]


def test_cmyk_case_is_an_adobe_inverted_jpeg(corpus: dict[str, CorpusCase]) -> None:
    with Image.open(corpus["cmyk_jpeg"].path) as im:
        assert im.mode == "CMYK"
        assert any(marker == "APP14" and data.startswith(b"Adobe") for marker, data in im.applist)


_INVERSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation: int) -> None:
    displayed = marked_image()
    inverse = _INVERSE[orientation]
    stored = displayed if inverse is None else displayed.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = png_bytes(stored, exif=exif.tobytes())
    loaded = load_image(data)
    assert loaded.orientation == orientation
    assert np.array_equal(_pixels(loaded.image), _pixels(displayed))
    with Image.open(io.BytesIO(data)) as im:  # Pillow's own rule agrees
        assert np.array_equal(_pixels(ImageOps.exif_transpose(im).convert("RGB")),
                              _pixels(displayed))
    if orientation in (5, 6, 7, 8):
        assert probe(data).width == displayed.width != stored.width


def test_stored_pixels_of_rotated_case_are_not_already_upright(
        corpus: dict[str, CorpusCase]) -> None:
    with Image.open(corpus["exif_rotated_6"].path) as im:
        stored = _pixels(im.convert("RGB"))
    (x, y), red = MARKED_PIXELS[0]
    assert stored.shape[:2] != (64, 40)
    assert abs(int(stored[y, x, 0]) - red[0]) > 100  # the marker is elsewhere when stored


def test_invalid_orientation_counts_as_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 9
    loaded = load_image(png_bytes(marked_image(), exif=exif.tobytes()))
    assert loaded.orientation == 1
    assert loaded.image.size == marked_image().size


def test_xmp_orientation_is_honoured_like_pillow() -> None:
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    buf = io.BytesIO()
    marked_image().transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95, xmp=xmp)
    loaded = load_image(buf.getvalue())
    assert loaded.orientation == 6
    assert loaded.metadata == ("xmp",)
    assert loaded.image.size == marked_image().size


def test_bomb_is_refused_from_the_header_alone(
        corpus: dict[str, CorpusCase], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for name, pixels in (("bomb_png", "900,000,000"), ("bomb_jpeg", "3,600,000,000")):
        # no_decoding: refused from the header, before any pixel
        with pytest.raises(ImageError, match=f"{pixels} pixels") as caught:
            load_image(corpus[name].path)
        message = str(caught.value)
        assert pixels in message
        assert f"{DEFAULT_MAX_PIXELS:,}" in message
        assert "max_pixels" in message and "VEIL_MAX_PIXELS" in message
        assert corpus[name].path.stat().st_size < 5000


def test_max_pixels_argument_and_environment(
        corpus: dict[str, CorpusCase], monkeypatch: pytest.MonkeyPatch) -> None:
    path = corpus["rgb_jpeg"].path  # 96 x 64 = 6,144 pixels
    assert load_image(path, max_pixels=6144).width == 96
    with pytest.raises(ImageError, match=r"6,144 pixels, over the limit of 6,000"):
        load_image(path, max_pixels=6000)
    with pytest.raises(ImageError, match="over the limit of 6,000"):
        probe(path, max_pixels=6000)

    monkeypatch.setenv("VEIL_MAX_PIXELS", "6000")
    assert max_pixels_limit() == 6000
    with pytest.raises(ImageError, match="over the limit of 6,000"):
        load_image(path)
    assert load_image(path, max_pixels=10_000).width == 96  # the argument wins

    monkeypatch.setenv("VEIL_MAX_PIXELS", "300_000_000")
    assert max_pixels_limit() == 300_000_000
    monkeypatch.setenv("VEIL_MAX_PIXELS", "lots")
    with pytest.raises(VeilError, match="VEIL_MAX_PIXELS") as caught:
        load_image(path)
    assert not isinstance(caught.value, ImageError)  # a setup error, not a bad image
    monkeypatch.delenv("VEIL_MAX_PIXELS")
    assert max_pixels_limit() == DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match="max_pixels must be positive, got 0"):
        max_pixels_limit(0)


def test_pillow_bomb_guard_never_leaks(
        corpus: dict[str, CorpusCase], monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's global limit neither warns nor refuses: veil's own limit decides."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError, match="decompression bomb"):
        Image.open(corpus["rgb_jpeg"].path)  # 6,144 pixels: Pillow alone would refuse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for case in corpus.values():
            if case.ok:
                assert load_image(case.path).image.size == case.size
                probe(case.path)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    with pytest.raises(ImageError, match="over the limit"):
        load_image(corpus["rgb_jpeg"].path, max_pixels=1000)


def test_loading_changes_no_pillow_globals(corpus: dict[str, CorpusCase]) -> None:
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    for case in corpus.values():
        with contextlib.suppress(ImageError):
            load_image(case.path)
    assert before == (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_animated_gif_gives_its_first_frame(corpus: dict[str, CorpusCase]) -> None:
    with Image.open(corpus["animated_gif"].path) as im:
        assert im.n_frames == 2
    assert tuple(_pixels(load_image(corpus["animated_gif"].path).image)[5, 10]) == (255, 0, 0)


def test_mpo_is_reported_as_jpeg() -> None:
    from corpus import jpeg_bytes

    first = Image.fromarray(np.full((16, 24, 3), 90, np.uint8))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (24, 16), "white")])
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.format == "MPO"
    loaded = load_image(buf.getvalue())
    assert loaded.format == probe(buf.getvalue()).format == "JPEG"
    assert loaded.jpeg is not None
    assert load_image(jpeg_bytes(first)).format == "JPEG"


def test_palette_transparency_keeps_palette_colours() -> None:
    image = Image.new("P", (4, 1), 0)
    image.putpalette([255, 255, 255, 1, 2, 3] + [0] * 762)
    image.putpixel((1, 0), 1)
    data = png_bytes(image, transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(data)
    assert [tuple(p) for p in _pixels(loaded.image)[0]] == [(255, 255, 255), (1, 2, 3),
                                                           (255, 255, 255), (255, 255, 255)]


def test_jpeg_source_records_tables_sampling_and_progression(
        corpus: dict[str, CorpusCase]) -> None:
    with Image.open(corpus["progressive_jpeg"].path) as im:
        tables = {k: list(v) for k, v in im.quantization.items()}
    jpeg = load_image(corpus["progressive_jpeg"].path).jpeg
    assert jpeg is not None
    assert jpeg.quantization == tables
    assert (jpeg.subsampling, jpeg.progressive, jpeg.components) == (0, True, 3)
    grey = load_image(corpus["grey_jpeg"].path).jpeg
    assert grey is not None and grey.components == 1 and len(grey.quantization) == 1
    assert load_image(corpus["rgba_png"].path).jpeg is None


def test_icc_profile_is_reported(corpus: dict[str, CorpusCase]) -> None:
    loaded = load_image(corpus["exif_metadata_jpeg"].path)
    assert loaded.icc_profile is not None and loaded.icc_profile[36:40] == b"acsp"
    assert load_image(corpus["rgb_jpeg"].path).icc_profile is None


def test_exif_with_only_orientation_is_not_identifying(corpus: dict[str, CorpusCase]) -> None:
    assert load_image(corpus["exif_rotated_6"].path).metadata == ()
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x0131] = "Some Editor 1.0"  # Software: more than orientation
    assert load_image(png_bytes(marked_image(), exif=exif.tobytes())).metadata == ("exif",)


def test_decode_native_keeps_mode_and_orientation(corpus: dict[str, CorpusCase]) -> None:
    native = decode_native(corpus["rgba_png"].path)
    assert native.mode == "RGBA" and native.info == {}
    palette = decode_native(corpus["palette_transparent_png"].path)
    assert palette.mode == "P" and palette.info == {"transparency": 2}
    rotated = decode_native(corpus["png_exif_rotated"].path)
    assert rotated.size == (40, 64)
    for case in corpus.values():
        if case.ok:
            assert np.array_equal(_pixels(as_rgb(decode_native(case.path))),
                                  _pixels(load_image(case.path).image)), case.name


def _mutations(data: bytes, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = [data[:n] for n in sorted({int(x) for x in rng.integers(1, len(data), 12)})]
    for _ in range(25):
        b = bytearray(data)
        for pos in rng.integers(0, min(len(b), 300), 3):
            b[pos] = int(rng.integers(0, 256))
        out.append(bytes(b))
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on damaged EXIF: expected
@pytest.mark.parametrize("name", ["rgb_jpeg", "progressive_jpeg", "rgba_png", "grey16_png",
                                  "animated_gif", "webp", "exif_metadata_jpeg", "cmyk_jpeg"])
def test_damaged_files_raise_image_error_or_load(
        corpus: dict[str, CorpusCase], name: str) -> None:
    """Whatever Pillow throws on a damaged file comes out as an ImageError, nothing else."""
    data = corpus[name].path.read_bytes()
    outcomes = set()
    for i, damaged in enumerate(_mutations(data, seed=len(name))):
        try:
            loaded = load_image(damaged, max_pixels=4_000_000)
            assert loaded.image.mode == "RGB", i
            outcomes.add("ok")
        except ImageError as e:
            assert str(e), i
            outcomes.add("error")
    assert "error" in outcomes


def test_truncated_files_never_come_back_half_grey(corpus: dict[str, CorpusCase]) -> None:
    data = corpus["rgb_jpeg"].path.read_bytes()
    for cut in range(len(data) // 3, len(data) - 2, 97):
        with pytest.raises(ImageError, match="truncated JPEG data"):
            load_image(data[:cut])


def test_file_sha256_streams_and_reports_missing(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    payload = bytes(range(256)) * 5000
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()
    with pytest.raises(ImageError, match="file not found"):
        file_sha256(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        file_sha256(tmp_path)


# --------------------------------------------------------------------------- plain_jpeg


def test_plain_jpeg_only_where_probe_finds_a_clean_jpeg(corpus: dict[str, CorpusCase]) -> None:
    """The quick header walk never says 'plain' where probe would disagree."""
    for case in corpus.values():
        if not case.path.is_file() or case.path.stat().st_size == 0:
            continue
        data = case.path.read_bytes()
        for limit in (None, 10_000):
            if not plain_jpeg(data, limit):
                continue
            found = probe(data, max_pixels=limit)  # raises if over the limit
            assert (found.format, found.orientation, found.metadata) == ("JPEG", 1, ()), case


def test_plain_jpeg_examples() -> None:
    image = Image.fromarray(photo(64, 48))
    plain = jpeg_bytes(image, quality=90)
    assert plain_jpeg(plain)
    assert plain_jpeg(jpeg_bytes(image, progressive=True))
    assert plain_jpeg(jpeg_bytes(image, icc_profile=srgb_icc()))
    assert plain_jpeg(jpeg_bytes(image.convert("L")))
    assert not plain_jpeg(plain, max_pixels=64 * 48 - 1)
    assert plain_jpeg(plain, max_pixels=64 * 48)
    assert not plain_jpeg(jpeg_bytes(image, exif=identifying_exif()))
    assert not plain_jpeg(jpeg_bytes(image, exif=orientation_exif(6)))
    assert not plain_jpeg(jpeg_bytes(image, comment=b"taken by someone"))
    assert not plain_jpeg(insert_jpeg_segment(plain, 0xED, iptc_app13(b"someone")))
    assert not plain_jpeg(insert_jpeg_segment(plain, 0xE1, b"http://ns.adobe.com/xap/1.0/\0x"))
    assert not plain_jpeg(jpeg_bytes(image.convert("CMYK")))
    # A JFIF APP0 that carries a 2x2 RGB thumbnail (length 16 + 12): probe decides.
    app0 = plain.index(b"\xff\xe0")
    jfif = bytearray(plain[app0 + 4:app0 + 18])
    jfif[12:14] = b"\x02\x02"
    thumbnailed = (plain[:app0] + b"\xff\xe0" + (28).to_bytes(2, "big") + bytes(jfif)
                   + bytes(12) + plain[app0 + 18:])
    assert Image.open(io.BytesIO(thumbnailed)).size == (64, 48)
    assert not plain_jpeg(thumbnailed)
    sos = plain.index(b"\xff\xda")
    assert not plain_jpeg(plain[:sos])  # cut before the scan: probe decides
    assert not plain_jpeg(plain[:sos + 3])
    assert not plain_jpeg(b"")
    assert not plain_jpeg(png_bytes(image))
