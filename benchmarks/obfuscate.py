"""Obfuscation benchmark: veil's region-only blurs vs the published whole-image code.

Engine level (this part): on the WIDER FACE val sample (97 images, 416 x 416, real face
boxes) decode every image once, then time, on one pinned core, the paper's whole-image
Pillow blur (:func:`veil.obfuscation.reference.paper_blur`) against
:func:`veil.obfuscation.blur` on the same decoded images and boxes, and the same for
minimalBlur. Prints images/s of each, the speed ratio and the largest pixel difference.

Timing: each repeat times every image with both functions back to back; an image's time
is its fastest repeat, which filters out the noise of a shared machine. Decoding and
encoding are excluded on both sides.

    python benchmarks/obfuscate.py --repeat 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from veil.boxes import Box, usable_boxes
from veil.obfuscation import affected_region, blur, minimal_blur
from veil.obfuscation.reference import minimal_blur_reference, paper_blur

REPO_ROOT = Path(__file__).resolve().parent.parent
WIDER = Path("data") / "wider-face-val-416"

Method = Callable[[Image.Image, Sequence[Box]], Image.Image]


@dataclass
class Sample:
    key: str
    image: Image.Image
    boxes: list[Box]


@dataclass
class PairResult:
    name: str
    reference_s: list[float]  # best time per image
    engine_s: list[float]
    max_diff: int

    @property
    def images(self) -> int:
        return len(self.reference_s)

    @property
    def ratio(self) -> float:
        return sum(self.reference_s) / sum(self.engine_s)

    def report(self) -> str:
        return (
            f"{self.name:<13} reference {self.images / sum(self.reference_s):7.1f} img/s   "
            f"veil {self.images / sum(self.engine_s):7.1f} img/s   "
            f"ratio {self.ratio:5.2f}x   max |diff| {self.max_diff}"
        )

    def by_share(self, shares: Sequence[float], edges: Sequence[float] = (0.1, 0.3)) -> str:
        """Speed ratio for images grouped by how much of them the faces affect."""
        bounds = [0.0, *edges, 1.01]
        parts = []
        for low, high in itertools.pairwise(bounds):
            pick = [i for i, share in enumerate(shares) if low <= share < high]
            if pick:
                ratio = sum(self.reference_s[i] for i in pick) / sum(
                    self.engine_s[i] for i in pick)
                parts.append(f"{low:.0%}-{min(high, 1):.0%}: {ratio:.2f}x ({len(pick)} img)")
        return "    by affected share: " + ", ".join(parts)


def shared_root() -> Path:
    """VEIL_SHARED, or ../shared next to the repository (the project's convention)."""
    return Path(os.environ.get("VEIL_SHARED", REPO_ROOT.parent / "shared")).resolve()


def pin_to_one_core() -> None:
    """Per-core numbers: keep this process (and Pillow's threads) on one CPU."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def load_wider(root: Path) -> list[Sample]:
    """Decode the WIDER sample once; faces.json keys are ``images/<file>.jpg``."""
    folder = root / WIDER
    entries = json.loads((folder / "faces.json").read_text())
    samples = []
    for entry in entries:
        with Image.open(folder / entry["url"]) as opened:
            image = opened.convert("RGB")
        image.load()
        boxes = [Box(b["x0"], b["y0"], b["x1"], b["y1"]) for b in entry["bboxes"]]
        samples.append(Sample(entry["url"], image, usable_boxes(boxes)[0]))
    return samples


def _timed(function: Method, sample: Sample) -> tuple[float, Image.Image]:
    start = time.perf_counter()
    result = function(sample.image, sample.boxes)
    return time.perf_counter() - start, result


def compare(
    name: str, reference: Method, engine: Method, samples: list[Sample], repeat: int
) -> PairResult:
    """Time both functions image by image (interleaved), keep each image's best time."""
    best_ref = [float("inf")] * len(samples)
    best_eng = [float("inf")] * len(samples)
    max_diff = 0
    for round_ in range(repeat):
        for i, sample in enumerate(samples):
            t_ref, expected = _timed(reference, sample)
            t_eng, actual = _timed(engine, sample)
            best_ref[i] = min(best_ref[i], t_ref)
            best_eng[i] = min(best_eng[i], t_eng)
            if round_ == 0:
                diff = np.abs(np.asarray(expected, np.int16) - np.asarray(actual, np.int16))
                max_diff = max(max_diff, int(diff.max()))
    return PairResult(name, best_ref, best_eng, max_diff)


def affected_shares(samples: list[Sample], method: str) -> list[float]:
    """Per image, the fraction of pixels the method may change: the floor of region-only
    work, which bounds the speed-up on that image."""
    shares = []
    for sample in samples:
        width, height = sample.image.size
        covered = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in affected_region((width, height), sample.boxes, method):
            covered[y0:y1, x0:x1] = True
        shares.append(float(covered.mean()))
    return shares


def engine_section(samples: list[Sample], repeat: int) -> list[PairResult]:
    """Region-only engine vs whole-image references on decoded images."""
    return [
        compare("blur", paper_blur, blur, samples, repeat),
        compare("minimal-blur", minimal_blur_reference, minimal_blur, samples, repeat),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5,
                        help="timing rounds; each image keeps its fastest (default 5)")
    parser.add_argument("--shared", type=Path, default=None,
                        help="shared data root (default: $VEIL_SHARED or ../shared)")
    args = parser.parse_args(argv)
    pin_to_one_core()
    root = args.shared.resolve() if args.shared else shared_root()
    samples = load_wider(root)
    faces = sum(len(s.boxes) for s in samples)
    print(f"WIDER val sample: {len(samples)} images, {faces} faces, "
          f"{args.repeat} rounds, 1 core (pid {os.getpid()})")
    results = engine_section(samples, args.repeat)
    for result, method in zip(results, ("blur", "minimal-blur"), strict=True):
        shares = affected_shares(samples, method)
        print(f"{result.report()}   affected pixels {100 * np.mean(shares):.0f}%")
        print(result.by_share(shares))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
