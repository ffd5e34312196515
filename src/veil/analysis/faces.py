"""Face statistics of the dataset (faces.parquet): the paper's Fig. 2 and Table 2.

- Share of images with faces per category (Fig. 2 left) and the mean face area: the mean,
  over the category's images *with* faces, of the union of its face boxes as a fraction
  of the image.
- Faces per image over the images with faces (Fig. 2 right).
- Supercategories (Table 2) for ImageNet wnids, through the shipped WordNet hierarchy:
  the paper's five (clothing, wheeled vehicle, musical instrument, bird, insect); a class
  counts for each supercategory among its ancestors.

The statistics use the train split, as the paper's do; a dataset without a ``train``
split uses every image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.analysis.tables import fmt, markdown_table

#: faces-per-image histogram bins: 1..MAX_BIN-1, then "MAX_BIN+"
MAX_BIN = 10


@dataclass
class FaceStats:
    split: str  # "train" or "all"
    images: int
    with_faces: int
    faces: int
    per_class: Any  # DataFrame: class_index, wnid, name, images, with_faces, share_with_faces,
    #                 mean_faces, mean_face_area, share_with_faces_val, mean_face_area_val
    histogram: list[tuple[str, int]]  # ("1", count), ..., ("10+", count)
    supercategories: Any | None = None  # DataFrame or None
    notes: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.with_faces / self.images if self.images else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "split": self.split, "images": self.images, "with_faces": self.with_faces,
            "share_with_faces": self.share, "faces": self.faces,
            "faces_per_image_histogram": dict(self.histogram),
            "categories_over_50pct": int((self.per_class["share_with_faces"] >= 0.5).sum()),
            "categories_over_25pct": int((self.per_class["share_with_faces"] >= 0.25).sum()),
            "supercategories": (None if self.supercategories is None
                                else self.supercategories.to_dict(orient="records")),
            "notes": self.notes,
        }


def face_stats(frame: Any, classes: list[dict[str, Any]]) -> FaceStats:
    """Statistics of faces.parquet (as a DataFrame) for the run's classes."""
    import pandas as pd

    names = [str(c.get("name") or c.get("wnid") or i) for i, c in enumerate(classes)]
    wnids = [c.get("wnid") or "" for c in classes]
    n = len(classes)
    split = "train" if (frame["split"] == "train").any() else "all"
    used = frame[frame["split"] == "train"] if split == "train" else frame
    used = used[(used["label"] >= 0) & (used["label"] < n)]
    has = used["n_faces"] > 0
    grouped = used.assign(has=has, area=used["face_area"].where(has))
    per = grouped.groupby("label").agg(images=("key", "size"), with_faces=("has", "sum"),
                                       faces=("n_faces", "sum"), area=("area", "mean"))
    per = per.reindex(range(n))
    per_class = pd.DataFrame({
        "class_index": range(n), "wnid": wnids, "name": names,
        "images": per["images"].fillna(0).astype(int).to_numpy(),
        "with_faces": per["with_faces"].fillna(0).astype(int).to_numpy(),
    })
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class["share_with_faces"] = np.where(
            per_class["images"] > 0, per_class["with_faces"] / per_class["images"].clip(1),
            np.nan)
        per_class["mean_faces"] = np.where(per_class["with_faces"] > 0,
                                           per["faces"].fillna(0).to_numpy()
                                           / per_class["with_faces"].clip(1), np.nan)
    per_class["mean_face_area"] = per["area"].to_numpy()
    val = frame[frame["split"] == "val"]
    if len(val):
        val = val.assign(has=val["n_faces"] > 0)
        val = val.assign(area=val["face_area"].where(val["has"]))
        grouped_val = val.groupby("label")
        per_class["share_with_faces_val"] = (grouped_val["has"].mean().reindex(range(n))
                                             .to_numpy())
        per_class["mean_face_area_val"] = (grouped_val["area"].mean().reindex(range(n))
                                           .to_numpy())
    counts = used.loc[has, "n_faces"].astype(int).to_numpy()
    histogram = [(str(k), int((counts == k).sum())) for k in range(1, MAX_BIN)]
    histogram.append((f"{MAX_BIN}+", int((counts >= MAX_BIN).sum())))
    stats = FaceStats(split, len(used), int(has.sum()), int(used["n_faces"].sum()), per_class,
                      histogram)
    stats.supercategories = supercategory_table(per_class, stats.notes)
    return stats


def supercategory_table(per_class: Any, notes: list[str]) -> Any | None:
    """The paper's Table 2 for the classes that are ImageNet wnids, else None."""
    import pandas as pd

    from veil.wordnet import load_hierarchy

    hierarchy = load_hierarchy()
    known = per_class[per_class["wnid"].isin(hierarchy.classes)]
    if known.empty:
        notes.append("no class is an ILSVRC-2012 wnid: supercategories (Table 2) skipped")
        return None
    if len(known) < len(per_class):
        notes.append(f"{len(per_class) - len(known)} classes are not ILSVRC-2012 wnids and "
                     "are left out of the supercategories")
    records = []
    for synset in hierarchy.supercategories:
        members = known[[synset in hierarchy.supercategories_of(w) for w in known["wnid"]]]
        images = int(members["images"].sum())
        records.append({
            "supercategory": synset, "categories": len(members), "images": images,
            "with_faces_pct": 100.0 * members["with_faces"].sum() / images if images
            else float("nan"),
        })
    return pd.DataFrame.from_records(records)


def faces_markdown(stats: FaceStats, k: int = 15) -> str:
    parts = ["# Faces in the dataset\n",
             f"Split: {stats.split}. {stats.images} images, {stats.with_faces} with faces "
             f"({fmt(100 * stats.share, 1)}%), {stats.faces} faces.\n"]
    if stats.supercategories is not None:
        parts.append("## Supercategories (the paper's Table 2)\n")
        parts.append(markdown_table(
            ["supercategory", "#categories", "#images", "with faces (%)"],
            [[r.supercategory, r.categories, r.images, fmt(r.with_faces_pct, 2)]
             for r in stats.supercategories.itertuples()]))
    parts.append("## Faces per image (images with faces; Fig. 2 right)\n")
    parts.append(markdown_table(["faces", "images"], stats.histogram))
    top = stats.per_class.sort_values("share_with_faces", ascending=False, kind="stable")
    parts.append(f"## Categories with the most images with faces (top {k}; Fig. 2 left)\n")
    parts.append(markdown_table(
        ["category", "images", "with faces", "share (%)", "mean face area (%)"],
        [[r.name, r.images, r.with_faces, fmt(100 * r.share_with_faces, 1),
          fmt(100 * r.mean_face_area, 2)] for r in top.head(k).itertuples()]))
    for note in stats.notes:
        parts.append(f"Note: {note}\n")
    return "\n".join(parts)
