"""Did an output hide each face as well as its method does? Measured against the source.

The audit (:mod:`veil.stages.audit`) asks this of every face box of an obfuscated image
when the source is at hand. Two measures per box, both on luma, both relative to what
the *method itself* produces from the source (the ``reference``: veil's own output for
that source, boxes and options), so the method's own weak spots (the paper blur barely
touches a tiny face next to a large one) are not blamed on the output, and the output
is held to exactly what its method guarantees:

* **detail left**: how much of the source's fine detail (the source minus its Gaussian
  blur at ``max(3, 0.1 x the box's longer side)`` pixels: what identifies a face at that
  size) is still in the output, as the projection of the output's detail onto the
  source's: 1 for an unchanged face, about 0 for a strong blur, a fill or a mosaic.
  JPEG noise does not correlate with the source's detail, so it barely moves this. It
  fails when it exceeds the reference's by more than ``max(0.10, 2.5 px / side)``.
* **changed**: the output's squared difference from the source as a share of the
  reference's: 1 for a face changed as the method changes it, 0 for an unchanged one.
  It fails below 0.25.

Both are taken over a grid of cells in the box (3 x 3 from 24 px, 2 x 2 from 16 px,
else the whole box) and the worst cell decides, so a fill or blur that misses part of a
box fails too. A cell whose source has no detail to hide (RMS under 1 level) or which
the method leaves unchanged is not judged: nothing there can leak. These two measures
serve every method (blur, minimal-blur, mosaic, overlay, solid): each leaves its own
amount of detail and makes its own amount of change, which the reference carries.
There is no judgement without a reference: measured on WIDER, correct outputs of the
same methods leave from 0.3 to over 1 of this "detail left" in some cell (a mosaic
keeps its cells' means, a fill's edge rings after JPEG), so no method-free limit
separates them from a radius-1 blur. An output whose method is unknown is not verified.

Why not, for fills, the share of the box at the fill colour: after a JPEG round trip it
separates badly (measured on WIDER face boxes of 16-32 px: a correct overlay has as
little as 72% of its pixels within 10 luma levels of the fill, a fill missing a third of
the box up to 87%, since many faces are near the ImageNet-mean grey).

The thresholds were chosen on the 97 WIDER FACE validation photos (2,042 boxes; every
method, the outputs veil writes and planted weak blurs, partial fills and originals), and
are reported on the ILSVRC photos of ``imagenet-samples``
(``benchmarks/audit_leaks.py``, README).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CHANGE_MIN",
    "DETAIL_MARGIN",
    "OUTSIDE_MIN_PSNR",
    "RegionCheck",
    "check_faces",
    "outside_psnr",
]

Rect = tuple[float, float, float, float]

DETAIL_SCALE_FRACTION = 0.1
"""Detail is what a Gaussian of this fraction of the box's longer side removes..."""
DETAIL_SCALE_MIN = 3.0
"""...but never less than this many pixels (finer detail is JPEG noise on small faces)."""
DETAIL_MARGIN = 0.10
"""Detail left may exceed the method's own by this much (boxes or cells of 25 px and up)."""
DETAIL_MARGIN_PIXELS = 2.5
"""On smaller cells the margin is this many pixels over the cell's side (noisier there)."""
CHANGE_MIN = 0.25
"""An output must change a face at least this share as much as its method does."""
QUIET = 1.0
"""Mean squared luma (levels^2) under which a cell has nothing to hide or nothing changed."""
OUTSIDE_MIN_PSNR = 18.0
"""Outside the obfuscated regions an output must match its source at least this well (dB):
re-encoding keeps it above 22 dB even after a radius-1 blur of the whole photo, another
photo stays under 14 dB (WIDER; see the module docstring)."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class RegionCheck:
    """The verdict on one face box. ``status``: ``verified`` (hidden as the method hides
    it), ``failed``, ``quiet`` (the source has nothing there to hide, or the method
    changes nothing there: not judged) or ``outside`` (the box misses the image)."""

    box: Rect
    status: str
    detail_left: float | None = None  # worst cell
    method_detail_left: float | None = None  # the reference's, same cell
    limit: float | None = None  # the detail left allowed in that cell
    changed: float | None = None  # least cell: change made, as a share of the method's
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict[str, object]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)
        return {"box": [round(v, 1) for v in self.box], "status": self.status,
                "detail_left": rounded(self.detail_left),
                "method_detail_left": rounded(self.method_detail_left),
                "limit": rounded(self.limit), "changed": rounded(self.changed),
                "reason": self.reason}


def luma(rgb: np.ndarray) -> np.ndarray:
    """Float32 luma (BT.601 weights) of an RGB uint8 array."""
    return np.asarray(rgb, dtype=np.float32) @ _LUMA


def check_faces(source: np.ndarray, output: np.ndarray, reference: np.ndarray,
                boxes: Sequence[Rect]) -> list[RegionCheck]:
    """Judge each face box of ``output`` against ``source``, relative to ``reference``
    (the method's own output for ``source``): RGB uint8 arrays of one shape."""
    if not source.shape == output.shape == reference.shape:
        raise ValueError("source, output and reference must have the same shape")
    return [_check_box(source, output, reference, box) for box in boxes]


def _pixel_rect(box: Rect, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels a float box touches, clipped to the image."""
    x0, y0, x1, y1 = box
    return (max(0, math.floor(x0)), max(0, math.floor(y0)),
            min(width, math.ceil(x1)), min(height, math.ceil(y1)))


def _context(rect: tuple[int, int, int, int], scale: float, width: int, height: int
             ) -> tuple[int, int, int, int]:
    """``rect`` with the context a Gaussian of ``scale`` reads around it, in the image."""
    x0, y0, x1, y1 = rect
    pad = math.ceil(3 * scale) + 1
    return max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad)


def _detail(crop: np.ndarray, inner: tuple[slice, slice], scale: float) -> np.ndarray:
    """Luma ``crop`` minus its Gaussian blur at ``scale``, over ``inner`` (the box within
    the crop, which holds enough context that the box's values do not depend on it)."""
    import cv2  # OpenCV's separable float blur; loaded only by the audit

    blurred = cv2.GaussianBlur(crop, (0, 0), scale, borderType=cv2.BORDER_REFLECT)
    return (crop - blurred)[inner]


def _cells(width: int, height: int) -> list[tuple[int, int, int, int]]:
    side = min(width, height)
    grid = 3 if side >= 24 else 2 if side >= 16 else 1
    return [(width * j // grid, height * i // grid, width * (j + 1) // grid,
             height * (i + 1) // grid) for i in range(grid) for j in range(grid)]


def _check_box(source: np.ndarray, output: np.ndarray, reference: np.ndarray,
               box: Rect) -> RegionCheck:
    height, width = source.shape[:2]
    rect = _pixel_rect(box, width, height)
    x0, y0, x1, y1 = rect
    if x1 <= x0 or y1 <= y0:
        return RegionCheck(box, "outside", reason="the box lies outside the image")
    scale = max(DETAIL_SCALE_MIN, DETAIL_SCALE_FRACTION * max(x1 - x0, y1 - y0))
    X0, Y0, X1, Y1 = _context(rect, scale, width, height)
    src, out, ref = (luma(image[Y0:Y1, X0:X1]) for image in (source, output, reference))
    inner = (slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
    d_src, d_out, d_ref = (_detail(image, inner, scale) for image in (src, out, ref))
    src, out, ref = src[inner], out[inner], ref[inner]
    worst: tuple[float, float, float, float] | None = None  # excess, left, method's, limit
    least_change: float | None = None
    for cx0, cy0, cx1, cy1 in _cells(x1 - x0, y1 - y0):
        cell = (slice(cy0, cy1), slice(cx0, cx1))
        source_detail = d_src[cell]
        energy = float(np.mean(source_detail * source_detail))
        if energy > QUIET:
            left = float(np.mean(source_detail * d_out[cell])) / energy
            method_left = float(np.mean(source_detail * d_ref[cell])) / energy
            limit = method_left + max(DETAIL_MARGIN,
                                      DETAIL_MARGIN_PIXELS / max(cx1 - cx0, cy1 - cy0))
            if worst is None or left - limit > worst[0]:
                worst = (left - limit, left, method_left, limit)
        method_change = float(np.mean((ref[cell] - src[cell]) ** 2))
        if method_change > QUIET:
            change = float(np.mean((out[cell] - src[cell]) ** 2)) / method_change
            least_change = change if least_change is None else min(least_change, change)
    if worst is None and least_change is None:
        return RegionCheck(box, "quiet", reason="nothing to hide: the source has no detail "
                           "there, or the method changes nothing there")
    failed: list[str] = []
    passed: list[str] = []
    if worst is not None:
        excess, left, method_left, limit = worst
        (failed if excess > 0 else passed).append(
            f"detail left {left:.2f} {'>' if excess > 0 else '<='} {limit:.2f} "
            f"(the method leaves {method_left:.2f})")
    if least_change is not None:
        (failed if least_change < CHANGE_MIN else passed).append(
            f"changed {least_change:.2f} as much as the method "
            f"({'<' if least_change < CHANGE_MIN else '>='} {CHANGE_MIN})")
    return RegionCheck(box, "failed" if failed else "verified",
                       detail_left=None if worst is None else worst[1],
                       method_detail_left=None if worst is None else worst[2],
                       limit=None if worst is None else worst[3], changed=least_change,
                       reason="; ".join(failed or passed))


def outside_psnr(source: np.ndarray, output: np.ndarray,
                 exclude: Sequence[tuple[int, int, int, int]]) -> float | None:
    """PSNR (dB, luma) of ``output`` against ``source`` over the pixels outside the
    half-open integer rectangles ``exclude``; None when nothing is left outside them;
    99 for identical pixels."""
    height, width = source.shape[:2]
    mask = np.ones((height, width), dtype=bool)
    for x0, y0, x1, y1 in exclude:
        mask[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = False
    if not mask.any():
        return None
    difference = luma(source)[mask] - luma(output)[mask]
    mse = float(np.mean(difference * difference))
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
