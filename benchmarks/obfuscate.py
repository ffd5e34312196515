"""Obfuscation benchmark: veil's region-only blurs vs the published whole-image code.

Engine level (this part): on the WIDER FACE val sample (97 images, 416 x 416, real face
boxes) decode every image once, then time, on one pinned core, the paper's whole-image
Pillow blur (:func:`veil.obfuscation.reference.paper_blur`) against
:func:`veil.obfuscation.blur` on the same decoded images and boxes, and the same for
minimalBlur. Prints images/s of each, the speed ratio and the largest pixel difference.

The same comparison runs on the Imagenette val images in which veil's CenterFace finds
a face (ImageNet-like photos: one or two small faces, the paper's case).

Timing: each repeat times every image with both functions back to back; an image's time
is its fastest repeat, which filters out the noise of a shared machine. Decoding and
encoding are excluded on both sides.

Dataset level: a mirrored dataset in which 17% of the images have faces (the WIDER
sample, real boxes) and 83% have none (Imagenette val), ILSVRC's share. The reference is
the paper's script (decode, whole-image blur of every annotated image, save with
Pillow's defaults); veil is ``veil obfuscate`` (faceless images copied byte for byte,
faces re-encoded with the source's JPEG tables, a ledger, each shard's files fsynced). Both
on one core, from the same files (in the page cache), writing every output into a fresh
folder; a run's outputs are set aside, not deleted, until the benchmark ends
(:data:`SPENT`: on ext4 without a journal, this VM's root file system, a file created
within about a minute of many deletions costs 0.3-0.7 ms instead of ~0.02 ms, because
the inode allocator checks each recently freed inode in turn, ``recently_deleted`` in
``fs/ext4/ialloc.c``, seen with ``perf``; deleting one run's outputs before the next
charged that run ~0.5 ms per output file). The runs take turns for ``--repeat`` rounds
and each keeps its fastest; before each run the page cache is flushed (outside the
timing), so neither side pays for writing back the other's files. The paper script's
loop is timed as it stands: it never syncs, veil's time includes its syncs. The
all-cores run includes starting the process pool (forkserver workers importing veil:
about 1.4 s on a loaded 2-core machine), which a dataset of a few hundred images cannot
win back; it is no per-core number. The last run obfuscates with ``overlay`` (a fill: no
blur work at all), the ceiling of any method on this mix: what decoding and re-encoding
the faced images, linking the rest and keeping the ledger cost.

JPEG-domain options (``--skip jpeg-options``): on 60 full-size photos, Pillow's decode and
decode + re-encode against libjpeg-turbo's ``tjTransform`` with a coefficient filter (what
``veil.jpeg_domain`` uses), ``jpegtran -drop`` as a subprocess and ``jpeglib``'s coefficient
read + write, where those are installed.

Full-size photos (``--skip photos`` leaves it out): the 405 ILSVRC photos of
``imagenet-samples`` with their original encodings, faces from ``veil detect --profile
fast`` (run here into a temp store unless ``--photo-faces`` names one), as a dataset at
ILSVRC's 17% faced share and at the detector's own share. On one core, best of
``--repeat``, taking turns: the authors' loop; the floor (faceless files copied, faced ones
decoded and re-encoded by Pillow, no obfuscation); the JPEG-domain floor (faceless files
copied, faced ones blurred in the JPEG domain by :func:`veil.jpeg_domain.splice_window`
and written, with no ledger, hashes, fsync or metadata checks: the most a JPEG-domain tool
can get from this machinery, so its ratio to the authors' loop bounds veil's); ``veil
obfuscate`` with ``--format keep`` (JPEG-domain: only the MCUs a face touches re-encoded)
in its own timing and as a whole process; and with ``--format jpeg`` (today's whole
re-encode). Then the faced outputs' size against their inputs, and the largest pixel
difference inside the faces from the pixel-domain result, of both paths. Last, the
start-up: the whole ``veil obfuscate`` process on one small image.

    python benchmarks/obfuscate.py --repeat 5
    python benchmarks/obfuscate.py --repeat 3 --skip wider --skip imagenette --skip dataset
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from veil import jpeg_domain
from veil.boxes import Box, usable_boxes
from veil.cores import available_cores
from veil.datasets import open_dataset
from veil.detection import create_detector
from veil.faces import load_faces
from veil.images import load_image
from veil.obfuscation import (
    affected_region,
    blur,
    minimal_blur,
    obfuscate,
    obfuscate_canvas,
    read_region,
)
from veil.obfuscation.array_stages import compiled_passes
from veil.obfuscation.reference import minimal_blur_reference, paper_blur
from veil.stages.obfuscate import COMPILED_BLUR_FROM, obfuscate_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
WIDER = Path("data") / "wider-face-val-416"
IMAGENETTE = Path("data") / "imagenette"
PHOTOS = Path("data") / "imagenet-samples" / "images"
FACE_SHARE = 0.17  # ILSVRC: 243,198 of 1.43M images contain faces

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


def load_imagenette_with_faces(root: Path, limit: int | None) -> list[Sample]:
    """Imagenette val images in which veil's default detector finds faces, with its boxes."""
    dataset = open_dataset(root / IMAGENETTE).subset(split="val", limit=limit)
    detector = create_detector("centerface", threads=1)
    samples = []
    for start in range(0, len(dataset), 32):
        entries = dataset.entries[start:start + 32]
        images = []
        for entry in entries:
            with Image.open(entry.path) as opened:
                images.append(opened.convert("RGB"))
        found = detector.detect([np.asarray(image) for image in images])
        samples += [Sample(e.key, im, b) for e, im, b in zip(entries, images, found, strict=True)
                    if b]
    return samples


def report_engine(title: str, samples: list[Sample], repeat: int) -> None:
    faces = sum(len(s.boxes) for s in samples)
    print(f"{title}: {len(samples)} images, {faces} faces, {repeat} rounds, 1 core")
    results = engine_section(samples, repeat)
    for result, method in zip(results, ("blur", "minimal-blur"), strict=True):
        shares = affected_shares(samples, method)
        print(f"{result.report()}   affected pixels {100 * np.mean(shares):.0f}%")
        print(result.by_share(shares))


def paper_script(root: Path, keys: list[str], faces: dict[str, list[dict]], out: Path) -> None:
    """The paper's experiments/blurring.py loop: decode, blur, save (Pillow defaults)."""
    for key in keys:
        image = Image.open(root / key).convert("RGB")
        boxes = [Box(b["x0"], b["y0"], b["x1"], b["y1"]) for b in faces[key]]
        image = paper_blur(image, boxes)
        target = out / key
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)


def _timed_run(run: Callable[[Path], object], out: Path) -> float:
    """Seconds ``run(out)`` takes, starting with nothing dirty in the page cache (so no
    side pays for flushing the other's files), ``out`` set aside afterwards
    (:func:`set_aside`)."""
    return _timed_run_cpu(run, out)[0]


def _timed_run_cpu(run: Callable[[Path], object], out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``run(out)`` as :func:`_timed_run`; CPU counts this
    process's threads and any child process, so a shared machine's other jobs do not."""
    os.sync()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time()
    start = time.perf_counter()
    run(out)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu + (after.ru_utime + after.ru_stime
                                       - children.ru_utime - children.ru_stime)
    set_aside(out)
    return seconds, cpu


def _spread(ratios: Sequence[float]) -> str:
    """Median (min-max) of per-round ratios: what one round's noise does to a verdict."""
    values = sorted(ratios)
    return f"median {float(np.median(values)):.2f}x ({values[0]:.2f}-{values[-1]:.2f})"


SPENT: list[Path] = []
"""Where :func:`set_aside` moves finished outputs (one folder for the whole benchmark,
set by :func:`main`), deleted when the benchmark ends: deleting them between runs would
slow the next run's file creation (module doc)."""


def set_aside(out: Path) -> None:
    """Move ``out`` (and a ledger beside it) out of the way without deleting any file:
    a rename within the file system when :data:`SPENT` is set, else a deletion."""
    ledger = out.with_name(out.name + ".veil-ledger.sqlite")
    if not SPENT:
        shutil.rmtree(out)
        ledger.unlink(missing_ok=True)
        return
    target = SPENT[0] / f"run{len(list(SPENT[0].iterdir()))}"
    target.mkdir()
    out.rename(target / "out")
    if ledger.exists():
        ledger.rename(target / ledger.name)


def dataset_section(root: Path, faced: int | None, repeat: int, cores: set[int]) -> None:
    """A mirrored dataset, 17% with faces: the paper's script vs `veil obfuscate`."""
    wider = json.loads((root / WIDER / "faces.json").read_text())[:faced]
    faceless_needed = round(len(wider) * (1 - FACE_SHARE) / FACE_SHARE)
    imagenette = open_dataset(root / IMAGENETTE).subset(split="val")
    step = max(1, len(imagenette) // faceless_needed)
    faceless = imagenette.entries[::step][:faceless_needed]
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp:
        data = Path(tmp) / "data"
        faces: dict[str, list[dict]] = {}
        for entry in wider:
            key = "wider/" + Path(entry["url"]).name
            (data / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / WIDER / entry["url"], data / key)
            faces[key] = [{k: b[k] for k in ("x0", "y0", "x1", "y1")} for b in entry["bboxes"]]
        for entry in faceless:
            key = "imagenette/" + entry.key
            (data / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry.path, data / key)
            faces[key] = []
        faces_file = Path(tmp) / "faces.json"
        faces_file.write_text(json.dumps([{"url": k, "bboxes": v} for k, v in faces.items()]))
        keys = sorted(faces)
        print(f"dataset: {len(keys)} images, {len(wider)} with faces "
              f"({100 * len(wider) / len(keys):.0f}%), outputs written, {repeat} rounds "
              "(each run's best)")
        dataset = open_dataset(data)
        snapshot = load_faces(faces_file)
        # (workers, --link, method); overlay does no blur work at all, so its run is the
        # ceiling any method reaches on this mix: reading, decoding and re-encoding the
        # faced images, linking the rest, the ledger.
        configs = ((1, False, "blur"), (1, True, "blur"),
                   (len(cores) or available_cores(), False, "blur"), (1, True, "overlay"))

        def veil(workers: int, link: bool, method: str) -> Callable[[Path], object]:
            def run(out: Path) -> None:
                summary = obfuscate_dataset(dataset, snapshot, out, workers=workers,
                                            link=link, method=method, progress=False)
                assert summary.ok, summary.errors[:3]
            return run

        reference = float("inf")
        best = dict.fromkeys(configs, float("inf"))
        out = Path(tmp) / "out"
        for _ in range(repeat):  # interleaved, so a change in the machine's load hits all
            reference = min(reference, _timed_run(
                lambda target: paper_script(data, keys, faces, target), out))
            for config in configs:
                if config[0] > 1 and cores:
                    os.sched_setaffinity(0, cores)
                best[config] = min(best[config], _timed_run(veil(*config), out))
                pin_to_one_core()
        for (workers, link, method), engine in best.items():
            label = f"veil, {workers} worker{'s' * (workers > 1)}" + (", --link" if link else "")
            if method != "blur":
                label = f"veil {method}, --link (no blur)"
            print(f"dataset       paper script {len(keys) / reference:7.1f} img/s   "
                  f"{label:<31} {len(keys) / engine:7.1f} img/s   "
                  f"ratio {reference / engine:5.2f}x")


def detect_photos(root: Path, store: Path) -> Path:
    """Faces of the full-size photos: `veil detect --profile fast` into ``store``."""
    subprocess.run([sys.executable, "-m", "veil", "detect", str(root / PHOTOS), "--profile",
                    "fast", "--store", str(store), "--workers", "1", "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL, cwd=REPO_ROOT)
    return store


def _copy_or_write(data: Path, keys: list[str], faces: dict[str, list[dict]], out: Path,
                   write_faced: Callable[[Path, Path, list[dict]], None]) -> None:
    """The floors' loop: copy each faceless file, ``write_faced(source, target, boxes)``
    for each faced one."""
    for key in keys:
        target = out / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if faces[key]:
            write_faced(data / key, target, faces[key])
        else:
            shutil.copyfile(data / key, target)


def _reencoded(source: Path, target: Path, _boxes: list[dict]) -> None:
    with Image.open(source) as image:
        image.load()
        image.save(target, "JPEG", quality="keep")


def floor_run(data: Path, keys: list[str], faces: dict[str, list[dict]], out: Path) -> None:
    """The least any tool can do: copy faceless files, decode + re-encode faced ones."""
    _copy_or_write(data, keys, faces, out, _reencoded)


def _spliced(source: Path, target: Path, faces: list[dict]) -> None:
    raw = source.read_bytes()
    frame = jpeg_domain.parse_frame(raw)  # the photos are stored as displayed
    size = (frame.width, frame.height)
    boxes = [Box(b["x0"], b["y0"], b["x1"], b["y1"]) for b in faces]
    spliced = jpeg_domain.splice_window(
        raw, affected_region(size, boxes, "blur"), read_region(size, boxes, "blur"),
        lambda canvas: obfuscate_canvas(canvas, boxes, "blur"))
    target.write_bytes(spliced.data)


def jpeg_domain_floor(data: Path, keys: list[str], faces: dict[str, list[dict]],
                      out: Path) -> None:
    """The least a JPEG-domain tool can do: copy faceless files; for faced ones, what
    :func:`veil.jpeg_domain.splice_window` must do (decode a crop, the paper blur, encode
    the changed MCUs, one lossless transform) and a plain write. No ledger, no hashes, no
    fsync, no metadata checks: what stands between this and veil is veil's bookkeeping.
    The blur takes the path veil takes for as many faced images (Pillow's passes below
    :data:`~veil.stages.obfuscate.COMPILED_BLUR_FROM`, numba's from there)."""
    faced = sum(1 for key in keys if faces[key])
    with compiled_passes(faced >= COMPILED_BLUR_FROM):
        _copy_or_write(data, keys, faces, out, _spliced)


def veil_process(data: Path, faces_file: Path, out: Path, fmt: str = "keep") -> float:
    """Wall seconds of a whole `veil obfuscate` process (start-up, imports, ledger)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "veil", "obfuscate", str(data), "--faces",
                    str(faces_file), "--out", str(out), "--workers", "1", "--no-progress",
                    "--format", fmt], check=True, stdout=subprocess.DEVNULL, cwd=REPO_ROOT)
    return time.perf_counter() - start


def _quality(data: Path, out: Path, faces: dict[str, list[dict]]) -> tuple[float, int, int, int]:
    """Over the faced images: (output/input bytes; the largest pixel difference from the
    pixel-domain result inside the affected regions; from the decoded source outside the
    MCUs the regions touch; the same beyond those MCUs' one-pixel ring, which subsampled
    chroma's interpolating upsampling reads across)."""
    size_in = size_out = 0
    inside = outside = beyond = 0
    for key, raw in faces.items():
        if not raw:
            continue
        size_in += (data / key).stat().st_size
        size_out += (out / key).stat().st_size
        source = (data / key).read_bytes()
        loaded = load_image(source)
        boxes = usable_boxes([Box(b["x0"], b["y0"], b["x1"], b["y1"]) for b in raw])[0]
        expected = np.asarray(obfuscate(loaded.image, boxes, "blur"), np.int16)
        shown = np.asarray(load_image(out / key).image, np.int16)
        regions = affected_region(loaded.image.size, boxes, "blur")
        mask = np.zeros(expected.shape[:2], bool)
        for x0, y0, x1, y1 in regions:
            mask[y0:y1, x0:x1] = True
        inside = max(inside, int(np.abs(shown - expected).max(axis=2)[mask].max(initial=0)))
        frame = jpeg_domain.parse_frame(source)
        if loaded.orientation != 1:
            continue  # the MCU grid is the stored picture's
        mw, mh = frame.mcu
        mcus = jpeg_domain._mcu_mask(frame, regions)
        changed = np.repeat(np.repeat(mcus, mh, 0), mw, 1)[:frame.height, :frame.width]
        ring = changed.copy()
        ring[1:] |= changed[:-1]
        ring[:-1] |= changed[1:]
        ring[:, 1:] |= ring[:, :-1].copy()
        ring[:, :-1] |= ring[:, 1:].copy()
        diff = np.abs(shown - np.asarray(loaded.image, np.int16)).max(axis=2)
        outside = max(outside, int(diff[~changed].max(initial=0)))
        beyond = max(beyond, int(diff[~ring].max(initial=0)))
    return size_out / max(size_in, 1), inside, outside, beyond


def photos_section(root: Path, repeat: int, faces_source: Path | None) -> None:
    """Full-size ILSVRC photos: authors' loop vs veil (JPEG domain and whole re-encode,
    own timing and whole process) vs the copy + decode/encode floor."""
    with tempfile.TemporaryDirectory(prefix="veil-photos-") as tmp:
        source = faces_source or detect_photos(root, Path(tmp) / "faces.sqlite")
        snapshot = load_faces(str(source))
        names = sorted(p.name for p in (root / PHOTOS).iterdir())
        faced = [k for k in names if snapshot.boxes.get(k)]
        faceless = [k for k in names if not snapshot.boxes.get(k)]
        detector_share = len(faced) / len(names)
        for label, share in ((f"ILSVRC's {FACE_SHARE:.0%}", FACE_SHARE),
                             (f"detector's {detector_share:.0%}", detector_share)):
            n_faced = min(len(faced), round(share / (1 - share) * len(faceless)))
            n_faceless = min(len(faceless), round(n_faced * (1 - share) / share))
            keys = sorted(faced[:n_faced] + faceless[:n_faceless])
            _photos_share(root, Path(tmp) / label.split("'")[0], keys, snapshot, label, repeat)
        startup_section(root, Path(tmp), repeat)


def _photos_share(root: Path, tmp: Path, keys: list[str], snapshot, label: str,
                  repeat: int) -> None:
    data = tmp / "data"
    data.mkdir(parents=True)
    faces: dict[str, list[dict]] = {}
    for key in keys:
        shutil.copyfile(root / PHOTOS / key, data / key)
        faces[key] = [b.to_dict() for b in snapshot.boxes.get(key, [])]
    faces_file = tmp / "faces.json"
    faces_file.write_text(json.dumps([{"url": k, "bboxes": v} for k, v in faces.items()]))
    dataset = open_dataset(data)
    loaded = load_faces(str(faces_file))
    n_faced = sum(1 for v in faces.values() if v)
    print(f"full-size photos at {label} faced: {len(keys)} images, {n_faced} with faces "
          f"({100 * n_faced / len(keys):.0f}%), 1 core, {repeat} rounds (each run's best)")

    def veil(fmt: str) -> Callable[[Path], object]:
        def run(out: Path) -> None:
            summary = obfuscate_dataset(dataset, loaded, out, workers=1, fmt=fmt,
                                        progress=False)
            assert summary.ok, summary.errors[:3]
        return run

    authors, floor, domain_floor = ("authors' loop", "floor: copy + decode/encode",
                                    "JPEG-domain floor: copy + splice")
    keep, jpeg = "veil --format keep (JPEG domain)", "veil --format jpeg (re-encode)"
    runs: dict[str, Callable[[Path], object]] = {
        authors: lambda out: paper_script(data, keys, faces, out),
        floor: lambda out: floor_run(data, keys, faces, out),
        domain_floor: lambda out: jpeg_domain_floor(data, keys, faces, out),
        keep: veil("keep"),
        jpeg: veil("jpeg"),
        "veil keep, whole process": lambda out: veil_process(data, faces_file, out),
    }
    best = dict.fromkeys(runs, float("inf"))
    best_cpu = dict.fromkeys(runs, float("inf"))
    out = tmp / "out"
    rounds: list[dict[str, float]] = []  # CPU seconds per run, per round
    for _ in range(repeat):
        rounds.append({})
        for name, run in runs.items():
            wall, cpu = _timed_run_cpu(run, out)
            best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], cpu)
            rounds[-1][name] = cpu
    print(f"  {'':<34} {'wall img/s':>10}  {'x authors':>9}   {'CPU img/s':>9}  {'x authors':>9}")
    for name, seconds in best.items():
        cpu = best_cpu[name]
        print(f"  {name:<34} {len(keys) / seconds:10.1f}  {best[authors] / seconds:8.2f}x"
              f"   {len(keys) / cpu:9.1f}  {best_cpu[authors] / cpu:8.2f}x")

    def faster(slow: str, fast: str) -> str:
        """How many times faster ``fast`` ran than ``slow``, best of the rounds."""
        return (f"{best[slow] / best[fast]:.2f}x wall, "
                f"{best_cpu[slow] / best_cpu[fast]:.2f}x CPU")

    def per_round(slow: str, fast: str) -> str:
        return _spread([r[slow] / r[fast] for r in rounds])

    print(f"  JPEG domain vs whole re-encode: {faster(jpeg, keep)}   veil keep vs the floor: "
          f"{faster(floor, keep)}; vs the JPEG-domain floor: {faster(domain_floor, keep)}")
    print(f"  per round (CPU of runs side by side): JPEG domain vs whole re-encode "
          f"{per_round(jpeg, keep)}; veil keep vs the authors' loop {per_round(authors, keep)}; "
          f"the JPEG-domain floor vs the authors' loop {per_round(authors, domain_floor)}")
    for fmt in ("keep", "jpeg"):
        veil(fmt)(out)
        ratio, inside, outside, beyond = _quality(data, out, faces)
        set_aside(out)
        print(f"  --format {fmt}: faced outputs {ratio:.3f}x their inputs' bytes; largest pixel "
              f"difference: {inside} from the pixel-domain result inside the regions; from the "
              f"source {outside} outside the changed MCUs, {beyond} beyond their 1-px ring")


def jpeg_options_section(root: Path, repeat: int, limit: int = 60) -> None:
    """The ways to write a JPEG-domain output, timed on full-size photos (ms per image,
    best of ``repeat``): what :mod:`veil.jpeg_domain` chose among."""
    datas = [p.read_bytes() for p in sorted((root / PHOTOS).iterdir())[:limit]]

    def pillow_decode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    def pillow_reencode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image.save(io.BytesIO(), "JPEG", quality="keep")

    options: dict[str, Callable[[bytes], object]] = {
        "Pillow decode": pillow_decode,
        "Pillow decode + re-encode (today's path)": pillow_reencode,
    }
    if jpeg_domain.available() is None:
        options["tjTransform + coefficient filter"] = lambda data: jpeg_domain._transform(
            data, lambda *_: 0, output=True)
        options["tjTransform, read coefficients only"] = jpeg_domain.read_coefficients
    with tempfile.TemporaryDirectory(prefix="veil-jpeg-") as tmp:
        source, dropped, out = (Path(tmp) / n for n in ("s.jpg", "d.jpg", "o.jpg"))
        if shutil.which("jpegtran"):
            def jpegtran_drop(data: bytes) -> None:  # one region; files in and out
                source.write_bytes(data)
                dropped.write_bytes(data)
                subprocess.run(["jpegtran", "-drop", "+0+0", str(dropped), "-outfile",
                                str(out), str(source)], check=True)
            options["jpegtran -drop (subprocess)"] = jpegtran_drop
        try:
            import jpeglib
        except ImportError:
            jpeglib = None
        if jpeglib is not None:
            def jpeglib_roundtrip(data: bytes) -> None:
                source.write_bytes(data)
                coefficients = jpeglib.read_dct(str(source))
                coefficients.Y  # noqa: B018 (jpeglib reads lazily)
                coefficients.write_dct(str(out))
            options["jpeglib read_dct + write_dct"] = jpeglib_roundtrip
        best = dict.fromkeys(options, float("inf"))
        for _ in range(repeat):
            for name, option in options.items():
                start = time.perf_counter()
                for data in datas:
                    option(data)
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"JPEG-domain options on {len(datas)} full-size photos, 1 core, best of {repeat}")
    for name, seconds in best.items():
        print(f"  {name:<42} {1000 * seconds / len(datas):6.2f} ms/image")


def startup_section(root: Path, tmp: Path, repeat: int) -> None:
    """`veil obfuscate` on one small image, the whole process: wall and CPU seconds."""
    data = tmp / "one"
    data.mkdir()
    name = sorted(p.name for p in (root / PHOTOS).iterdir())[0]
    shutil.copyfile(root / PHOTOS / name, data / name)
    faces_file = tmp / "one.json"
    faces_file.write_text(json.dumps([{"url": name, "bboxes": [
        {"x0": 100, "y0": 80, "x1": 180, "y1": 170}]}]))
    wall = cpu = float("inf")
    for _ in range(max(repeat, 3)):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = veil_process(data, faces_file, tmp / "one-out")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        shutil.rmtree(tmp / "one-out")
        wall = min(wall, seconds)
        cpu = min(cpu, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(f"start-up: `veil obfuscate` on one small image, whole process: {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU (best of {max(repeat, 3)})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5,
                        help="timing rounds; each image keeps its fastest (default 5)")
    parser.add_argument("--shared", type=Path, default=None,
                        help="shared data root (default: $VEIL_SHARED or ../shared)")
    parser.add_argument("--imagenette-limit", type=int, default=None,
                        help="detect faces in only the first N Imagenette val images")
    parser.add_argument("--photo-faces", type=Path, default=None,
                        help="faces of the full-size photos (store or file; default: run "
                             "`veil detect --profile fast` into a temp store)")
    parser.add_argument("--skip", choices=("wider", "imagenette", "dataset", "photos",
                                           "jpeg-options"),
                        action="append",
                        default=[], help="leave out a section (repeatable)")
    args = parser.parse_args(argv)
    root = args.shared.resolve() if args.shared else shared_root()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    pin_to_one_core()
    print(f"veil obfuscation benchmark (pid {os.getpid()}, pinned to one core)")
    with tempfile.TemporaryDirectory(prefix="veil-bench-spent-") as spent:
        SPENT[:] = [Path(spent)]
        try:
            _sections(root, args, cores)
        finally:
            SPENT.clear()
    return 0


def _sections(root: Path, args: argparse.Namespace, cores: set[int]) -> None:
    if "wider" not in args.skip:
        report_engine("WIDER val sample", load_wider(root), args.repeat)
    if "imagenette" not in args.skip:
        samples = load_imagenette_with_faces(root, args.imagenette_limit)
        report_engine("Imagenette val, images with detected faces", samples, args.repeat)
    if "dataset" not in args.skip:
        # The paper script and veil with 1 worker run on one core; the last veil run uses
        # every core, as `veil obfuscate` does by default.
        dataset_section(root, None, args.repeat, cores)
    if "jpeg-options" not in args.skip:
        jpeg_options_section(root, args.repeat)
    if "photos" not in args.skip:
        photos_section(root, args.repeat, args.photo_faces)


if __name__ == "__main__":
    raise SystemExit(main())
