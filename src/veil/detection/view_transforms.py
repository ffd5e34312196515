"""Photometric and rotated views: pixels a network sees differently, boxes mapped back.

The multi-scale detector's views are geometric (scale, stretch, mirror). Two more kinds
give the same network another look at a face it missed:

- *photometric* views change only the pixels' values: ``gamma0.5`` brightens the dark
  tones (``255 * (v / 255) ** 0.5``: faces in shadow), ``clahe`` equalises the
  luminance locally (OpenCV's CLAHE on LAB's L, clip 2, 8 x 8 tiles), ``histeq``
  equalises the luminance of the whole view (YCrCb's Y), ``grey`` drops the colour;
  boxes need no mapping;
- *rotated* views turn the (scaled) image by ``rotation`` degrees about its centre, on
  a canvas of the unrotated view's size (corners that leave it are not seen, the
  uncovered ones are black), so a tilted face stands upright for the network. A box
  found there is mapped back as the bounding box of its *inscribed ellipse* turned
  back: a face is closer to an ellipse than to a rectangle, and an annotator's upright
  box around a tilted face hugs the ellipse, not the turned rectangle's corners (the
  turned rectangle's hull would be too large by up to ~1.4x at 45 degrees, keeping the
  size unchanged too small for elongated faces).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from veil.errors import VeilError

#: The photometric transforms a view may apply (``none``: the pixels as they are).
PHOTOMETRIC = ("none", "gamma0.5", "gamma0.6", "clahe", "histeq", "grey")
#: The largest rotation (degrees, either way) a view may apply.
MAX_ROTATION = 45.0


def check_photometric(name: str) -> str:
    if name not in PHOTOMETRIC:
        raise VeilError(f"photometric must be one of {', '.join(PHOTOMETRIC)}, got {name!r}")
    return name


def check_rotation(degrees: float) -> float:
    degrees = float(degrees)
    if not math.isfinite(degrees) or abs(degrees) > MAX_ROTATION:
        raise VeilError(f"rotation must be degrees in [-{MAX_ROTATION:g}, {MAX_ROTATION:g}], "
                        f"got {degrees!r}")
    return degrees


def photometric(pixels: np.ndarray, name: str) -> np.ndarray:
    """``pixels`` (RGB uint8, ``(h, w, 3)``) under the transform ``name``."""
    if name == "none":
        return pixels
    if name.startswith("gamma"):
        table = np.round(255.0 * (np.arange(256) / 255.0) ** float(name[5:])).astype(np.uint8)
        return cv2.LUT(pixels, table)
    if name == "grey":
        return cv2.cvtColor(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if name == "clahe":
        lab = cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB)
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if name == "histeq":
        ycc = cv2.cvtColor(pixels, cv2.COLOR_RGB2YCrCb)
        ycc[..., 0] = cv2.equalizeHist(np.ascontiguousarray(ycc[..., 0]))
        return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    raise VeilError(f"unknown photometric transform {name!r}")


def rotation_matrix(width: int, height: int, degrees: float) -> np.ndarray:
    """The ``(2, 3)`` affine map turning a ``width`` x ``height`` canvas by ``degrees``
    (counter-clockwise as shown) about its centre, in OpenCV's pixel-centre convention."""
    return cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)


def unrotate_boxes(boxes: np.ndarray, width: int, height: int, degrees: float) -> np.ndarray:
    """Boxes ``(n, >= 4)`` found on the canvas turned by ``degrees``, in the unturned
    canvas: each centre turned back, each box the bounding box of its inscribed ellipse
    turned back (module doc). Columns after the 4th (scores) are kept."""
    if degrees == 0 or not len(boxes):
        return boxes
    out = boxes.astype(np.float64, copy=True)
    forward = np.vstack([rotation_matrix(width, height, degrees), [0.0, 0.0, 1.0]])
    back = np.linalg.inv(forward)[:2]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x = back[0, 0] * cx + back[0, 1] * cy + back[0, 2]
    y = back[1, 0] * cx + back[1, 1] * cy + back[1, 2]
    a, b = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    half_w = np.sqrt((a * cos) ** 2 + (b * sin) ** 2)
    half_h = np.sqrt((a * sin) ** 2 + (b * cos) ** 2)
    out[:, 0], out[:, 2] = x - half_w, x + half_w
    out[:, 1], out[:, 3] = y - half_h, y + half_h
    return out
