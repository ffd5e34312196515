"""Measure CenterFace's int8 activation ranges (``veil/detection/centerface_int8_ranges.json``).

The ranges are what :mod:`veil.detection.centerface_int8` quantizes activations with.
They are measured with the fp32 network on every 8th of the 405 ILSVRC sample photos in
``../shared/data/imagenet-samples`` (51 photos, each at its own size and 1.5x): photos
none of veil's detection numbers are reported on (those are the WIDER FACE images).

    python benchmarks/centerface_calibrate.py            # rewrites the shipped file
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from veil.detection.centerface_int8 import RANGES_FILE, calibrate
from veil.images import load_image

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path("data") / "imagenet-samples" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=8, help="Take every N-th sample photo.")
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "src" / "veil" / "detection" / RANGES_FILE)
    args = parser.parse_args()
    root = Path(os.environ.get("VEIL_SHARED", REPO_ROOT.parent / "shared")).resolve()
    paths = sorted((root / SAMPLES).glob("*"))[::args.every]
    images = (np.asarray(load_image(path).image.convert("RGB")) for path in paths)
    args.out.write_bytes(calibrate(images))
    print(f"{args.out}: ranges from {len(paths)} photos")


if __name__ == "__main__":
    main()
