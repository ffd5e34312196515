"""Photometric and rotated views: their pixels, boxes mapped back, the detector taking them,
and the cross-validation code (benchmarks/detect_cv.py) replaying them as the detector runs
them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import pytest
from PIL import Image

from veil.boxes import Box
from veil.detection import register_detector
from veil.detection.multiscale import MultiScaleDetector
from veil.detection.view_transforms import photometric, rotation_matrix, unrotate_boxes
from veil.errors import VeilError


def test_photometric_views_change_the_pixels_as_named():
    rng = np.random.default_rng(0)
    dim = (rng.uniform(40, 90, (64, 64, 3))).astype(np.uint8)  # a dark, flat photo
    assert photometric(dim, "none") is dim
    bright = photometric(dim, "gamma0.5")
    np.testing.assert_allclose(bright.astype(float), 255 * (dim / 255) ** 0.5, atol=0.51)
    assert (photometric(dim, "gamma0.6") <= bright).all()  # a milder brightening
    grey = photometric(dim, "grey")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    for name in ("clahe", "histeq"):  # equalising the luminance spreads it out
        out = photometric(dim, name)
        assert out.shape == dim.shape and out.dtype == np.uint8
        luma = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        assert luma.std() > 1.5 * cv2.cvtColor(dim, cv2.COLOR_RGB2GRAY).std()
    with pytest.raises(VeilError, match="unknown photometric"):
        photometric(dim, "sepia")


def test_a_box_turned_back_is_its_ellipse_bounding_box_about_the_turned_back_centre():
    width, height, degrees = 300, 200, 30.0
    point = np.array([200.0, 60.0])  # a face centre in the unturned canvas
    turned = rotation_matrix(width, height, degrees) @ np.array([*point, 1.0])
    a, b = 10.0, 20.0  # half width, half height of the box found upright
    found = np.array([[turned[0] - a, turned[1] - b, turned[0] + a, turned[1] + b, 0.7]])
    [back] = unrotate_boxes(found, width, height, degrees)
    np.testing.assert_allclose((back[:2] + back[2:4]) / 2, point, atol=1e-9)
    cos, sin = math.cos(math.radians(30)), math.sin(math.radians(30))
    np.testing.assert_allclose((back[2:4] - back[:2]) / 2, [
        math.hypot(a * cos, b * sin), math.hypot(a * sin, b * cos)])
    assert back[4] == 0.7
    assert unrotate_boxes(found, width, height, 0.0) is found


class WhitePixels:
    """A stand-in detector: the bounding box of the white pixels, whatever the view."""

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        out = []
        for image in images:
            ys, xs = np.nonzero(image.min(axis=2) >= 128)
            out.append([Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, score=0.9)]
                       if len(xs) else [])
        return out


def test_turned_scaled_mirrored_and_photometric_views_find_a_disc_where_it_is():
    register_detector("test-white", lambda **_: WhitePixels())
    image = np.zeros((240, 320, 3), np.uint8)
    cv2.circle(image, (230, 70), 25, (255, 255, 255), -1)  # off the centre: the turn moves it
    views = [(1.0, 1.0, False, "none", 30.0), (1.5, 1.0, True, "none", -25.0),
             (2.0, 1.0, False, "gamma0.5", 0.0), (1.0, 1.0, True, "grey", 20.0)]
    for view in views:
        detector = MultiScaleDetector(base="test-white", views=[view], threshold=0.5)
        [[box]] = detector.detect([image])
        np.testing.assert_allclose(box.as_xyxy(), (205, 45, 256, 96), atol=2.0, err_msg=view)
    several = MultiScaleDetector(base="test-white", views=views, threshold=0.5)
    assert len(several.detect([image])[0]) == 1  # one face, one fused box
    assert several.options["views"] == [list(v) for v in views]


def test_a_view_renders_its_transform_after_scaling_and_mirroring():
    from veil.detection.multiscale import plan_views, render_view

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    planned = plan_views(128, 96, (1.0,), flip=False, tile_size=2048, tile_overlap=256,
                         max_side=4096, passes=[(1.5, 1.0, True), (1.5, 1.0, True, "grey", 0.0),
                                                (1.0, 1.0, False, "none", 20.0)])
    plain, grey, turned = (render_view(image, view, {}) for view in planned)
    np.testing.assert_array_equal(grey, photometric(plain, "grey"))
    assert plain.shape == grey.shape == (144, 192, 3)
    assert turned.shape == image.shape and not np.array_equal(turned, image)
    assert (turned[0, 0] == 0).all()  # a corner the turned image leaves uncovered: black


def test_views_are_checked():
    for bad, match in [((1, 1, False, "sepia", 0.0), "photometric"),
                       ((1, 1, False, "none", 60.0), "rotation"),
                       ((1, 1, False, "none"), "a view is"),
                       ((1, 1, False, 0.5, 0.0), "photometric transform is a name")]:
        with pytest.raises(VeilError, match=match):
            MultiScaleDetector(views=[bad])


def test_view_names_round_trip_and_turns_are_offered_with_their_opposites(detect_cv):
    cv = detect_cv
    specs = [cv.ViewSpec("centerface", 1.5, flip=True, photometric="clahe"),
             cv.ViewSpec("centerface", 2.0, rotation=-20.0), cv.ViewSpec("centerface", 1.0)]
    assert [s.name for s in specs] == ["s1.5_a1_f1_pclahe", "s2_a1_f0_r-20", "s1_a1_f0"]
    assert [cv.parse_view(s.name) for s in specs] == specs
    assert specs[0].view == (1.5, 1.0, True, "clahe", 0.0) and specs[2].view == (1, 1, False)
    names = ["s1_a1_f0", "s1_a1_f0_r20", "s1_a1_f0_r-20", "s2_a1_f0_r30", "s1_a1_f0_pgrey",
             "s1_a1.5_f0", "s1_a0.6666667_f0"]
    assert cv.candidate_groups(names, symmetric=True) == [
        ("s1_a1_f0",), ("s1_a1_f0_r20", "s1_a1_f0_r-20"), ("s1_a1_f0_pgrey",),
        ("s1_a1.5_f0", "s1_a0.6666667_f0")]  # s2 at 30 degrees has no opposite: not offered
    # Rendering a transform costs: a view's cost counts it.
    plain, clahe = (cv.view_cost(cv.ViewSpec("centerface", 1.0, photometric=p), 0.2,
                                 {"centerface": cv.COSTS["int8"]}) for p in ("none", "clahe"))
    assert clahe == pytest.approx(plain + 0.2 * cv.TRANSFORM_PER_MP["clahe"])


def test_cross_validation_replays_new_views_as_the_detector_runs_them(wider, detect_cv):
    """The boxes benchmarks/detect_cv.py scores for photometric and rotated views (cached
    per view, merged later) are the boxes the detector gives on the same photos."""
    from veil.detection import create_detector
    from veil.interchange import read_faces

    cv = detect_cv
    faces = read_faces(wider / "faces.json")
    keys = sorted(faces)[10:13]
    images = [np.asarray(Image.open(wider / key).convert("RGB")) for key in keys]
    names = ("s1_a1_f0", "s1_a1_f1_pclahe", "s1.5_a1_f0_pgamma0.5", "s1_a1_f0_r20",
             "s1_a1_f0_r-20")
    base = create_detector("centerface", threshold=cv.CANDIDATE_THRESHOLD, threads=2)
    cache = cv.ViewCache(keys)
    for name in names:
        cache.boxes[name] = cv.view_boxes(base.detect, cv.parse_view(name), images)
        cache.cost[name] = 0.0
    # The new views find boxes of their own (not a copy of the plain view's).
    assert not np.array_equal(cache.boxes["s1_a1_f0_r20"][0], cache.boxes["s1_a1_f0"][0])
    sizes = {k: (im.shape[1], im.shape[0]) for k, im in zip(keys, images, strict=True)}
    settings = cv.Settings(names, "rms", 0.45, None, (0.92, 1.14), 0.25, 0.0)
    detector = MultiScaleDetector(views=[cv.parse_view(n).view for n in names],
                                  threshold=0.25, candidate_threshold=0.05, fusion_iou=0.45,
                                  fusion_score="rms", box_scale=(0.92, 1.14), threads=2)
    for i, (key, boxes) in enumerate(zip(keys, detector.detect(images), strict=True)):
        replayed = settings.merge(cache, i, *sizes[key])
        got = np.array([[*b.as_xyxy(), b.score] for b in boxes]).reshape(-1, 5)
        assert len(got) > 0
        np.testing.assert_allclose(got, replayed, atol=1e-3)


def test_box_placements_of_the_cross_validation_keep_every_threshold_a_prefix(detect_cv):
    """detect_cv's size-dependent placement moves and scales each box as its bin says, and
    the boxes it keeps at a threshold are those of a lower threshold that score above it
    (what fitting the threshold from one low-threshold pass relies on)."""
    cv = detect_cv
    fit = cv.BoxFit((20.0, 40.0), ((0.0, 0.1, 1.0, 2.0), (0.0, 0.0, 1.0, 1.0),
                                  (-0.1, 0.0, 0.5, 1.0)))
    boxes = np.array([[10, 10, 20, 20, 0.9],  # 10 px tall: down 1 px, twice as tall
                      [50, 50, 80, 80, 0.8],  # 30 px: unchanged
                      [100, 100, 150, 150, 0.7],  # 50 px: left 5 px, half as wide
                      [195, 10, 205, 20, 0.6]])  # clipped at the image's right edge
    np.testing.assert_allclose(fit.apply(boxes, 200, 200), [
        [10, 6, 20, 26, 0.9], [50, 50, 80, 80, 0.8], [107.5, 100, 132.5, 150, 0.7],
        [195, 6, 200, 26, 0.6]])
    rng = np.random.default_rng(2)
    views = []
    for _ in range(3):
        centres = rng.uniform(20, 380, (30, 2))
        sides = rng.uniform(8, 60, (30, 1))
        views.append(np.hstack([centres - sides / 2, centres + sides / 2,
                                rng.uniform(0.05, 1, (30, 1))]))
    cache = cv.ViewCache(["a"], {f"s{i + 1}_a1_f0": [v] for i, v in enumerate(views)})
    problem = cv.Problem(cache, {"a": []}, None, {"a": (400, 400)})
    settings = cv.Settings(tuple(cache.boxes), "rms", 0.55, 0.3, (1.0, 1.0), 0.4, 0.0,
                           box_fit=fit)
    low = problem.curve_boxes(settings, [0])["a"]
    np.testing.assert_allclose(settings.merge(cache, 0, 400, 400), low[low[:, 4] >= 0.4])
