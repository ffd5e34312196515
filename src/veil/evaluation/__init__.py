"""Measuring detectors against ground truth (DESIGN.md's metric definitions)."""

from veil.evaluation.faces import (
    HEIGHT_BINS,
    FaceEvaluation,
    FaceMetrics,
    OperatingCurve,
    UncoveredImage,
    average_precision,
    covered_fraction,
    evaluate_faces,
    invalid_flags,
    operating_curve,
    union_area,
)

__all__ = [
    "HEIGHT_BINS",
    "FaceEvaluation",
    "FaceMetrics",
    "OperatingCurve",
    "UncoveredImage",
    "average_precision",
    "covered_fraction",
    "evaluate_faces",
    "invalid_flags",
    "operating_curve",
    "union_area",
]
