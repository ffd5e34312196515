"""Are the categories with more faces hurt more? (The paper: yes.)

For each method, a category's drop (AP and top-1, averaged over archs, from the
per-category table) against its share of images with faces and its mean face area
(from the face statistics): Spearman's rho and Pearson's r with two-sided p-values over
the categories where both values are defined.
"""

from __future__ import annotations

from typing import Any

from veil.analysis.stats import correlation
from veil.analysis.tables import fmt, fmt_p, markdown_table

DROPS = ("ap_drop", "top1_drop")
FACE_VARIABLES = ("share_with_faces", "mean_face_area")


def joined(per_category_frame: Any, face_per_class: Any) -> Any:
    """The ``all`` rows of a per-category table with each class's face statistics."""
    rows = per_category_frame[per_category_frame["arch"] == "all"]
    faces = face_per_class[["class_index", *FACE_VARIABLES]]
    return rows.merge(faces, on="class_index", how="left")


def correlations(method: str, data: Any) -> list[dict[str, Any]]:
    """One record per (drop, face variable) pair present in ``data``."""
    out = []
    for drop in DROPS:
        if drop not in data.columns:
            continue
        for variable in FACE_VARIABLES:
            result = correlation(data[variable].to_numpy(float), data[drop].to_numpy(float))
            out.append({"method": method, "drop": drop, "face_variable": variable,
                        **result.to_dict()})
    return out


def correlation_markdown(records: list[dict[str, Any]]) -> str:
    parts = ["# Category drop vs faces\n",
             "Per category: the drop (original - obfuscated, averaged over archs) against "
             "the share of its training images with faces and the mean face area of those "
             "images. Positive rho/r: categories with more faces lose more.\n"]
    rows = [[r["method"], r["drop"], r["face_variable"], r["n"], fmt(r["spearman"]),
             fmt_p(r["spearman_p"]), fmt(r["pearson"]), fmt_p(r["pearson_p"])]
            for r in records]
    parts.append(markdown_table(
        ["method", "drop", "vs", "categories", "Spearman rho", "p", "Pearson r", "p"], rows,
        align="lllrrrrr"))
    return "\n".join(parts)
