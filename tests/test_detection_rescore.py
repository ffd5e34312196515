"""The fitted rescoring of fused boxes: its features, the detector applying it, and the
cross-validation code (benchmarks/detect_cv.py) scoring cached views the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from veil.boxes import Box
from veil.detection import register_detector
from veil.detection.fusion import fuse_votes, weighted_box_fusion
from veil.detection.multiscale import MultiScaleDetector, merge_views
from veil.detection.rescore import FEATURES, Rescorer, box_features
from veil.errors import VeilError


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_fuse_votes_are_what_weighted_box_fusion_scores():
    a = np.array([[0, 0, 10, 10, 0.8], [40, 40, 50, 50, 0.3]])
    b = np.array([[1, 0, 11, 10, 0.4]])
    boxes, votes = fuse_votes([a, b], 0.55)
    assert boxes.shape == (2, 4) and votes.tolist() == [[0.8, 0.4], [0.3, 0.0]]
    fused = weighted_box_fusion([a, b], 0.55, score="rms")
    np.testing.assert_allclose(fused[:, 4], [math.sqrt((0.64 + 0.16) / 2), math.sqrt(0.09 / 2)])


def test_box_features_follow_their_definitions():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 8, 8]], dtype=float)
    votes = np.array([[0.2, 0.8, 0.0], [0.0, 0.0, 0.5]])
    x = box_features(boxes, votes, [1.0, 2.0, 4.0], width=100, height=80)
    assert x.shape == (2, len(FEATURES))
    col = {name: x[:, i] for i, name in enumerate(FEATURES)}
    rms = math.sqrt((0.04 + 0.64) / 3)
    np.testing.assert_allclose(col["logit_rms"][0], math.log(rms / (1 - rms)))
    np.testing.assert_allclose(col["logit_max"], [math.log(4), 0.0], atol=1e-12)
    np.testing.assert_allclose(col["mean"], [1 / 3, 0.5 / 3])
    np.testing.assert_allclose(col["seen"], [2 / 3, 1 / 3])
    np.testing.assert_allclose(col["log_height"], [math.log(40 / 80), math.log(8 / 80)])
    np.testing.assert_allclose(col["log_scale"], [1.0, 2.0])  # the best view's scale, log2
    np.testing.assert_allclose(col["log_aspect"], [math.log(0.5), 0.0])
    assert box_features(np.empty((0, 4)), np.empty((0, 3)), [1, 2, 4], 10, 10).shape == (
        0, len(FEATURES))
    with pytest.raises(VeilError, match="unknown rescoring features"):
        box_features(boxes, votes, [1, 2, 4], 100, 80, ["area"])
    with pytest.raises(VeilError, match="votes of shape"):
        box_features(boxes, votes, [1, 2], 100, 80)


def test_rescorer_checks_its_options_and_round_trips():
    model = Rescorer(("logit_max", "seen"), (1.5, -2.0), 0.25, floor=0.1)
    assert Rescorer.from_options(model.options()) == model
    with pytest.raises(VeilError, match="one coefficient per feature"):
        Rescorer(("seen",), (1.0, 2.0), 0.0)
    with pytest.raises(VeilError, match="unknown rescoring features"):
        Rescorer(("area",), (1.0,), 0.0)
    with pytest.raises(VeilError, match="rescore needs"):
        Rescorer.from_options({"features": ["seen"]})


class TwoFaces:
    """A stand-in base detector: a face every view sees at 0.9, and a blip only views
    at least twice the image's size report (at 0.6)."""

    name = "two-faces"

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        out = []
        for image in images:
            w = image.shape[1]
            s = w / 200  # the view's scale (the test image is 200 px wide)
            found = [Box(50 * s, 50 * s, 90 * s, 90 * s, score=0.9)]
            if s >= 2:
                found.append(Box(140 * s, 20 * s, 150 * s, 30 * s, score=0.6))
            out.append(found)
        return out


def test_the_detector_scores_boxes_by_its_rescoring_and_thresholds_that():
    register_detector("test-two-faces", lambda **_: TwoFaces())
    image = np.zeros((200, 200, 3), np.uint8)
    model = Rescorer(("logit_max", "seen", "log_scale"), (1.0, 2.0, -3.0), -1.0, floor=0.1)
    views = ((1.0, 1.0, False), (2.0, 1.0, False))
    plain = MultiScaleDetector(base="test-two-faces", views=views, threshold=0.0,
                               fusion_score="rms")
    rescored = MultiScaleDetector(base="test-two-faces", views=views, threshold=0.0,
                                  fusion_score="rms", rescore=model.options())
    [before], [after] = plain.detect([image]), rescored.detect([image])
    assert [round(b.score or 0, 4) for b in before] == [0.9, round(0.6 / math.sqrt(2), 4)]
    face = _sigmoid(math.log(9) + 2.0 * 1.0 - 3.0 * 0.0 - 1.0)  # both views, best at 1x
    blip = _sigmoid(math.log(1.5) + 2.0 * 0.5 - 3.0 * 1.0 - 1.0)  # the 2x view only
    assert [b.score for b in after] == pytest.approx([face, blip])
    assert [b.iou(a) for a, b in zip(before, after, strict=True)] == pytest.approx([1, 1])
    assert rescored.options["rescore"] == model.options()
    strict = MultiScaleDetector(base="test-two-faces", views=views, threshold=0.1,
                                fusion_score="rms", rescore=model.options())
    [kept] = strict.detect([image])  # the blip's new score (0.05) is under 0.1
    assert len(kept) == 1 and kept[0].score == pytest.approx(face)
    with pytest.raises(VeilError, match="use fusion 'wbf'"):
        MultiScaleDetector(base="test-two-faces", fusion="nms", rescore=model.options())


def test_merge_views_drops_boxes_under_the_floor_before_rescoring():
    views = [np.array([[0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.12]]), np.empty((0, 5))]
    model = Rescorer(("seen",), (0.0,), 5.0, floor=0.1)  # every box scores sigmoid(5)
    kept = merge_views(views, 100, 100, fusion_score="rms", rescore=model,
                       view_scales=[1.0, 2.0])
    assert len(kept) == 1 and kept[0, 4] == pytest.approx(_sigmoid(5.0))  # 0.12 / sqrt 2
    with pytest.raises(VeilError, match="one scale per view"):
        merge_views(views, 100, 100, rescore=model, view_scales=[1.0])


def test_cross_validation_scores_cached_views_as_the_detector_does(wider, detect_cv):
    """The rescoring as benchmarks/detect_cv.py fits and measures it (from cached view
    outputs) gives the boxes the detector gives on the same photos."""
    from veil.detection import create_detector
    from veil.interchange import read_faces

    cv = detect_cv
    faces = read_faces(wider / "faces.json")
    keys = sorted(faces)[5:8]
    images = [np.asarray(Image.open(wider / key).convert("RGB")) for key in keys]
    names = ("s1_a1_f0", "s1.5_a1.5_f1", "s1.5_a0.6666667_f1", "s2_a1_f0")
    base = create_detector("centerface", threshold=cv.CANDIDATE_THRESHOLD, threads=2)
    cache = cv.ViewCache(keys)
    for name in names:
        cache.boxes[name] = cv.view_boxes(base.detect, cv.parse_view(name), images)
        cache.cost[name] = 0.0
    sizes = {k: (im.shape[1], im.shape[0]) for k, im in zip(keys, images, strict=True)}
    problem = cv.Problem(cache, {k: faces[k] for k in keys}, None, sizes)
    settings = cv.Settings(names, "rms", 0.45, None, (0.92, 1.14), 0.0, 0.0)
    x, y = cv.rescore_data(problem, settings, range(len(keys)))
    assert len(x) > 20 and 0 < y.sum() < len(y)  # faces and false positives to learn from
    model = cv.fit_rescorer(x, y, cv.RESCORE_FEATURES)
    assert model is not None and model.floor == cv.SEARCH_FLOOR
    settings = cv.dataclasses.replace(settings, rescore=model, threshold=0.3)
    views = [(s.scale, s.aspect, s.flip) for s in map(cv.parse_view, names)]
    detector = MultiScaleDetector(views=views, threshold=0.3, candidate_threshold=0.05,
                                  fusion_iou=0.45, fusion_score="rms", box_scale=(0.92, 1.14),
                                  rescore=model.options(), threads=2)
    found = detector.detect(images)
    curve = problem.curve_boxes(settings, range(len(keys)))
    for i, (key, boxes) in enumerate(zip(keys, found, strict=True)):
        replayed = settings.merge(cache, i, *sizes[key])
        got = np.array([[*b.as_xyxy(), b.score] for b in boxes]).reshape(-1, 5)
        assert len(got) > 0
        np.testing.assert_allclose(got, replayed, atol=1e-3)
        # the tuning's prefix at 0.3 is the same boxes (curve_boxes: every threshold's)
        prefix = curve[key][curve[key][:, 4] >= 0.3]
        np.testing.assert_allclose(prefix, replayed, atol=1e-6)
