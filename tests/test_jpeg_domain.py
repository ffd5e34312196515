"""JPEG-domain obfuscation (issue 14): outside the faces, the published JPEG's DCT
coefficients are the source's, bit for bit; inside, the blocks carry the method's output
quantised once with the source's tables. Coefficients are read with jpeglib, a reader
independent of the libjpeg-turbo transform that writes them."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms

from veil import jpeg_domain
from veil.boxes import Box
from veil.cli import main
from veil.datasets import open_dataset
from veil.encoding import encode_image
from veil.faces import load_faces
from veil.images import load_image, probe
from veil.obfuscation import affected_region, obfuscate, read_region
from veil.stages.obfuscate import ledger_path, obfuscate_dataset
from veil.store import FaceStore

jpeglib = pytest.importorskip("jpeglib")

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
LAYOUTS = {"4:4:4": ((1, 1), 3), "4:2:0": ((2, 2), 3), "4:2:2": ((2, 1), 3), "grey": (None, 1)}


def _layout(frame: jpeg_domain.Frame) -> str | None:
    for name, (sampling, count) in LAYOUTS.items():
        if len(frame.components) == count and (
                sampling is None or frame.components[0][:2] == sampling):
            return name
    return None


@pytest.fixture(scope="module")
def photos(shared: Path) -> dict[str, bytes]:
    """One full-size ILSVRC photo of each sampling layout, as published."""
    found: dict[str, bytes] = {}
    for path in sorted((shared / "data" / "imagenet-samples" / "images").iterdir()):
        data = path.read_bytes()
        name = _layout(jpeg_domain.parse_frame(data))
        if name and name not in found:
            found[name] = data
    assert set(found) == set(LAYOUTS), f"layouts found: {sorted(found)}"
    return found


def _progressive(data: bytes) -> bytes:
    """The same photo saved progressive with its own tables and sampling."""
    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as im:
        im.save(out, "JPEG", quality="keep", progressive=True)
    return out.getvalue()


def _faces(size: tuple[int, int]) -> list[dict[str, float]]:
    """A face in the middle and one cut by the left edge (odd, unaligned coordinates)."""
    w, h = size
    return [{"x0": w * 0.41 + 0.3, "y0": h * 0.33, "x1": w * 0.58, "y1": h * 0.61 + 0.7},
            {"x0": -5.0, "y0": h * 0.07, "x1": w * 0.09, "y1": h * 0.2}]


def _run(tmp_path: Path, files: dict[str, bytes], **kwargs):
    data = tmp_path / "data"
    data.mkdir()
    faces = {}
    for name, raw in files.items():
        (data / name).write_bytes(raw)
        faces[name] = _faces(load_image(raw).image.size)
    faces_file = tmp_path / "faces.json"
    faces_file.write_text(json.dumps([{"url": k, "bboxes": v} for k, v in faces.items()]))
    out = tmp_path / "out"
    summary = obfuscate_dataset(open_dataset(data), load_faces(str(faces_file)), out,
                                workers=1, progress=False, **kwargs)
    with FaceStore(ledger_path(out), create=False) as ledger:
        run = ledger.runs("obfuscate")[-1]
        infos = {item.key: item.info for item in ledger.run_items(run.id)}
    return out, faces, infos, summary


def _coefficients(data: bytes, tmp_path: Path) -> list[np.ndarray]:
    path = tmp_path / "coefficients.jpg"
    path.write_bytes(data)
    dct = jpeglib.read_dct(str(path))
    planes = [dct.Y] + ([dct.Cb, dct.Cr] if dct.has_chrominance else [])
    return [np.asarray(p) for p in planes]


def _block_masks(data: bytes, regions: list[list[int]], orientation: int = 1) -> list:
    """Per component, the blocks of the MCUs that ``regions`` (displayed pixels) touch."""
    frame = jpeg_domain.parse_frame(data)
    stored = [jpeg_domain.stored_rect(tuple(r), orientation, (frame.width, frame.height))
              for r in regions]
    mcus = jpeg_domain._mcu_mask(frame, stored)
    masks = []
    for h, v, _ in frame.components:
        if len(frame.components) == 1:
            h = v = 1
        masks.append(np.repeat(np.repeat(mcus, v, axis=0), h, axis=1))
    return masks


CASES = [(layout, progressive) for layout in LAYOUTS for progressive in (False, True)]


def test_outside_the_faces_every_coefficient_is_the_sources(photos, tmp_path):
    """Every sampling layout of the shared photos, baseline and progressive: 0 coefficient
    differences outside the affected MCUs; inside, the blocks equal those of today's
    whole re-encode (the pixel-domain result quantised once with the same tables)."""
    files = {f"{layout}-{'prog' if prog else 'base'}.jpg":
             _progressive(photos[layout]) if prog else photos[layout]
             for layout, prog in CASES}
    out, faces, infos, summary = _run(tmp_path, files)
    assert summary.counts["jpeg-domain"] == len(files)
    assert summary.counts["re-encoded whole"] == 0
    for name, source in files.items():
        info = infos[name]
        assert info["encoding"] == "jpeg-domain", (name, info)
        result = (out / name).read_bytes()
        assert jpeg_domain.parse_frame(result).progressive == name.endswith("prog.jpg")
        before = _coefficients(source, tmp_path)
        after = _coefficients(result, tmp_path)
        masks = _block_masks(source, info["regions"])
        loaded = load_image(source)
        boxes = [Box(**b) for b in faces[name]]
        whole, _ = encode_image(obfuscate(loaded.image, boxes, "blur"), loaded)
        reencoded = _coefficients(whole, tmp_path)
        for component, (a, b, w, mask) in enumerate(
                zip(before, after, reencoded, masks, strict=True)):
            mask = mask[:a.shape[0], :a.shape[1]]
            changed = (a != b).any(axis=(2, 3))
            assert changed.any(), f"{name}: component {component} unchanged"
            assert not (changed & ~mask).any(), (
                f"{name}: component {component}: {int((changed & ~mask).sum())} blocks "
                "outside the faces differ from the source")
            assert (b[mask] == w[mask]).all(), f"{name}: component {component} inside"


def test_restart_markers_and_exif_orientation_are_honoured(photos, tmp_path):
    """A 4:2:0 photo stored turned (EXIF orientation 6, boxes in displayed pixels) and one
    with restart markers: the same proof, and the output displays as the source did."""
    with Image.open(io.BytesIO(photos["4:2:0"])) as im:
        exif = Image.Exif()
        exif[0x0112] = 6
        exif[0x010F] = "CameraMaker"  # identifying: must not reach the output
        turned = io.BytesIO()
        im.save(turned, "JPEG", quality="keep", exif=exif.tobytes(), icc_profile=SRGB,
                comment=b"Jane Doe, at home", xmp=b"<x:xmpmeta>GPS 51.5N</x:xmpmeta>")
        restart = io.BytesIO()
        im.save(restart, "JPEG", quality="keep", restart_marker_blocks=3)
    files = {"turned.jpg": turned.getvalue(), "restart.jpg": restart.getvalue()}
    assert b"\xff\xdd" in files["restart.jpg"][:2000]  # a DRI segment: restart markers on
    out, faces, infos, _ = _run(tmp_path, files)
    for name, source in files.items():
        orientation = probe(source).orientation
        result = (out / name).read_bytes()
        assert infos[name]["encoding"] == "jpeg-domain"
        assert probe(result).orientation == orientation
        assert probe(result).metadata == ()
        for secret in (b"CameraMaker", b"Jane Doe", b"GPS 51.5N"):
            assert secret not in result
        with Image.open(io.BytesIO(result)) as shown:  # colour is not identity: kept
            assert shown.info.get("icc_profile") == (SRGB if name == "turned.jpg" else None)
        before, after = _coefficients(source, tmp_path), _coefficients(result, tmp_path)
        masks = _block_masks(source, infos[name]["regions"], orientation)
        for a, b, mask in zip(before, after, masks, strict=True):
            changed = (a != b).any(axis=(2, 3))
            assert changed.any()
            assert not (changed & ~mask[:a.shape[0], :a.shape[1]]).any(), name
        # displayed as the obfuscated source: the faces (in displayed pixels) are blurred
        shown = np.asarray(load_image(result).image, np.int16)
        loaded = load_image(source)
        boxes = [Box(**b) for b in faces[name]]
        expected = np.asarray(obfuscate(loaded.image, boxes, "blur"), np.int16)
        x0, y0, x1, y1 = affected_region(loaded.image.size, boxes, "blur")[0]
        inside = np.abs(shown[y0:y1, x0:x1] - expected[y0:y1, x0:x1])
        assert inside.mean() < 3, f"{name}: the face region does not show the blur"


def _cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 80, 160, 20)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _rgb_coded_jpeg() -> bytes:
    """A JPEG whose three components are R, G and B, not YCbCr (Adobe APP14 transform 0)."""
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 40)).save(out, "JPEG", keep_rgb=True)
    return out.getvalue()


def test_files_it_cannot_handle_are_reencoded_whole_with_the_reason(photos, tmp_path):
    files = {"cmyk.jpg": _cmyk_jpeg(), "photo.jpg": photos["4:4:4"],
             "rgb.jpg": _rgb_coded_jpeg()}
    if shutil.which("jpegtran"):
        files["arithmetic.jpg"] = subprocess.run(
            ["jpegtran", "-arithmetic"], input=photos["4:2:0"], capture_output=True,
            check=True).stdout
    out, _, infos, summary = _run(tmp_path, files)
    assert infos["cmyk.jpg"]["encoding"] == "reencoded"
    assert "CMYK" in infos["cmyk.jpg"]["reencoded_because"]
    assert infos["rgb.jpg"]["reencoded_because"].startswith("RGB-coded JPEG")
    if "arithmetic.jpg" in files:
        assert infos["arithmetic.jpg"]["reencoded_because"] == "arithmetic coding"
    assert infos["photo.jpg"]["encoding"] == "jpeg-domain"
    assert summary.counts["re-encoded whole"] == len(files) - 1
    for name in files:
        assert load_image((out / name).read_bytes()).image.size == load_image(
            files[name]).image.size


def test_without_libturbojpeg_every_image_is_reencoded_whole(photos, tmp_path, monkeypatch):
    monkeypatch.setenv(jpeg_domain.LIBRARY_ENV, str(tmp_path / "no-such-library.so"))
    jpeg_domain._library.cache_clear()
    try:
        _, _, infos, summary = _run(tmp_path, {"photo.jpg": photos["4:2:0"]})
    finally:
        monkeypatch.undo()
        jpeg_domain._library.cache_clear()
    assert infos["photo.jpg"]["encoding"] == "reencoded"
    assert infos["photo.jpg"]["reencoded_because"].startswith("no TurboJPEG library found")
    assert summary.counts["re-encoded whole"] == 1
    assert summary.counts["obfuscated"] == 1


def test_the_cli_says_when_the_jpeg_domain_is_unavailable(photos, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jpg").write_bytes(photos["grey"])
    faces = tmp_path / "faces.json"
    faces.write_text(json.dumps([{"url": "a.jpg", "bboxes": _faces((500, 375))}]))
    monkeypatch.setenv(jpeg_domain.LIBRARY_ENV, str(tmp_path / "no-such-library.so"))
    jpeg_domain._library.cache_clear()
    try:
        result = CliRunner().invoke(main, [
            "obfuscate", str(tmp_path / "data"), "--faces", str(faces), "--out",
            str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    finally:
        monkeypatch.undo()
        jpeg_domain._library.cache_clear()
    assert result.exit_code == 0, result.output
    assert "warning: JPEG-domain output unavailable: no TurboJPEG library found" in result.output
    counts = {ln.rsplit(None, 1)[0].strip(): ln.split()[-1]
              for ln in result.output.splitlines()[1:] if ln.startswith("  ")}
    assert counts["re-encoded whole"] == "1" and counts["jpeg-domain"] == "0"


def test_format_jpeg_reencodes_whole_and_the_summary_counts_both(photos, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jpg").write_bytes(photos["4:2:2"])
    (data / "cmyk.jpg").write_bytes(_cmyk_jpeg())
    faces = tmp_path / "faces.json"
    faces.write_text(json.dumps([{"url": k, "bboxes": _faces((500, 375))}
                                 for k in ("a.jpg", "cmyk.jpg")]))
    args = ["obfuscate", str(data), "--faces", str(faces), "--workers", "1", "--no-progress"]
    keep = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "keep")])
    assert keep.exit_code == 0, keep.output
    lines = {ln.split()[0]: ln.split()[-1] for ln in keep.output.splitlines()[1:] if ln.strip()}
    assert lines["jpeg-domain"] == "1"
    assert "re-encoded" in keep.output
    whole = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "jpeg"), "--format", "jpeg"])
    assert whole.exit_code == 0, whole.output
    assert "jpeg-domain" not in whole.output
    before = _coefficients(photos["4:2:2"], tmp_path)[0]
    after = _coefficients((tmp_path / "jpeg" / "a.jpg").read_bytes(), tmp_path)[0]
    # a second lossy generation: many blocks far from the faces change too
    assert (before != after).any(axis=(2, 3))[:, 40:].mean() > 0.1


@pytest.mark.parametrize("method,options", [
    ("blur", {}), ("minimal-blur", {"force_inside": True}), ("overlay", {"shape": "ellipse"}),
    ("mosaic", {})])
def test_a_decoded_crop_gives_the_bytes_of_a_whole_decode(photos, method, options):
    """``splice_window`` (decode only a crop around what the method reads, in the same
    libjpeg-turbo pass that re-encodes the file) writes the very bytes ``splice`` writes
    from the whole decoded picture: every layout, baseline and progressive."""
    for layout, progressive in CASES:
        source = _progressive(photos[layout]) if progressive else photos[layout]
        loaded = load_image(source)
        size = (loaded.width, loaded.height)
        boxes = [Box(**b) for b in _faces(size)]
        regions = affected_region(size, boxes, method, **options)
        whole = jpeg_domain.splice(source, obfuscate(loaded.image, boxes, method, **options),
                                   1, regions)
        seen: list[tuple[int, int]] = []

        def run(canvas: Image.Image, seen=seen, boxes=boxes) -> Image.Image:
            seen.append(canvas.size)
            return obfuscate(canvas, boxes, method, **options)

        window = jpeg_domain.splice_window(source, regions,
                                           read_region(size, boxes, method, **options), run)
        assert seen == [size]
        assert window.data == whole.data, (layout, progressive)
        assert (window.mcus, window.total_mcus) == (whole.mcus, whole.total_mcus)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_large_crop_decodes_the_whole_file_and_gives_the_same_bytes(photos, monkeypatch,
                                                                       share):
    """Past ``WHOLE_DECODE_SHARE`` of the picture ``splice_window`` decodes the whole file
    instead of writing and decoding a crop: same bytes either way, every layout."""
    monkeypatch.setattr(jpeg_domain, "WHOLE_DECODE_SHARE", share)
    decoded: list[int] = []
    real = jpeg_domain._decoded_rgb
    monkeypatch.setattr(jpeg_domain, "_decoded_rgb",
                        lambda data: decoded.append(len(data)) or real(data))
    for layout, progressive in CASES:
        source = _progressive(photos[layout]) if progressive else photos[layout]
        loaded = load_image(source)
        size = (loaded.width, loaded.height)
        boxes = [Box(**b) for b in _faces(size)]
        regions = affected_region(size, boxes)
        whole = jpeg_domain.splice(source, obfuscate(loaded.image, boxes), 1, regions)
        window = jpeg_domain.splice_window(source, regions, read_region(size, boxes),
                                           lambda canvas, boxes=boxes: obfuscate(canvas, boxes))
        assert window.data == whole.data, (layout, progressive)
        # share 0: the source itself was decoded; share 1: only a smaller crop
        assert (decoded[-1] == len(source)) == (share == 0.0), (layout, progressive)


def test_a_failing_method_in_the_crop_path_is_raised_not_swallowed(photos):
    """An error inside the libjpeg-turbo callback reaches the caller as itself (a bug must
    not pass for an unsupported file and be re-encoded silently)."""
    source = photos["4:2:0"]
    size = load_image(source).image.size
    boxes = [Box(**b) for b in _faces(size)]

    def broken(canvas: Image.Image) -> Image.Image:
        raise ZeroDivisionError("method bug")

    with pytest.raises(ZeroDivisionError, match="method bug"):
        jpeg_domain.splice_window(source, affected_region(size, boxes),
                                  read_region(size, boxes), broken)


def test_a_plain_faced_jpeg_is_read_without_pillow_and_gives_the_same_bytes(
        photos, tmp_path, monkeypatch):
    """The crop path reads a plain JPEG's size from its frame header instead of Pillow's
    probe; the output is the very file the probe-led path writes, and a photo with an
    ICC profile still takes the probe (its profile reaches the output)."""
    import veil.stages.obfuscate as stage

    with Image.open(io.BytesIO(photos["4:2:0"])) as im:
        profiled = io.BytesIO()
        im.save(profiled, "JPEG", quality="keep", icc_profile=SRGB)
    files = {"plain.jpg": photos["4:2:0"], "grey.jpg": photos["grey"],
             "profiled.jpg": profiled.getvalue()}
    probed: list[int] = []
    real_probe = stage.probe

    def counting_probe(data, *args, **kwargs):
        probed.append(len(data))
        return real_probe(data, *args, **kwargs)

    monkeypatch.setattr(stage, "probe", counting_probe)
    (tmp_path / "fast").mkdir()
    (tmp_path / "probed").mkdir()
    fast_out, _, fast_infos, _ = _run(tmp_path / "fast", files)
    # the plain photo was read without Pillow; the profiled one (and the grey photo, which
    # carries EXIF, IPTC and a profile as published) took the probe
    assert sorted(probed) == sorted([len(files["profiled.jpg"]), len(files["grey.jpg"])])
    monkeypatch.setattr(stage, "_plain_jpeg_size", lambda raw, max_pixels: None)
    probed_out, _, _, _ = _run(tmp_path / "probed", files)
    for name in files:
        assert fast_infos[name]["encoding"] == "jpeg-domain"
        assert (fast_out / name).read_bytes() == (probed_out / name).read_bytes(), name
    with Image.open(fast_out / "profiled.jpg") as shown:
        assert shown.info.get("icc_profile") == SRGB


def test_a_patch_encoder_that_changes_the_tables_is_refused(photos, monkeypatch):
    """The changed blocks must be quantised with the source's tables. Pillow's encoder is
    checked once per combination of tables and sampling (its output depends on those, not
    on the pixels); an encoder that writes other tables makes the file unsupported (so it
    is re-encoded whole with the reason), and that combination is not remembered as good."""
    source = photos["4:2:0"]
    loaded = load_image(source)
    size = (loaded.width, loaded.height)
    boxes = [Box(**b) for b in _faces(size)]
    regions = affected_region(size, boxes)
    obfuscated = obfuscate(loaded.image, boxes)
    real_encode = jpeg_domain._encode_patch

    def default_tables(patch: Image.Image, frame: jpeg_domain.Frame) -> bytes:
        out = io.BytesIO()
        patch.save(out, "JPEG", quality=20)  # tables unlike any ILSVRC photo's
        return out.getvalue()

    monkeypatch.setattr(jpeg_domain, "_REPRODUCED", set())
    monkeypatch.setattr(jpeg_domain, "_encode_patch", default_tables)
    with pytest.raises(jpeg_domain.Unsupported, match="did not reproduce"):
        jpeg_domain.splice(source, obfuscated, 1, regions)
    assert not jpeg_domain._REPRODUCED

    monkeypatch.setattr(jpeg_domain, "_encode_patch", real_encode)
    first = jpeg_domain.splice(source, obfuscated, 1, regions)
    assert len(jpeg_domain._REPRODUCED) == 1
    parsed: list[int] = []
    real_parse = jpeg_domain.parse_frame
    monkeypatch.setattr(jpeg_domain, "parse_frame",
                        lambda data: parsed.append(len(data)) or real_parse(data))
    again = jpeg_domain.splice(source, obfuscated, 1, regions)
    assert again.data == first.data
    assert parsed == [len(source)]  # the source's header only: the patch is not re-checked


def _crowd(size: tuple[int, int], count: int, seed: int = 0) -> list[Box]:
    """``count`` small faces scattered over the picture, as in a crowded WIDER photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    sides = rng.uniform(6, 30, count)
    xs, ys = rng.uniform(-10, w - 5, count), rng.uniform(-10, h - 5, count)
    return [Box(float(x), float(y), float(x + s), float(y + s * 1.2))
            for x, y, s in zip(xs, ys, sides, strict=True)]


def test_a_crowd_gives_the_bytes_of_a_whole_decode_and_its_patches_cover_every_face(
        photos, tmp_path):
    """With 80 faces the patches merged from them cover every changed MCU, none of them
    would still merge, the crop path writes the bytes of the whole-decode path, and the
    changed blocks are a whole re-encode's (however the patches were grouped)."""
    source = photos["4:2:0"]
    loaded = load_image(source)
    size = (loaded.width, loaded.height)
    boxes = _crowd(size, 80)
    regions = affected_region(size, boxes, "blur")
    frame = jpeg_domain.parse_frame(source)
    patches = jpeg_domain._patches(frame, regions)
    covered = np.zeros_like(jpeg_domain._mcu_mask(frame, regions))
    for r0, r1, c0, c1 in patches:
        covered[r0:r1, c0:c1] = True
    assert not (jpeg_domain._mcu_mask(frame, regions) & ~covered).any()

    def area(p: tuple[int, int, int, int]) -> int:
        return (p[1] - p[0]) * (p[3] - p[2])

    for i, a in enumerate(patches):
        for b in patches[i + 1:]:
            both = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
            assert area(both) > area(a) + area(b), (a, b)
    whole = jpeg_domain.splice(source, obfuscate(loaded.image, boxes, "blur"), 1, regions)
    window = jpeg_domain.splice_window(source, regions, read_region(size, boxes, "blur"),
                                       lambda canvas: obfuscate(canvas, boxes, "blur"))
    assert window.data == whole.data
    assert (window.mcus, window.total_mcus) == (whole.mcus, whole.total_mcus)
    reencoded, _ = encode_image(obfuscate(loaded.image, boxes, "blur"), loaded)
    masks = _block_masks(source, [list(r) for r in regions])
    for after, full, mask in zip(_coefficients(window.data, tmp_path),
                                 _coefficients(reencoded, tmp_path), masks, strict=True):
        mask = mask[:after.shape[0], :after.shape[1]]
        assert (after[mask] == full[mask]).all()


def test_merging_the_patches_of_a_crowd_takes_no_time(shared: Path):
    """The merge is one pass per round, not a restart after every merge, which was cubic
    in the faces: ~0.9 s of CPU for the 473 faces of the most crowded WIDER photo (now
    ~0.01 s)."""
    import time

    root = shared / "data" / "wider-face-val-416"
    entry = max(json.loads((root / "faces.json").read_text()), key=lambda e: len(e["bboxes"]))
    frame = jpeg_domain.parse_frame((root / entry["url"]).read_bytes())
    boxes = [Box(b["x0"], b["y0"], b["x1"], b["y1"]) for b in entry["bboxes"]]
    regions = affected_region((frame.width, frame.height), boxes, "blur")
    start = time.process_time()
    patches = jpeg_domain._patches(frame, regions)
    assert time.process_time() - start < 0.3
    assert len(boxes) > 400 and 0 < len(patches) < 100
