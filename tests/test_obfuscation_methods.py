"""Obfuscation engine: pixels vs the published whole-image blurs, types, options, regions."""

from __future__ import annotations

import inspect
import itertools
import math
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFilter

from veil.boxes import Box
from veil.errors import ImageError, VeilError
from veil.obfuscation import (
    IMAGENET_MEAN_RGB,
    METHODS,
    affected_region,
    array_stages,
    blur,
    minimal_blur,
    mosaic,
    obfuscate,
    obfuscate_canvas,
    overlay,
    parse_method_options,
    solid,
)
from veil.obfuscation import regions as rg
from veil.obfuscation.blurring import paper_plan
from veil.obfuscation.pieces import plan_pieces
from veil.obfuscation.reference import minimal_blur_reference, paper_blur
from veil.obfuscation.regions import gaussian_support
from veil.obfuscation.separable import Blur, box_radius

# ----------------------------------------------------------------------------- fixtures


def _image(rng: np.random.Generator, width: int, height: int, kind: str) -> np.ndarray:
    if kind == "noise":  # worst case for crop borders: every pixel differs from its neighbours
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "grey":
        grey = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
        return np.repeat(grey, 3, axis=2)
    if kind == "binary":  # extreme contrast
        return (rng.integers(0, 2, (height, width, 3)) * 255).astype(np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    ramp = (xs * 7 + ys * 3) % 256
    return np.stack([ramp, 255 - ramp, (xs * ys) % 256], axis=2).astype(np.uint8)


def _random_box(rng: np.random.Generator, width: int, height: int) -> Box:
    style = rng.choice(
        ["inside", "border", "corner", "outside", "huge", "tiny", "pixel", "half", "edge-in"]
    )
    if style == "tiny":  # sub-pixel
        x, y = rng.uniform(-1, width), rng.uniform(-1, height)
        w, h = rng.uniform(0.01, 0.9, 2)
    elif style == "pixel":
        x, y = float(rng.integers(-1, width)), float(rng.integers(-1, height))
        w = h = 1.0
    elif style == "huge":
        x, y = rng.uniform(-width, 0), rng.uniform(-height, 0)
        w, h = rng.uniform(1.2, 2.5) * width, rng.uniform(1.2, 2.5) * height
    elif style == "corner":
        cx = rng.choice([0.0, float(width)]) + rng.uniform(-3, 3)
        cy = rng.choice([0.0, float(height)]) + rng.uniform(-3, 3)
        w, h = rng.uniform(1, max(0.5 * width, 2)), rng.uniform(1, max(0.5 * height, 2))
        x, y = cx - w / 2, cy - h / 2
    elif style == "border":
        w, h = rng.uniform(1, max(0.4 * width, 2)), rng.uniform(1, max(0.4 * height, 2))
        side = rng.integers(4)
        x = rng.uniform(0, width) if side < 2 else (-w / 2 if side == 2 else width - w / 2)
        y = rng.uniform(0, height) if side >= 2 else (-h / 2 if side == 0 else height - h / 2)
    elif style == "outside":  # entirely outside, sometimes just past the edge
        w, h = rng.uniform(0.5, 20, 2)
        x = rng.choice([-w - rng.uniform(0, 4), width + rng.uniform(0, 4)])
        y = rng.uniform(-h, height)
    elif style == "half":  # half-integer coordinates: Pillow's truncation boundaries
        x0, y0 = rng.integers(-3, width + 2), rng.integers(-3, height + 2)
        x, y = x0 + 0.5, y0 + 0.5
        w, h = float(rng.integers(1, 12)) + 0.5, float(rng.integers(1, 12))
    elif style == "edge-in":  # straddling zero from the negative side (-1 < x < 0)
        x, y = rng.uniform(-1, 0), rng.uniform(-1, height)
        w, h = rng.uniform(0.2, 6, 2)
    else:
        w, h = rng.uniform(1, max(0.6 * width, 2)), rng.uniform(1, max(0.6 * height, 2))
        x, y = rng.uniform(-0.5, width), rng.uniform(-0.5, height)
    return Box(float(x), float(y), float(x + w), float(y + h))


SIZES = [(1, 1), (2, 3), (7, 5), (33, 17), (64, 64), (97, 131), (160, 90), (211, 150)]


def _cases(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        kind = ["noise", "grey", "binary", "smooth"][i % 4]
        image = _image(rng, width, height, kind)
        n = int(rng.choice([1, 1, 2, 3, 5, 8, 30]))
        boxes = [_random_box(rng, width, height) for _ in range(n)]
        if i % 5 == 0 and boxes:  # nested / overlapping copies
            b = boxes[0]
            boxes.append(Box(b.x0 + 0.3 * b.width, b.y0 + 0.3 * b.height,
                             b.x1 - 0.2 * b.width, b.y1 - 0.25 * b.height))
            boxes.append(Box(b.x0 + 0.5 * b.width, b.y0, b.x1 + 0.5 * b.width, b.y1))
        yield image, boxes


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


# ----------------------------------------------------------------------------- vs reference


@pytest.fixture(params=["numba", "pillow"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both blur paths: numba's passes down axis 0 (the default; numba is a dependency,
    so it must be there) and Pillow's row passes (what runs without numba)."""
    if request.param == "numba":
        assert array_stages.available(Blur.of(3.0)), "numba kernel unavailable"
    else:
        monkeypatch.setattr(array_stages, "available", lambda blur: False)
    return request.param


@pytest.mark.parametrize("seed", range(4))
def test_blur_equals_paper_whole_image_blur(seed: int, engine: str) -> None:
    """Region-only blur gives the released code's pixels: observed max |diff| is 0 (the
    design allows 1), for PIL and numpy input alike."""
    worst = 0
    for array, boxes in _cases(seed, 40):
        pil = Image.fromarray(array)
        expected = paper_blur(pil, boxes)
        got = blur(pil, boxes)
        worst = max(worst, _max_diff(got, expected))
        assert np.array_equal(blur(array, boxes), np.asarray(got))
    assert worst == 0


@pytest.mark.parametrize("force_inside", [False, True])
@pytest.mark.parametrize("seed", range(2))
def test_minimal_blur_equals_minimalblur_reference(seed: int, force_inside: bool,
                                                   engine: str) -> None:
    worst = 0
    for array, boxes in _cases(100 + seed, 40):
        pil = Image.fromarray(array)
        expected = minimal_blur_reference(pil, boxes, force_inside=force_inside)
        got = minimal_blur(pil, boxes, force_inside=force_inside)
        worst = max(worst, _max_diff(got, expected))
        assert np.array_equal(minimal_blur(array, boxes, force_inside=force_inside),
                              np.asarray(got))
    assert worst == 0


def test_blur_equals_reference_with_options_and_a_large_image(engine: str) -> None:
    rng = np.random.default_rng(7)
    array = _image(rng, 640, 480, "noise")
    boxes = [Box(10, 10, 40, 52), Box(600, 20, 700, 90), Box(300.5, 200.5, 310.5, 212.5),
             Box(305, 205, 420, 330), Box(-5, 470, 30, 500)]
    pil = Image.fromarray(array)
    assert _max_diff(blur(pil, boxes), paper_blur(pil, boxes)) == 0
    assert _max_diff(
        minimal_blur(pil, boxes, sigma_fraction=0.2, expand_fraction=0.05,
                     min_diagonal_fraction=0.1),
        minimal_blur_reference(pil, boxes, sigma_fraction=0.2, expand_fraction=0.05,
                               min_diagonal_fraction=0.1),
    ) == 0


def test_crowds_of_hundreds_of_faces_match_the_reference(engine: str) -> None:
    """Hundreds of small faces go through tiling and merging; pixels still match."""
    rng = np.random.default_rng(11)
    pil = Image.fromarray(_image(rng, 400, 300, "noise"))
    xy = rng.uniform(-5, [400, 300], (300, 2))
    sizes = rng.uniform(2, 14, (300, 1))
    boxes = [Box(float(x), float(y), float(x + s), float(y + 1.2 * s))
             for (x, y), (s,) in zip(xy, sizes, strict=True)]
    assert _max_diff(blur(pil, boxes), paper_blur(pil, boxes)) == 0
    assert _max_diff(minimal_blur(pil, boxes), minimal_blur_reference(pil, boxes)) == 0


def _covered(rects, width: int, height: int) -> np.ndarray:
    grid = np.zeros((height, width), np.int32)
    for x0, y0, x1, y1 in rects:
        grid[max(y0, 0):y1, max(x0, 0):x1] += 1
    return grid


def test_band_cover_is_disjoint_covers_the_union_and_keeps_runs_apart() -> None:
    rng = np.random.default_rng(12)
    for n in [2, 5, 9, 40, 150]:
        corners = rng.integers(0, 300, (n, 2))
        rects = [tuple(int(v) for v in r) for r in
                 np.concatenate([corners, corners + rng.integers(1, 60, (n, 2))], axis=1)]
        union = _covered(rects, 360, 360) > 0
        exact = rg.band_cover(rects, bridge=0)
        assert np.array_equal(_covered(exact, 360, 360), union.astype(np.int32))
        for bridge, joint in [(7, 0.0), (12, 400.0)]:
            cover = rg.band_cover(rects, bridge, joint)
            counts = _covered(cover, 360, 360)
            assert counts.max() == 1 and not np.any(union & (counts == 0))
            if not joint:  # extra pixels only ever fill gaps within their row
                extra = np.argwhere((counts == 1) & ~union)
                for y, x in extra[:: max(1, len(extra) // 200)]:
                    assert union[y, :x].any() and union[y, x + 1:].any()
            bands: dict[tuple[int, int], list[tuple[int, int]]] = {}
            for x0, y0, x1, y1 in cover:
                bands.setdefault((y0, y1), []).append((x0, x1))
            for runs in bands.values():
                runs.sort()
                assert all(b[0] - a[1] >= bridge for a, b in itertools.pairwise(runs))


@pytest.mark.parametrize("n", [1, 3, 12, 40, 300])
def test_pieces_hold_everything_each_stage_reads(n: int) -> None:
    """Column pieces cover every pixel the blur may change, once; row pieces cover what
    the column stage reads, once, far enough apart to be blurred in place."""
    rng = np.random.default_rng(n)
    width, height = 320, 240
    xy = rng.uniform(-20, [width, height], (n, 2))
    sizes = rng.uniform(1, 80 if n < 20 else 15, (n, 2))
    boxes = [Box(float(x), float(y), float(x + w), float(y + h))
             for (x, y), (w, h) in zip(xy, sizes, strict=True)]
    black = rg.clip_rects(paper_plan((width, height), boxes).black, width, height)
    for sigma in [0.6, 2.2, 7.5]:
        blur_ = Blur.of(sigma)
        pieces = plan_pieces(black, blur_, width, height)
        reach = blur_.reach
        affected = _covered(rg.grow_rects(black, blur_.mask_reach), width, height) > 0
        columns = _covered(pieces.columns, width, height)
        assert columns.max() == 1 and not np.any(affected & (columns == 0))
        rows = _covered(pieces.rows, width, height)
        read_by_columns = _covered(
            [(x0, y0 - reach, x1, y1 + reach) for x0, y0, x1, y1 in pieces.columns],
            width, height) > 0
        assert rows.max() == 1 and not np.any(read_by_columns & (rows == 0))
        for a, b in itertools.combinations(pieces.rows, 2):
            if a[1] < b[3] and b[1] < a[3]:  # sharing rows
                assert max(a[0], b[0]) - min(a[2], b[2]) >= blur_.gap
        x0, y0, x1, y1 = pieces.read
        for a, b, c, d in pieces.rows:
            assert x0 <= max(a - reach, 0) and min(c + reach, width) <= x1
            assert y0 <= b and d <= y1


def _dilate(black: np.ndarray, t: int) -> np.ndarray:
    """Pixels within Chebyshev distance t of a True pixel."""
    grown = black
    for axis in (0, 1):
        padded = np.pad(grown, [(t, t) if a == axis else (0, 0) for a in (0, 1)])
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * t + 1, axis=axis)
        grown = windows.any(axis=-1)
    return grown


@pytest.mark.parametrize("sigma", [0.01, 0.7, 1.5, 2.5, 4.0, 9.3])
def test_mask_reach_bounds_where_the_blurred_mask_drops(sigma: float) -> None:
    """Random black rects (crowded, at borders): the blurred mask is 255 everywhere
    farther than mask_reach from black; the bound is tight for a large black area."""
    rng = np.random.default_rng(int(sigma * 10))
    near = Blur.of(sigma).mask_reach
    assert 0 <= near <= Blur.of(sigma).reach
    for _ in range(6):
        mask = np.full((70, 90), 255, np.uint8)
        for _ in range(int(rng.integers(1, 30))):
            x, y = rng.integers(-5, 90), rng.integers(-5, 70)
            w, h = rng.integers(1, 25, 2)
            mask[max(y, 0):y + h, max(x, 0):x + w] = 0
        blurred = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(sigma)))
        assert not np.any((blurred < 255) & ~_dilate(mask == 0, near))
    worst = np.zeros((4 * near + 9, 4 * near + 9), np.uint8)
    centre = worst.shape[0] // 2
    worst[centre - near + 1:centre + near, centre - near + 1:centre + near] = 255
    if near:  # black everywhere beyond near - 1: the centre does not stay white
        worst_blurred = np.asarray(Image.fromarray(worst).filter(ImageFilter.GaussianBlur(sigma)))
        assert worst_blurred[centre, centre] < 255


def test_box_radius_reproduces_pillows_gaussian_blur() -> None:
    """Passes with the single-precision radius veil derives give GaussianBlur's bytes;
    the radius is withheld only where compilers could disagree (rare)."""
    rng = np.random.default_rng(14)
    sigmas = np.concatenate([rng.uniform(0.01, 3, 60), rng.uniform(3, 40, 60)])
    withheld = 0
    for sigma in sigmas.tolist():
        radius = box_radius(sigma)
        if radius is None:
            withheld += 1
            continue
        side = 6 * (int(radius) + 1) + 7
        image = Image.fromarray(rng.integers(0, 256, (side, side + 3, 4), np.uint8), "RGBA")
        expected = image.filter(ImageFilter.GaussianBlur(sigma))
        got = image._new(image.im.box_blur((radius, radius), 3))
        assert got.tobytes() == expected.tobytes(), sigma
    assert withheld <= 6
    assert box_radius(0.0) is None


def test_blur_is_exact_without_a_known_radius_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the radius each stage is one gaussian_blur call: slower, still exact."""
    import veil.obfuscation.separable as separable

    monkeypatch.setattr(separable, "box_radius", lambda sigma: None)
    assert Blur.of(3.0).radius is None
    for array, boxes in _cases(21, 24):
        pil = Image.fromarray(array)
        assert _max_diff(blur(pil, boxes), paper_blur(pil, boxes)) == 0
        assert _max_diff(minimal_blur(pil, boxes, force_inside=True),
                         minimal_blur_reference(pil, boxes, force_inside=True)) == 0


def test_blur_with_other_fractions_still_matches_the_papers_formula() -> None:
    """sigma/expand fractions other than 0.1 follow the same recipe (reference restated)."""
    rng = np.random.default_rng(3)
    pil = Image.fromarray(_image(rng, 120, 80, "noise"))
    boxes = [Box(20, 10, 50, 60), Box(90.5, 40.5, 100.2, 49.9)]
    mask = Image.new("L", pil.size, 255)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(mask)
    for b in boxes:
        d = b.longer_side
        draw.rectangle([b.x0 - 0.3 * d, b.y0 - 0.3 * d, b.x1 + 0.3 * d, b.y1 + 0.3 * d], fill=0)
    sigma = 0.05 * max(b.longer_side for b in boxes)
    expected = Image.composite(pil, pil.filter(ImageFilter.GaussianBlur(sigma)),
                               mask.filter(ImageFilter.GaussianBlur(sigma)))
    got = blur(pil, boxes, sigma_fraction=0.05, expand_fraction=0.3)
    assert _max_diff(got, expected) == 0


def test_pillow_fill_rects_predicts_imagedraw_including_negative_coordinates() -> None:
    """ImageDraw truncates toward zero (-0.5 paints column 0): not shift-invariant, which is
    why the engine truncates in image coordinates and only shifts integers."""
    from PIL import ImageDraw

    rng = np.random.default_rng(13)
    corners = rng.uniform(-4, 12, (300, 2))
    rects = np.concatenate([corners, corners + rng.uniform(0, 6, (300, 2))], axis=1)
    rects[::7] = np.round(rects[::7] * 2) / 2  # exact halves and integers
    for rect in rects:
        predicted = rg.pillow_fill_rect(*rect.tolist(), 10, 8)
        mask = Image.new("L", (10, 8), 255)
        ImageDraw.Draw(mask).rectangle(rect.tolist(), fill=0)
        expected = np.ones((8, 10), bool)
        for x0, y0, x1, y1 in rg.clip_rects([predicted], 10, 8):
            expected[y0:y1, x0:x1] = False
        assert np.array_equal(np.asarray(mask) == 255, expected), rect
    assert rg.pillow_fill_rect(-math.inf, -3.0, math.inf, 100.0, 10, 8) == (-1, -1, 11, 9)


def test_gaussian_support_bounds_the_reach_of_pillows_blur() -> None:
    """The support derived from Pillow's algorithm covers how far darkness spreads, from a
    single pixel and from a large black area (which spreads furthest)."""
    for sigma in [0.01, 0.3, 0.5, 1.0, 1.7, 2.5, 3.3, 5.0, 7.7, 10.0, 16.0, 32.3]:
        support = gaussian_support(sigma)
        size = 4 * support + 21
        centre = size // 2
        dot = Image.new("L", (size, size), 255)
        dot.putpixel((centre, centre), 0)
        ys, xs = np.nonzero(np.asarray(dot.filter(ImageFilter.GaussianBlur(sigma))) < 255)
        if len(xs):  # a lone dot fades out entirely under a wide blur
            assert np.abs(xs - centre).max() <= support
            assert np.abs(ys - centre).max() <= support
        half = Image.new("L", (size, size), 255)
        half.paste(0, (0, 0, centre, size))
        _, xs = np.nonzero(np.asarray(half.filter(ImageFilter.GaussianBlur(sigma))) < 255)
        assert xs.max() - (centre - 1) <= support


# ----------------------------------------------------------------------------- contract

ALL = ["blur", "minimal-blur", "overlay", "mosaic", "solid"]


@pytest.mark.parametrize("method", ALL)
def test_types_are_preserved_and_inputs_untouched(method: str) -> None:
    rng = np.random.default_rng(1)
    array = _image(rng, 50, 40, "noise")
    before = array.copy()
    boxes = [Box(5, 5, 25, 30), Box(30, 10, 48, 38)]
    out = obfuscate(array, boxes, method)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == array.shape
    assert np.array_equal(array, before)
    assert not np.array_equal(out, array)

    flipped = array[:, ::-1]  # non-contiguous views work like any array
    assert np.array_equal(obfuscate(flipped, boxes, method),
                          obfuscate(np.ascontiguousarray(flipped), boxes, method))

    pil = Image.fromarray(array)
    pil_before = pil.tobytes()
    pil_out = obfuscate(pil, boxes, method)
    assert isinstance(pil_out, Image.Image) and pil_out.mode == "RGB" and pil_out.size == pil.size
    assert pil.tobytes() == pil_before
    assert np.array_equal(np.asarray(pil_out), out)


@pytest.mark.parametrize("method", ALL)
def test_no_usable_box_returns_an_identical_copy(method: str) -> None:
    rng = np.random.default_rng(2)
    array = _image(rng, 30, 20, "noise")
    degenerate = [Box(5, 5, 5, 9), Box(9, 3, 2, 8), Box(float("nan"), 1, 4, 4),
                  Box(1, 1, float("inf"), 5)]
    for boxes in ([], degenerate):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # skipped silently: callers use usable_boxes
            out = obfuscate(array, boxes, method)
        assert out is not array and np.array_equal(out, array)
        pil = Image.fromarray(array)
        pil_out = obfuscate(pil, boxes, method)
        assert pil_out is not pil and pil_out.tobytes() == pil.tobytes()


@pytest.mark.parametrize("method", ALL)
def test_degenerate_boxes_are_ignored_among_good_ones(method: str) -> None:
    rng = np.random.default_rng(4)
    array = _image(rng, 40, 40, "noise")
    good = [Box(8, 8, 20, 22)]
    bad = [Box(30, 30, 30, 35), Box(float("nan"), 0, 1, 1)]
    assert np.array_equal(obfuscate(array, good + bad, method), obfuscate(array, good, method))


@pytest.mark.parametrize("bad", [
    Image.new("L", (4, 4)), Image.new("RGBA", (4, 4)), np.zeros((4, 4), np.uint8),
    np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8), "image.jpg",
])
def test_unsupported_images_raise_image_error(bad) -> None:
    expected = "^expected (an RGB image|a uint8 array of shape|a PIL image or a numpy array)"
    with pytest.raises(ImageError, match=expected):
        blur(bad, [Box(0, 0, 2, 2)])
    with pytest.raises(ImageError, match=expected):
        overlay(bad, [Box(0, 0, 2, 2)])


def test_invalid_numeric_options_raise_veil_error() -> None:
    array = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(VeilError, match="sigma_fraction"):
        blur(array, [Box(1, 1, 3, 3)], sigma_fraction=-0.1)
    with pytest.raises(VeilError, match="expand_fraction"):
        minimal_blur(array, [Box(1, 1, 3, 3)], expand_fraction=float("nan"))
    with pytest.raises(VeilError, match="color"):
        overlay(array, [Box(1, 1, 3, 3)], color=(0, 0, 300))
    with pytest.raises(VeilError, match="shape"):
        solid(array, [Box(1, 1, 3, 3)], shape="circle")
    with pytest.raises(VeilError, match="block"):
        mosaic(array, [Box(1, 1, 3, 3)], block=1)


# ----------------------------------------------------------------------------- fills


def test_overlay_covers_every_touched_pixel_with_the_imagenet_mean() -> None:
    assert tuple(round(v * 255) for v in (0.485, 0.456, 0.406)) == IMAGENET_MEAN_RGB
    array = np.full((12, 10, 3), 7, np.uint8)
    out = overlay(array, [Box(2.3, 3.7, 5.0, 8.2)])
    covered = np.all(out == IMAGENET_MEAN_RGB, axis=2)
    expected = np.zeros((12, 10), bool)
    expected[3:9, 2:5] = True  # x: 2.3..5.0 touches 2,3,4; y: 3.7..8.2 touches 3..8
    assert np.array_equal(covered, expected)
    assert np.all(out[~expected] == 7)


def test_overlay_expand_and_solid_colour() -> None:
    array = np.zeros((20, 20, 3), np.uint8)
    out = overlay(array, [Box(8, 8, 12, 12)], color=(1, 2, 3), expand_fraction=0.5)
    covered = np.all(out == (1, 2, 3), axis=2)
    assert covered[6:14, 6:14].all() and covered.sum() == 64
    white = np.full((6, 6, 3), 255, np.uint8)
    black = solid(white, [Box(-3, -3, 2, 2)])
    assert np.all(black[:2, :2] == 0) and black.sum() == 255 * 3 * (36 - 4)
    assert np.all(solid(white, [Box(1, 1, 3, 3)], color=(9, 9, 9))[1:3, 1:3] == 9)


def test_ellipse_covers_exactly_the_pixels_that_touch_it() -> None:
    box = Box(3.2, 4.6, 40.7, 25.1)
    out = overlay(np.zeros((32, 48, 3), np.uint8), [box], color=(255, 255, 255), shape="ellipse")
    covered = out[..., 0] == 255
    # Brute force: sample each pixel square densely (edges included).
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    rx, ry = box.width / 2, box.height / 2
    t = np.linspace(0, 1, 21)
    touched = np.zeros_like(covered)
    for y in range(32):
        for x in range(48):
            px, py = np.meshgrid(x + t, y + t)
            touched[y, x] = np.any(((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 <= 1)
    assert np.all(covered >= touched)  # never under-covers
    # Over-coverage only where the ellipse grazes a pixel between the samples.
    assert (covered & ~touched).sum() <= 4
    assert not covered[4, 3] and not covered[25, 40]  # bounding-box corners stay
    assert covered[int(cy), int(cx)]


def test_mosaic_blocks_are_aligned_to_the_box_and_hold_block_means() -> None:
    rng = np.random.default_rng(5)
    array = _image(rng, 40, 30, "noise")
    box = Box(3.5, 2.0, 23.0, 17.0)  # touches x 3..22, y 2..16
    out = mosaic(array, [box], block=4)
    for by in range(2, 17, 4):
        for bx in range(3, 23, 4):
            cell = (slice(by, min(by + 4, 17)), slice(bx, min(bx + 4, 23)))
            mean = np.floor(array[cell].reshape(-1, 3).mean(axis=0) + 0.5)
            assert np.all(out[cell] == mean.astype(np.uint8))
    outside = np.ones((30, 40), bool)
    outside[2:17, 3:23] = False
    assert np.array_equal(out[outside], array[outside])


def test_mosaic_is_independent_of_other_boxes_and_adapts_its_block() -> None:
    rng = np.random.default_rng(6)
    array = _image(rng, 80, 60, "noise")
    face, other = Box(5, 5, 45, 35), Box(55, 40, 75, 58)
    alone = mosaic(array, [face])
    both = mosaic(array, [face, other])
    assert np.array_equal(alone[5:35, 5:45], both[5:35, 5:45])
    # Adaptive: 40 px face -> 4 px blocks (10 across).
    assert np.array_equal(alone, mosaic(array, [face], block=4))
    tiny = mosaic(array, [Box(10, 10, 13, 13)])  # would be 0.3 px: floored at 2 px
    assert np.array_equal(tiny, mosaic(array, [Box(10, 10, 13, 13)], block=2))


def test_mosaic_grid_starts_outside_the_image_for_partly_outside_boxes() -> None:
    array = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    out = mosaic(array, [Box(-3, -3, 9, 9)], block=4)
    # Grid lines at -3, 1, 5: the first in-image cell is rows/cols 0..0 (clipped).
    assert np.all(out[0, 0] == array[0, 0])
    assert np.all(out[1:5, 1:5] == out[1, 1])


def test_mosaic_ellipse_keeps_the_corners() -> None:
    rng = np.random.default_rng(8)
    array = _image(rng, 40, 40, "noise")
    out = mosaic(array, [Box(0, 0, 40, 40)], shape="ellipse", block=5)
    assert np.array_equal(out[0, 0], array[0, 0])
    assert not np.array_equal(out[15:25, 15:25], array[15:25, 15:25])


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_method_with_matching_defaults() -> None:
    assert set(METHODS) == {"blur", "minimal-blur", "overlay", "mosaic", "solid"}
    for spec in METHODS.values():
        signature = inspect.signature(spec.function)
        keyword = {n: p.default for n, p in signature.parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY}
        # in_place is no option of the method (obfuscate_canvas passes it) but must be
        # accepted exactly where the registry says so
        assert (keyword.pop("in_place", None) is False) == spec.in_place, spec.name
        assert spec.defaults() == keyword, spec.name
        assert spec.help and all(p.help for p in spec.params)
        assert spec.name in spec.describe()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_obfuscate_canvas_writes_blurs_into_the_canvas_with_the_same_pixels(
        method: str, engine: str) -> None:
    """The JPEG domain's scratch canvas: a blur writes into it instead of copying the
    whole picture, a fill returns a new image; either way the pixels of ``obfuscate``,
    with faces that overlap, touch the border and lie outside the picture."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    boxes = [Box(10, 8, 40, 44), Box(30, 30, 70, 60), Box(100, -5, 130, 20),
             Box(200, 200, 220, 230)]
    expected = np.asarray(obfuscate(image, boxes, method))
    canvas = image.copy()
    out = obfuscate_canvas(canvas, boxes, method)
    assert np.array_equal(np.asarray(out), expected)
    assert (out is canvas) == METHODS[method].in_place
    if not METHODS[method].in_place:
        assert np.array_equal(np.asarray(canvas), np.asarray(image))  # left as it was
    untouched = image.copy()
    obfuscate(untouched, boxes, method)  # the plain call never writes into its input
    assert np.array_equal(np.asarray(untouched), np.asarray(image))
    mapped = image.copy()
    mapped.readonly = 1  # as Pillow marks an image mapped over someone's buffer
    out = obfuscate_canvas(mapped, boxes, method)
    assert out is not mapped and np.array_equal(np.asarray(out), expected)
    assert np.array_equal(np.asarray(mapped), np.asarray(image))


def test_parse_method_options_converts_values() -> None:
    assert parse_method_options("overlay", ["color=0,0,0", "shape=ellipse"]) == {
        "color": (0, 0, 0), "shape": "ellipse"}
    assert parse_method_options("overlay", ["color=#ff8000"]) == {"color": (255, 128, 0)}
    assert parse_method_options("mosaic", ["block=12"]) == {"block": 12}
    assert parse_method_options("mosaic", ["block=auto"]) == {"block": None}
    assert parse_method_options("minimal-blur", ["force_inside=true", "sigma_fraction=0.2"]) \
        == {"force_inside": True, "sigma_fraction": 0.2}
    assert parse_method_options("minimal-blur", ["force-inside=no"]) == {"force_inside": False}
    assert parse_method_options("blur", []) == {}


@pytest.mark.parametrize(("method", "pairs", "message"), [
    ("smudge", [], "unknown obfuscation method 'smudge'"),
    ("blur", ["radius=3"], "no option 'radius'.*sigma_fraction"),
    ("blur", ["sigma_fraction"], "key=value"),
    ("blur", ["sigma_fraction=wide"], "sigma_fraction='wide': expected a number"),
    ("overlay", ["color=1,2"], "expected R,G,B"),
    ("overlay", ["color=1,2,256"], "0-255"),
    ("overlay", ["shape=circle"], "rectangle, ellipse"),
    ("mosaic", ["block=big"], "integer or 'auto'"),
    ("minimal-blur", ["force_inside=maybe"], "true or false"),
    ("solid", ["shape=ellipse", "shape=rectangle"], "given twice"),
])
def test_parse_method_options_errors(method: str, pairs: list[str], message: str) -> None:
    with pytest.raises(VeilError, match=message):
        parse_method_options(method, pairs)


def test_obfuscate_dispatches_and_rejects_unknown_options() -> None:
    rng = np.random.default_rng(9)
    array = _image(rng, 30, 30, "noise")
    boxes = [Box(5, 5, 20, 20)]
    assert np.array_equal(obfuscate(array, boxes), blur(array, boxes))
    assert np.array_equal(obfuscate(array, boxes, "solid", color=(1, 1, 1)),
                          solid(array, boxes, color=(1, 1, 1)))
    with pytest.raises(VeilError, match="no option 'radius'"):
        obfuscate(array, boxes, "blur", radius=2)
    with pytest.raises(VeilError, match="unknown obfuscation method"):
        affected_region((30, 30), boxes, "smudge")


# ----------------------------------------------------------------------------- regions

REGION_OPTIONS = {
    "blur": [{}, {"sigma_fraction": 0.25, "expand_fraction": 0.3}],
    "minimal-blur": [{}, {"force_inside": True, "min_diagonal_fraction": 0.2}],
    "overlay": [{}, {"shape": "ellipse", "expand_fraction": 0.2}],
    "mosaic": [{}, {"block": 3, "shape": "ellipse"}],
    "solid": [{}],
}


@pytest.mark.parametrize("method", ALL)
def test_output_equals_input_outside_the_affected_region(method: str) -> None:
    changed_somewhere = False
    for options in REGION_OPTIONS[method]:
        for array, boxes in _cases(200, 24):
            height, width = array.shape[:2]
            rects = affected_region((width, height), boxes, method, **options)
            inside = np.zeros((height, width), bool)
            for x0, y0, x1, y1 in rects:
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
                inside[y0:y1, x0:x1] = True
            out = obfuscate(array, boxes, method, **options)
            differs = np.any(out != array, axis=2)
            assert not np.any(differs & ~inside)
            changed_somewhere |= bool(differs.any())
    assert changed_somewhere


def test_affected_region_is_tight_for_a_lone_blurred_face() -> None:
    """Not just 'the whole image': one small face affects a small, face-centred rectangle."""
    rects = affected_region((400, 300), [Box(100, 100, 120, 124)], "blur")
    assert len(rects) == 1
    x0, y0, x1, y1 = rects[0]
    near = Blur.of(0.1 * 24).mask_reach  # the blurred mask's reach, within the support
    assert 0 < near <= gaussian_support(0.1 * 24)
    assert (x0, y0, x1, y1) == (97 - near, 97 - near, 123 + near, 127 + near)
    wide = affected_region((400, 300), [Box(100, 100, 150, 160)], "blur")[0]
    assert wide[0] == 94 - Blur.of(6.0).mask_reach > 94 - gaussian_support(6.0)
    assert affected_region((400, 300), [Box(500, 500, 510, 510)], "blur") == []
    assert affected_region((400, 300), [], "overlay") == []
    assert math.prod((x1 - x0, y1 - y0)) < 0.05 * 400 * 300
