"""Speed of the profiles against an earlier version of them, in one process, interleaved.

On a shared machine absolute speeds vary with the load; the ratio of two detectors timed
in turns on the same images does not (much). The earlier profiles are read from git
(``--old-commit``), run by the current code, so only the profiles differ.

    python benchmarks/profile_ratio.py --images 48 --old-commit 865a6ac
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from veil.detection.multiscale import MultiScaleDetector
from veil.detection.profiles import profile_options
from veil.images import load_image

REPO_ROOT = Path(__file__).resolve().parent.parent
NAMES = ("fast", "balanced", "thorough")


def old_profiles(commit: str) -> dict[str, dict[str, Any]]:
    """``PROFILES`` of ``veil/detection/profiles.py`` at ``commit``."""
    text = subprocess.run(["git", "show", f"{commit}:src/veil/detection/profiles.py"],
                          cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "old_profiles.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location("old_profiles", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.PROFILES  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="The first N WIDER photos.")
    parser.add_argument("--old-commit", default="865a6ac", help="The earlier profiles' commit.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds (best kept).")
    args = parser.parse_args()
    shared = Path(os.environ.get("VEIL_SHARED", REPO_ROOT.parent / "shared")).resolve()
    paths = sorted((shared / "data" / "wider-face-val-416" / "images").glob("*.jpg"))
    images = [np.asarray(load_image(p).image) for p in paths[:args.images]]
    old = old_profiles(args.old_commit)
    detectors = {}
    for name in NAMES:
        detectors[f"old {name}"] = MultiScaleDetector(**old[name])
        detectors[f"new {name}"] = MultiScaleDetector(**profile_options(name))
    for detector in detectors.values():
        detector.detect(images[:4])  # warm-up
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for key, detector in detectors.items():
            cpu, start = time.process_time(), time.perf_counter()
            for i in range(0, len(images), 16):
                detector.detect(images[i:i + 16])
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            if key not in best or wall < best[key][0]:
                best[key] = (wall, cpu)
    for key, (wall, cpu) in best.items():
        print(f"{key:15s} {len(images) / wall:6.2f} img/s  {cpu / len(images) * 1000:6.0f} "
              "CPU ms/img")
    for name in NAMES:
        (old_wall, old_cpu), (new_wall, new_cpu) = best[f"old {name}"], best[f"new {name}"]
        print(f"{name}: new / old speed {old_wall / new_wall:.2f}x (CPU {old_cpu / new_cpu:.2f}x)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
