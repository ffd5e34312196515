"""The face box record shared by every stage.

Coordinates are floats in pixels of the image *as displayed* (EXIF orientation
applied), ``x0, y0`` top-left and ``x1, y1`` bottom-right, exclusive of nothing:
they are the paper's numbers, kept exactly as given so that round-trips are lossless.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    score: float | None = None
    source: str | None = None

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def longer_side(self) -> float:
        """The paper's 'diagonal': max(width, height)."""
        return max(self.width, self.height)

    @property
    def diagonal(self) -> float:
        """The true diagonal, used by minimal-blur."""
        return math.hypot(self.width, self.height)

    @property
    def is_finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.x0, self.y0, self.x1, self.y1))

    @property
    def is_degenerate(self) -> bool:
        """True for boxes the paper's code skips: x0 >= x1 or y0 >= y1 (or non-finite)."""
        return not self.is_finite or self.x0 >= self.x1 or self.y0 >= self.y1

    def clipped(self, width: int, height: int) -> Box:
        """The part of the box inside a ``width`` x ``height`` image."""
        return replace(
            self,
            x0=min(max(self.x0, 0.0), float(width)),
            y0=min(max(self.y0, 0.0), float(height)),
            x1=min(max(self.x1, 0.0), float(width)),
            y1=min(max(self.y1, 0.0), float(height)),
        )

    def expanded(self, margin: float) -> Box:
        return replace(
            self, x0=self.x0 - margin, y0=self.y0 - margin, x1=self.x1 + margin,
            y1=self.y1 + margin,
        )

    def iou(self, other: Box) -> float:
        ix = min(self.x1, other.x1) - max(self.x0, other.x0)
        iy = min(self.y1, other.y1) - max(self.y0, other.y0)
        if ix <= 0 or iy <= 0:
            return 0.0
        inter = ix * iy
        return inter / (self.area + other.area - inter)

    def as_xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def to_dict(self) -> dict[str, float | str | None]:
        out: dict[str, float | str | None] = {
            "x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1,
        }
        if self.score is not None:
            out["score"] = self.score
        if self.source is not None:
            out["source"] = self.source
        return out


def usable_boxes(boxes: Iterable[Box]) -> tuple[list[Box], list[str]]:
    """Split boxes into the usable ones and a warning for each skipped one.

    Degenerate boxes (x0 >= x1, y0 >= y1, NaN or infinite coordinates) are skipped,
    as the paper's code does, with a warning that says which and why. Boxes that
    reach outside the image are kept: every obfuscation clips to the image itself.
    """
    kept: list[Box] = []
    warnings: list[str] = []
    for box in boxes:
        if not box.is_finite:
            warnings.append(f"skipped box with a non-finite coordinate: {box.as_xyxy()}")
        elif box.is_degenerate:
            warnings.append(f"skipped degenerate box (x0 >= x1 or y0 >= y1): {box.as_xyxy()}")
        else:
            kept.append(box)
    return kept, warnings
