"""Validation images with faces, before and after obfuscation, for Grad-CAM and the report.

study.json names the dataset (``data``) and the faces (``faces``): the same source
`veil study` obfuscated with, so the pictures show exactly what the models saw.
``faces`` may be a path or URL, a dict with ``source`` (or ``path``/``url``), or a
description such as ``"faces file X"`` / ``"face store X"``; relative paths are tried
against the working directory, then the run folder and its parent. Per-method options
come from ``study["method_options"][method]`` when the study recorded them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from veil.analysis.run import StudyRun
from veil.datasets import ImageReader, is_huggingface, open_dataset
from veil.errors import VeilError
from veil.faces import FacesSnapshot, load_faces, match_faces
from veil.images import load_image

_DESCRIPTION_PREFIXES = ("faces file ", "face store ")


@dataclass
class Example:
    key: str
    label: int
    original: Image.Image
    boxes: list[Any]


def _candidates(spec: str, run: StudyRun) -> list[str]:
    if "://" in spec:
        return [spec]
    path = Path(spec)
    if path.is_absolute():
        return [spec]
    return [spec, str(run.root / spec), str(run.root.parent / spec)]


def faces_source(run: StudyRun, override: str | None = None) -> str:
    """The loadable faces spec of the run (path or URL); ``override`` wins (a face store
    whose recorded URL hides its password, or a file that moved)."""
    if override:
        return override
    faces = run.study.get("faces")
    if isinstance(faces, dict):
        faces = faces.get("source") or faces.get("path") or faces.get("url")
    if not isinstance(faces, str) or not faces:
        raise VeilError("study.json does not name the faces the study used")
    for prefix in _DESCRIPTION_PREFIXES:
        faces = faces.removeprefix(prefix)
    for candidate in _candidates(faces, run):
        if "://" in candidate or Path(candidate).exists():
            return candidate
    raise VeilError(f"the study's faces ({faces}) are not found")


def data_root(run: StudyRun) -> Path:
    data = run.study.get("data")
    if isinstance(data, dict):
        data = data.get("root") or data.get("path")
    if not isinstance(data, str) or not data:
        raise VeilError("study.json does not name the dataset")
    for candidate in _candidates(data, run):
        if Path(candidate).is_dir() or Path(candidate).is_file():
            path = Path(candidate)
            return path.parent if path.is_file() else path
    raise VeilError(f"the study's dataset ({data}) is not found")


def _shard_reader(root: Path) -> ImageReader | None:
    """The reader of a Hugging Face dataset's rows (its images are no files), else None."""
    if not is_huggingface(root):
        return None
    try:
        return open_dataset(root, layout="huggingface").reader()
    except VeilError:
        return None


def method_options(run: StudyRun, method: str) -> dict[str, Any]:
    """The options the study obfuscated with (JSON lists back to tuples, e.g. colours)."""
    options = (run.study.get("method_options") or {}).get(method) or {}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def pick_examples(run: StudyRun, count: int, faces: str | None = None
                  ) -> tuple[list[Example], FacesSnapshot]:
    """Up to ``count`` validation images with faces, the largest face areas first (the
    effect of obfuscation is easiest to see there), each class at most once while others
    remain."""
    frame = run.faces()
    if frame is None:
        raise VeilError("the run has no faces.parquet")
    val = frame[(frame["split"] == "val") & (frame["n_faces"] > 0)]
    if val.empty:
        raise VeilError("no validation image of the run has faces")
    val = val.sort_values(["face_area", "key"], ascending=[False, True], kind="stable")
    first = val.drop_duplicates("label")
    ordered = list(first["key"]) + [k for k in val["key"] if k not in set(first["key"])]
    root = data_root(run)
    # the study matched face records to its images with the one resolver every stage
    # uses (the authors' val/<file> keys meet an ImageFolder val/<wnid>/<file>): so here
    snapshot = match_faces(load_faces(faces_source(run, faces)), list(frame["key"]),
                           splits=["val"], min_share=0.0).snapshot
    labels = dict(zip(val["key"], val["label"], strict=True))
    reader = _shard_reader(root)
    examples = []
    for key in ordered:
        boxes = snapshot.boxes.get(key)
        if not boxes:
            continue
        source: Path | bytes = root / key
        if reader is not None:
            try:
                source = reader.read(key)
            except OSError:
                continue
        elif not (root / key).is_file():
            continue
        examples.append(Example(key, int(labels[key]), load_image(source).image, list(boxes)))
        if len(examples) == count:
            break
    if not examples:
        raise VeilError(f"none of the validation images with faces was found under {root} "
                        "with boxes in the faces source")
    return examples, snapshot


def obfuscated(example: Example, run: StudyRun, method: str) -> Image.Image:
    """The example as the study's ``method`` condition showed it (``blur_q75`` and
    ``recompress_q75`` included: their JPEG re-save is part of the condition)."""
    from veil.study.data import condition_image, make_condition

    condition = make_condition(method, method_options(run, method))
    return condition_image(example.original, example.boxes, condition)
