"""The JPEG confound: the authors' blurred files (blur, then Pillow's default JPEG save)
and the recompression-only control, as study conditions."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from study_data import make_dataset

from veil.errors import VeilError
from veil.faces import load_faces
from veil.obfuscation.jpeg import pillow_default_jpeg
from veil.obfuscation.reference import paper_blur
from veil.study.data import (
    decode_images,
    face_boxes,
    load_condition_image,
    make_condition,
    open_study_data,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def q75(image: Image.Image) -> np.ndarray:
    """An explicit quality-75 Pillow JPEG save, read back."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def authors_file(image: Image.Image, boxes: list, folder: Path) -> np.ndarray:
    """experiments/blurring.py on one image: blur, img.save(<path>.jpg), and the read-back
    of their trainval.py (torchvision's ImageFolder: open, convert RGB)."""
    path = folder / "out.jpg"
    paper_blur(image, boxes).save(path)
    return np.asarray(Image.open(path).convert("RGB"))


def test_recompress_q75_is_the_original_through_a_quality_75_save(dataset: Path) -> None:
    data = open_study_data(dataset)
    boxes = face_boxes(load_faces(dataset / "faces.json"))
    control = make_condition("recompress_q75")
    for i in (0, 1):  # a face image and a faceless one: both are re-saved
        key, path = data.val.keys[i], data.val.paths[i]
        original = load_condition_image(path, key, boxes, make_condition("original"))
        out = np.asarray(load_condition_image(path, key, boxes, control))
        assert not np.array_equal(out, np.asarray(original)), "recompression changes pixels"
        assert np.array_equal(out, q75(original))


def test_blur_q75_is_the_papers_blur_then_the_authors_save(dataset: Path,
                                                           tmp_path: Path) -> None:
    data = open_study_data(dataset)
    boxes = face_boxes(load_faces(dataset / "faces.json"))
    authors = make_condition("blur_q75")
    for i in range(4):
        key, path = data.train.keys[i], data.train.paths[i]
        image = Image.open(path).convert("RGB")
        expected = authors_file(image, boxes[key], tmp_path)
        out = np.asarray(load_condition_image(path, key, boxes, authors))
        assert np.array_equal(out, expected), key
        assert np.array_equal(out, np.asarray(pillow_default_jpeg(paper_blur(image,
                                                                              boxes[key]))))


def test_jpeg_conditions_decode_every_image_into_the_cache(dataset: Path) -> None:
    data = open_study_data(dataset)
    boxes = face_boxes(load_faces(dataset / "faces.json"))
    condition = make_condition("recompress_q75")
    assert not condition.only_faces_change and condition.method is None
    assert make_condition("blur_q75").method == "blur"
    cached = decode_images(data.val, [1], boxes, condition, 24)
    original = decode_images(data.val, [1], boxes, make_condition("original"), 24)
    assert not np.array_equal(cached, original), "a faceless image is recompressed too"


def test_jpeg_conditions_take_no_options() -> None:
    with pytest.raises(VeilError, match="blur_q75 reproduces the authors' files exactly"):
        make_condition("blur_q75", {"sigma_fraction": 0.2})


def test_the_reports_examples_show_a_jpeg_condition_as_the_study_saw_it(dataset: Path) -> None:
    """analyze's example images (Grad-CAM, report) go through the study's own condition:
    blur_q75 is the blur and then the authors' q75 save, not an unknown method."""
    from types import SimpleNamespace

    from veil.analysis.examples import Example, obfuscated

    data = open_study_data(dataset)
    boxes = face_boxes(load_faces(dataset / "faces.json"))
    key, path = next((k, p) for k, p in zip(data.val.keys, data.val.paths, strict=True)
                     if boxes.get(k))
    image = Image.open(path).convert("RGB")
    run = SimpleNamespace(study={"method_options": {}})
    shown = obfuscated(Example(key, 0, image, boxes[key]), run, "blur_q75")  # type: ignore[arg-type]
    expected = load_condition_image(path, key, boxes, make_condition("blur_q75"))
    assert np.array_equal(np.asarray(shown), np.asarray(expected))
