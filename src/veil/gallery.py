"""The demo gallery: real photographs that ship inside installed packages.

``veil demo`` must run offline on a fresh machine, so it draws its images from
scikit-image, matplotlib and scikit-learn's own data folders instead of the network.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class SamplePhoto:
    name: str        # file name in the gallery
    package: str     # the package that ships it
    relative: str    # path inside that package
    caption: str


SAMPLES = (
    SamplePhoto("astronaut.png", "skimage", "data/astronaut.png", "Eileen Collins (NASA)"),
    SamplePhoto("grace_hopper.jpg", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                "Grace Hopper (U.S. Navy)"),
    SamplePhoto("camera.png", "skimage", "data/camera.png", "Cameraman (greyscale)"),
    SamplePhoto("coffee.png", "skimage", "data/coffee.png", "A cup of coffee"),
    SamplePhoto("chelsea.png", "skimage", "data/chelsea.png", "Chelsea the cat"),
    SamplePhoto("rocket.jpg", "skimage", "data/rocket.jpg", "A rocket launch"),
    SamplePhoto("motorcycle.png", "skimage", "data/motorcycle_left.png", "A motorcycle"),
    SamplePhoto("china.jpg", "sklearn", "datasets/images/china.jpg", "A temple in China"),
    SamplePhoto("flower.jpg", "sklearn", "datasets/images/flower.jpg", "A flower"),
)
LFW_MONTAGE = "lfw_montage.png"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _lfw_montage(target: Path) -> bool:
    """A 'class photo' of the 100 face crops of scikit-image's LFW subset: many small faces."""
    root = _package_dir("skimage")
    path = root / "data" / "lfw_subset.npy" if root else None
    if path is None or not path.is_file():
        return False
    faces = np.load(path)[:100]  # the first 100 of the subset are faces
    tiles = [
        Image.fromarray((np.clip(face, 0, 1) * 255).astype(np.uint8)).resize((56, 56))
        for face in faces
    ]
    montage = Image.new("L", (10 * 64, 10 * 64), 200)
    for i, tile in enumerate(tiles):
        montage.paste(tile, ((i % 10) * 64 + 4, (i // 10) * 64 + 4))
    montage.convert("RGB").save(target)
    return True


def write_gallery(directory: Path) -> tuple[list[str], list[str]]:
    """Copy every available sample into ``directory``; returns (written names, missing notes)."""
    directory.mkdir(parents=True, exist_ok=True)
    written, missing = [], []
    for sample in SAMPLES:
        root = _package_dir(sample.package)
        source = root / sample.relative if root else None
        if source is None or not source.is_file():
            missing.append(f"{sample.name} (not shipped by the installed {sample.package})")
            continue
        shutil.copyfile(source, directory / sample.name)
        written.append(sample.name)
    if _lfw_montage(directory / LFW_MONTAGE):
        written.append(LFW_MONTAGE)
    else:
        missing.append(f"{LFW_MONTAGE} (scikit-image's lfw_subset.npy not found)")
    return written, missing


def caption(name: str) -> str:
    for sample in SAMPLES:
        if sample.name == name:
            return sample.caption
    if name == LFW_MONTAGE:
        return "100 face crops from LFW (scikit-image), as a class photo"
    return name
