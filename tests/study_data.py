"""A tiny study dataset, written on demand, for the tests of ``veil study`` (one process
and torchrun alike).

Usage::

    from study_data import CLASSES, make_dataset

    root = make_dataset(tmp_path / "data")   # train/ and val/ ImageFolders + faces.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("n001", "n002", "n003")


def make_dataset(root: Path, n_train: int = 8, n_val: int = 5, seed: int = 0) -> Path:
    """A 3-class ImageFolder of noisy, colour-coded, non-square PNGs, and a faces file
    (the paper's JSON) with one face on every third image."""
    rng = np.random.default_rng(seed)
    faces = []
    for split, count in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                height, width = (40, 52) if i % 2 else (52, 40)
                pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
                pixels[..., c] += 160
                name = f"{wnid}_{i}.png"
                Image.fromarray(pixels).save(folder / name)
                boxes = [{"x0": 6.0, "y0": 8.0, "x1": 22.0, "y1": 26.0}] if i % 3 == 0 else []
                faces.append({"url": f"{split}/{wnid}/{name}", "bboxes": boxes})
    (root / "faces.json").write_text(json.dumps(faces), encoding="utf-8")
    return root
