"""Are the categories with more faces hurt more? (The paper: yes.)

For each method, a category's drop (AP and top-1, averaged over archs, from the
per-category table) against its share of images with faces and its mean face area:
Spearman's rho and Pearson's r with two-sided p-values over the categories where both
values are defined.

The drop is measured on the *val* split, so the face statistics are taken from val too
(``split`` = "val": the faces the evaluated images actually had). The train split's
statistics (what the models were trained on; the paper's Fig. 2 uses train) are shown
beside them (``split`` = "train"). Every p-value is Benjamini-Hochberg-adjusted across all
the correlations of the table (methods x drops x face variables x splits), since they are
read together.
"""

from __future__ import annotations

from typing import Any

from veil.analysis.stats import benjamini_hochberg, correlation
from veil.analysis.tables import fmt, fmt_p, markdown_table

DROPS = ("ap_drop", "top1_drop")
FACE_VARIABLES = ("share_with_faces", "mean_face_area")
#: split -> suffix of the face-statistics columns (faces.face_stats)
SPLITS = {"val": "_val", "train": ""}


def joined(per_category_frame: Any, face_per_class: Any) -> Any:
    """The ``all`` rows of a per-category table with each class's face statistics (train
    columns as named in FACE_VARIABLES, val columns with a ``_val`` suffix)."""
    rows = per_category_frame[per_category_frame["arch"] == "all"]
    columns = [f"{v}{suffix}" for suffix in SPLITS.values() for v in FACE_VARIABLES
               if f"{v}{suffix}" in face_per_class.columns]
    drop = [c for c in columns if c in rows.columns]
    return rows.drop(columns=drop).merge(face_per_class[["class_index", *columns]],
                                         on="class_index", how="left")


def correlations(method: str, data: Any) -> list[dict[str, Any]]:
    """One record per (split, drop, face variable) present in ``data``, val first."""
    out = []
    for split, suffix in SPLITS.items():
        for drop in DROPS:
            if drop not in data.columns:
                continue
            for variable in FACE_VARIABLES:
                column = f"{variable}{suffix}"
                if column not in data.columns:
                    continue
                result = correlation(data[column].to_numpy(float),
                                     data[drop].to_numpy(float))
                out.append({"method": method, "drop": drop, "face_split": split,
                            "face_variable": variable, **result.to_dict()})
    return out


def adjust(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add Benjamini-Hochberg-adjusted p-values across every record (in place)."""
    for key in ("spearman_p", "pearson_p"):
        adjusted = benjamini_hochberg([r[key] for r in records])
        for r, p in zip(records, adjusted, strict=True):
            r[f"{key}_bh"] = float(p)
    return records


CAPTION = (
    "Per category: the drop (original - obfuscated, averaged over archs), measured on the "
    "val split, against the share of the category's images with faces and the mean face "
    "area of those images. Face split \"val\": the same images the drop is measured on "
    "(the primary reading); \"train\": the images the models were trained on (the paper's "
    "Fig. 2 statistics). p: Benjamini-Hochberg-adjusted across all correlations in this "
    "table. Positive rho/r: categories with more faces lose more.")


def correlation_markdown(records: list[dict[str, Any]]) -> str:
    parts = ["# Category drop (val) vs faces\n", CAPTION + "\n"]
    rows = [[r["method"], r["drop"] + " (val)", r.get("face_split", "train"),
             r["face_variable"], r["n"], fmt(r["spearman"]),
             fmt_p(r.get("spearman_p_bh", r["spearman_p"])), fmt(r["pearson"]),
             fmt_p(r.get("pearson_p_bh", r["pearson_p"]))]
            for r in records]
    parts.append(markdown_table(
        ["method", "drop", "face split", "vs", "categories", "Spearman rho", "p (BH)",
         "Pearson r", "p (BH)"], rows, align="llllrrrrr"))
    return "\n".join(parts)
