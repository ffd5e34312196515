"""COCO JSON: ``images``, one ``face`` category, ``annotations`` with ``bbox [x, y, w, h]``.

COCO stores width and height, and ``x + w`` can miss ``x1`` in the last bit, so veil
also writes each box's exact corners as ``xyxy`` (COCO tools ignore unknown keys) and
prefers them on reading when they agree with ``bbox``. That keeps the round trip exact.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from veil import __version__
from veil.boxes import Box
from veil.errors import FacesFileError
from veil.interchange.common import (
    FacesFile,
    atomic_text,
    box_row,
    load_json,
    number,
    optional_number,
)
from veil.store.records import ImageRecord

FACE_CATEGORY = {"id": 1, "name": "face", "supercategory": "face"}
_ANNOTATION_FIELDS = {"id", "image_id", "category_id", "bbox", "area", "score", "source", "xyxy"}
_IMAGE_FIELDS = {"id", "file_name", "width", "height"}


def read_coco(path: str | os.PathLike[str], document: Any = None) -> FacesFile:
    """Parse a COCO file; images without face annotations are kept as faceless."""
    path = Path(path)
    data = load_json(path) if document is None else document
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FacesFileError(f"{path}: expected a COCO object with an \"images\" list")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise FacesFileError(f"{path}: \"annotations\" must be a list")
    face_ids = _face_categories(data.get("categories"), path)
    out = FacesFile(format="coco", path=path)

    keys: dict[Any, str] = {}
    for i, image in enumerate(data["images"]):
        key, record, extra = _parse_image(image, f"images[{i}]", path)
        if image["id"] in keys:
            raise FacesFileError(f"{path}: images[{i}] ({key}): duplicate image id {image['id']!r}")
        if key in out.images:
            out.warnings.append(f"{key}: listed more than once in images; its boxes were merged")
        keys[image["id"]] = key
        out.images[key] = record
        if extra:
            out.image_extras.setdefault(key, {}).update(extra)

    boxes: dict[str, list[tuple[Box, dict[str, Any]]]] = {key: [] for key in keys.values()}
    other = 0
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise FacesFileError(f"{path}: {where}: expected an object")
        if "id" in ann:
            where += f" (id {ann['id']})"
        if face_ids is not None and ann.get("category_id") not in face_ids:
            other += 1
            continue
        if ann.get("image_id") not in keys:
            raise FacesFileError(f"{path}: {where}: unknown image_id {ann.get('image_id')!r}")
        key = keys[ann["image_id"]]
        boxes[key].append(_parse_annotation(ann, f"{where} of {key}", path))
    for key, found in boxes.items():
        out.add(key, found, out.image_extras.pop(key, None))
    if other:
        out.warnings.append(f"{other} annotations of other categories than face were ignored")
    return out


def _face_categories(categories: Any, path: Path) -> set[Any] | None:
    """Category ids that mean "face"; None = no categories given, every annotation counts."""
    if categories is None:
        return None
    if not isinstance(categories, list) or not all(isinstance(c, dict) for c in categories):
        raise FacesFileError(f"{path}: \"categories\" must be a list of objects")
    faces = {c.get("id") for c in categories if str(c.get("name", "")).lower() == "face"}
    if faces:
        return faces
    if len(categories) == 1:
        return {categories[0].get("id")}
    names = ", ".join(repr(c.get("name")) for c in categories[:5])
    raise FacesFileError(f"{path}: no category named \"face\" among {names}")


def _parse_image(image: Any, where: str, path: Path) -> tuple[str, ImageRecord, dict[str, Any]]:
    if not isinstance(image, dict):
        raise FacesFileError(f"{path}: {where}: expected an object")
    key = image.get("file_name")
    if not isinstance(key, str) or not key:
        raise FacesFileError(f"{path}: {where}: missing or empty \"file_name\"")
    if "id" not in image or isinstance(image["id"], list | dict):
        raise FacesFileError(f"{path}: {where} ({key}): missing or invalid \"id\"")
    size = []
    for name in ("width", "height"):
        value = image.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise FacesFileError(f"{path}: {where} ({key}): \"{name}\" must be an integer")
        size.append(value)
    extra = {k: v for k, v in image.items() if k not in _IMAGE_FIELDS}
    return key, ImageRecord(key, width=size[0], height=size[1]), extra


def _parse_annotation(ann: dict[str, Any], where: str, path: Path) -> tuple[Box, dict[str, Any]]:
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise FacesFileError(f"{path}: {where}: \"bbox\" must be [x, y, width, height]")
    x, y, w, h = (number(v, f"{where} bbox", path) for v in bbox)
    corners = [x, y, x + w, y + h]
    exact = ann.get("xyxy")
    if isinstance(exact, list) and len(exact) == 4 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in exact
    ):
        exact = [float(v) for v in exact]
        if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(exact, corners,
                                                                              strict=True)):
            corners = exact
    score = optional_number(ann.get("score"), f"{where} score", path)
    source = ann.get("source")
    if source is not None and not isinstance(source, str):
        raise FacesFileError(f"{path}: {where}: \"source\" must be a string")
    extra = {k: v for k, v in ann.items() if k not in _ANNOTATION_FIELDS}
    if not extra.get("iscrowd"):
        extra.pop("iscrowd", None)
    x0, y0, x1, y1 = corners
    return Box(x0, y0, x1, y1, score=score, source=source), extra


def write_coco(
    faces: Mapping[str, Sequence[Box]],
    path: str | os.PathLike[str],
    *,
    images: Mapping[str, ImageRecord] | None = None,
) -> int:
    """Write COCO JSON (image ids 1.. in key order); returns the number of images."""
    images = images or {}
    doc: dict[str, Any] = {
        "info": {"description": "face annotations exported by veil", "version": __version__},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [FACE_CATEGORY],
    }
    next_box = 1
    for image_id, key in enumerate(sorted(faces), start=1):
        record = images.get(key)
        doc["images"].append({
            "id": image_id, "file_name": key,
            "width": record.width if record else None,
            "height": record.height if record else None,
        })
        for box in faces[key]:
            try:
                c = box_row(box)
            except FacesFileError as exc:
                raise FacesFileError(f"{key}: {exc}") from exc
            w, h = c["x1"] - c["x0"], c["y1"] - c["y0"]
            ann: dict[str, Any] = {
                "id": next_box, "image_id": image_id, "category_id": FACE_CATEGORY["id"],
                "bbox": [c["x0"], c["y0"], w, h], "area": max(w, 0.0) * max(h, 0.0),
                "iscrowd": 0, "xyxy": [c["x0"], c["y0"], c["x1"], c["y1"]],
            }
            if box.score is not None:
                ann["score"] = float(box.score)
            if box.source is not None:
                ann["source"] = box.source
            doc["annotations"].append(ann)
            next_box += 1
    with atomic_text(path) as f:
        json.dump(doc, f, allow_nan=False)
        f.write("\n")
    return len(doc["images"])
