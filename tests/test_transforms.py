"""`veil.transforms.Obfuscate`: on-the-fly obfuscation for training pipelines."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from corpus import photo
from PIL import Image

from veil.boxes import Box
from veil.errors import VeilError
from veil.obfuscation import blur, overlay
from veil.transforms import Obfuscate


def test_obfuscates_by_key_and_passes_faceless_images_through() -> None:
    image = Image.fromarray(photo(120, 90, seed=3))
    boxes = [Box(30, 20, 60, 55)]
    transform = Obfuscate({"a.jpg": boxes, "b.jpg": []}, method="blur")
    assert np.array_equal(np.asarray(transform(image, "a.jpg")), np.asarray(blur(image, boxes)))
    assert transform(image, "b.jpg") is image
    assert transform(image, "unknown.jpg") is image
    array = np.asarray(image)
    out = Obfuscate({"a.jpg": boxes}, "overlay", color=(1, 2, 3))(array, "a.jpg")
    assert isinstance(out, np.ndarray)
    assert np.array_equal(out, overlay(array, boxes, color=(1, 2, 3)))


def test_imagefolder_loader_is_picklable_and_keys_relative_to_the_dataset(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    root = tmp_path / "data"
    (root / "train" / "cls").mkdir(parents=True)
    Image.fromarray(photo(64, 48, seed=1)).save(root / "train" / "cls" / "x.png")
    boxes = {"train/cls/x.png": [Box(10, 10, 40, 30)]}
    loader = pickle.loads(pickle.dumps(Obfuscate(boxes, "solid").loader(root)))
    folder = torchvision.datasets.ImageFolder(str(root / "train"), loader=loader)
    image, label = folder[0]
    assert label == 0
    assert np.asarray(image)[20, 20].tolist() == [0, 0, 0]
    with pytest.raises(VeilError, match="not inside the dataset root"):
        loader(tmp_path / "elsewhere.png")
    with pytest.raises(VeilError, match="unknown method"):
        Obfuscate(boxes, "smudge")
