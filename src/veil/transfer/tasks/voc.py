"""PASCAL VOC detection in the VOCdevkit layout.

``VOCdevkit/VOC2007/`` holds ``Annotations/<id>.xml`` (``size``; per ``object``: ``name``,
``difficult``, ``bndbox`` with 1-based inclusive ``xmin ymin xmax ymax``),
``ImageSets/Main/{train,val,trainval,test}.txt`` (one image id a line) and
``JPEGImages/<id>.jpg``. The usual protocols train on ``trainval`` and test on ``test``
(VOC2007); VOC2012's test annotations are not public, so there one tests on ``val``.

Boxes become veil's convention, continuous pixel coordinates of the image as displayed:
``x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax`` (a one-pixel box is 1 wide).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil.errors import DatasetError

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
           "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
           "sofa", "train", "tvmonitor"]
_YEAR = re.compile(r"^VOC(\d{4})$")


@dataclass
class Annotation:
    """One image's objects; ``labels`` index :data:`CLASSES`."""

    width: int
    height: int
    boxes: np.ndarray  # float32 (n, 4) x0, y0, x1, y1
    labels: np.ndarray  # int64 (n,)
    difficult: np.ndarray  # bool (n,)


@dataclass
class DetectionSplit:
    name: str
    keys: list[str]  # JPEGImages/<id>.jpg
    paths: list[Path]
    annotations: list[Annotation]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class DetectionTask:
    name: str
    classes: list[str]
    splits: dict[str, DetectionSplit]
    root: Path
    source: str
    year: int | None
    ap_method: str  # "11point" (the VOC2007 devkit) or "area" (VOC2010 and later)
    primary_metric: str = "map50"
    kind: str = "detection"

    @property
    def train(self) -> DetectionSplit:
        return self.splits["train"]

    @property
    def test(self) -> DetectionSplit:
        return self.splits["test"]

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "root": str(self.root),
                "source": self.source, "classes": self.classes, "year": self.year,
                "ap_method": self.ap_method, "primary_metric": self.primary_metric,
                "splits": {n: len(s) for n, s in self.splits.items()}}


def _text(node: ET.Element, tag: str, path: Path) -> str:
    found = node.find(tag)
    if found is None or found.text is None:
        raise DatasetError(f"{path}: <{tag}> missing")
    return found.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    text = _text(node, tag, path)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{path}: <{tag}> is {text!r}, not a number") from None


def read_annotation(path: Path, classes: list[str] = CLASSES) -> Annotation:
    """One ``Annotations/<id>.xml`` file."""
    try:
        root = ET.parse(path).getroot()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ET.ParseError as exc:
        raise DatasetError(f"{path} is not valid XML: {exc}") from exc
    size = root.find("size")
    width = int(_number(size, "width", path)) if size is not None else 0
    height = int(_number(size, "height", path)) if size is not None else 0
    index = {c: i for i, c in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        if name not in index:
            raise DatasetError(f"{path}: unknown class {name!r} (VOC classes: "
                               f"{', '.join(classes)})")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{path}: an object without <bndbox>")
        x0, y0, x1, y1 = (_number(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x1 < x0 or y1 < y0:
            raise DatasetError(f"{path}: a {name} box has xmax < xmin or ymax < ymin")
        flag = obj.find("difficult")
        boxes.append([x0 - 1, y0 - 1, x1, y1])
        labels.append(index[name])
        difficult.append(flag is not None and (flag.text or "0").strip() == "1")
    return Annotation(width, height, np.asarray(boxes, np.float32).reshape(-1, 4),
                      np.asarray(labels, np.int64), np.asarray(difficult, bool))


def find_year_dir(root: Path, year: int | None) -> Path:
    """The ``VOC20xx`` folder: ``root`` itself, or one inside ``root`` or
    ``root/VOCdevkit``; ``year`` chooses when there are several."""
    if (root / "Annotations").is_dir() and (root / "ImageSets").is_dir():
        return root
    candidates = []
    for parent in (root, root / "VOCdevkit"):
        if parent.is_dir():
            candidates += [p for p in sorted(parent.iterdir())
                           if p.is_dir() and _YEAR.match(p.name)]
    if year is not None:
        candidates = [p for p in candidates if p.name == f"VOC{year}"]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        wanted = f"VOC{year}" if year else "VOC20xx"
        raise DatasetError(f"{root}: no {wanted} folder with Annotations/ and ImageSets/"
                           " (point --data at VOCdevkit or at VOCdevkit/VOC2007)")
    raise DatasetError(f"{root} holds {', '.join(p.name for p in candidates)}: pick one"
                       " with --year")


def read_split(year_dir: Path, split: str, name: str) -> DetectionSplit:
    listing = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"{listing} not found (VOC image sets: train, val, trainval, test)")
    ids = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines()
           if line.strip()]
    keys, paths, annotations = [], [], []
    for image_id in ids:
        path = year_dir / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file():
            raise DatasetError(f"{listing} lists {image_id}, but {path} is missing")
        keys.append(f"JPEGImages/{image_id}.jpg")
        paths.append(path)
        annotations.append(read_annotation(year_dir / "Annotations" / f"{image_id}.xml"))
    return DetectionSplit(name, keys, paths, annotations)


def open_voc(root: str | Path, *, year: int | None = None, train_split: str = "trainval",
             test_split: str = "test", ap_method: str | None = None, limit: int | None = None
             ) -> DetectionTask:
    """VOC detection from ``root``; the AP method follows the year's devkit unless given
    (11-point interpolation for VOC2007, the area under the curve after)."""
    root = Path(root).expanduser()
    year_dir = find_year_dir(root, year)
    match = _YEAR.match(year_dir.name)
    found_year = int(match.group(1)) if match else year
    method = ap_method or ("11point" if found_year == 2007 else "area")
    if method not in ("11point", "area"):
        raise DatasetError(f"AP method must be 11point or area, not {method!r}")
    splits = {"train": read_split(year_dir, train_split, "train"),
              "test": read_split(year_dir, test_split, "test")}
    if limit is not None:
        splits = {k: DetectionSplit(s.name, s.keys[:limit], s.paths[:limit],
                                    s.annotations[:limit]) for k, s in splits.items()}
    for name, split in splits.items():
        if not len(split):
            raise DatasetError(f"{year_dir}: the {name} image set is empty")
    return DetectionTask("voc", list(CLASSES), splits, year_dir,
                         f"{year_dir.name} {train_split} -> {test_split}", found_year, method)
