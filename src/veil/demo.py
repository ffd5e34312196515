"""``veil demo``: the whole pipeline on real photographs, offline, with an HTML report.

It detects faces in the built-in gallery (photographs shipped inside installed
packages), obfuscates them with every method, and, when an Imagenette-style folder is
available, does the same on its val split, then writes ``report.html``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veil import __version__
from veil.datasets import Dataset, open_dataset
from veil.download import cached_imagenette, download_imagenette
from veil.faces import load_faces
from veil.gallery import caption, write_gallery
from veil.html import draw_boxes, render, thumbnail_uri
from veil.images import load_image
from veil.obfuscation import METHODS
from veil.stages.detect import detect
from veil.stages.obfuscate import obfuscate_dataset, output_key
from veil.store import FaceStore

DETECTOR = "centerface"


DEMO_STUDY_IMAGES = 2000  # per split, spread over the classes
DEMO_STUDY_EPOCHS = 6
#: Small batches: 2,000 images make few steps per epoch, and the quick profile's batch of
#: 128 leaves the models near chance after a few epochs (top-1 ~0.12 at 4 epochs; ~0.5
#: with batches of 32 and 6 epochs).
DEMO_STUDY_BATCH = 32


@dataclass
class DemoResult:
    report: Path
    sections: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    study_report: Path | None = None


def find_imagenette(data: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The Imagenette folder to use and, when there is none, why."""
    if data is not None:
        return Path(data), ""
    if os.environ.get("VEIL_DATA"):
        return Path(os.environ["VEIL_DATA"]), ""
    cached = cached_imagenette()
    if cached is not None:
        return cached, ""
    return None, ("Imagenette: no --data given, $VEIL_DATA is not set, and no earlier download "
                  "is in the cache (run `veil demo --download` once when online)")


def _section(title: str, description: str, dataset: Dataset, work: Path, *, workers: int | None,
             progress: bool, examples: int, per_class: bool, log: Any) -> dict[str, Any]:
    store_path = work / "faces.sqlite"
    with FaceStore(store_path) as store:
        log(f"{title}: detecting faces in {len(dataset)} images")
        detected = detect(dataset, store, detector=DETECTOR, workers=workers, progress=progress)
        faces = load_faces(store)
    methods = []
    for method in METHODS:
        log(f"{title}: obfuscating with {method}")
        out = work / "obfuscated" / method
        summary = obfuscate_dataset(dataset, faces, out, method=method, workers=workers,
                                    progress=progress, unannotated="copy")
        methods.append({
            "name": method, "obfuscated": summary.counts["obfuscated"],
            "copied": summary.counts["copied"], "errors": len(summary.errors),
            "rate": summary.images_per_second, "out": str(out),
        })
    return {
        "title": title, "description": description, "images": len(dataset),
        "with_faces": detected.counts["images with faces"], "faces": detected.counts["faces"],
        "errors": len(detected.errors), "detect_rate": detected.images_per_second,
        "methods": methods,
        "per_class": _per_class(dataset, faces.boxes) if per_class else [],
        "examples": _examples(dataset, faces.boxes, work, examples),
    }


def _per_class(dataset: Dataset, boxes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    images: Counter[str] = Counter()
    with_faces: Counter[str] = Counter()
    for entry in dataset:
        label = entry.label or "(none)"
        images[label] += 1
        with_faces[label] += bool(boxes.get(entry.key))
    rows = [{"label": label, "images": n, "with_faces": with_faces[label],
             "share": with_faces[label] / n} for label, n in images.items()]
    return sorted(rows, key=lambda r: -r["share"])


def _examples(dataset: Dataset, boxes: dict[str, list[Any]], work: Path,
              limit: int) -> list[dict[str, Any]]:
    keys = [e.key for e in dataset if boxes.get(e.key)]
    # Most faces first, so the report shows the interesting images.
    keys = sorted(keys, key=lambda k: -len(boxes[k]))[:limit]
    rows = []
    for key in keys:
        original = load_image(dataset[key].path).image
        methods = []
        for method in METHODS:
            path = work / "obfuscated" / method / output_key(key, Path(key).suffix)
            methods.append({"name": method, "uri": thumbnail_uri(load_image(path).image)})
        rows.append({
            "key": key, "caption": caption(key), "faces": len(boxes[key]),
            "detected": thumbnail_uri(draw_boxes(original, boxes[key])), "methods": methods,
        })
    return rows


def _demo_study(imagenette: Path, store_path: Path, out: Path, *, workers: int | None,
                progress: bool, log: Any) -> Path:
    """A demo-sized study (original vs blur, one seed, a subset, a few epochs) and its
    report: the mechanics of the whole experiment in minutes, not a finding (the report
    says so); `veil study` runs the real one."""
    from veil.report.study import build_report
    from veil.study import StudyConfig, run_study

    train = open_dataset(imagenette).subset(split="train", limit=DEMO_STUDY_IMAGES)
    with FaceStore(store_path) as store:
        log(f"study: detecting faces in {len(train)} training images")
        detect(train, store, detector=DETECTOR, workers=workers, progress=progress)
    log(f"study: training original and blurred ResNet-18s ({DEMO_STUDY_EPOCHS} epochs, "
        f"{DEMO_STUDY_IMAGES} images per split)")
    run_study(StudyConfig(
        data=imagenette, faces=store_path, out=out, methods=("blur",), seeds=(0,),
        profile="quick", overrides={"epochs": DEMO_STUDY_EPOCHS, "batch_size": DEMO_STUDY_BATCH},
        limit=DEMO_STUDY_IMAGES,
        progress=progress, log=log))
    return build_report(out, demo=True)


def run_demo(
    out: str | os.PathLike[str] = "demo-output",
    *,
    data: str | os.PathLike[str] | None = None,
    download: bool = False,
    limit: int | None = None,
    study: bool = True,
    workers: int | None = None,
    progress: bool = True,
    log: Any = print,
) -> DemoResult:
    """Run the demo into ``out`` (replacing an earlier demo there) and write its report.

    With Imagenette available it also runs a demo-sized study (``study=False`` skips it).
    """
    start = time.perf_counter()
    out = Path(out)
    for name in ("gallery", "imagenette", "study", "report.html"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    result = DemoResult(out / "report.html")
    gallery_dir = out / "gallery" / "images"
    written, missing = write_gallery(gallery_dir)
    result.skipped.extend(f"gallery photo {m}" for m in missing)
    gallery = open_dataset(gallery_dir, layout="folder")
    result.sections.append(_section(
        "Gallery", f"{len(written)} photographs that ship inside scikit-image, matplotlib and "
        "scikit-learn, so the demo runs offline.", gallery, out / "gallery", workers=1,
        progress=progress, examples=len(written), per_class=False, log=log))

    if download and data is None and cached_imagenette() is None:
        log("downloading Imagenette into the cache")
        data = download_imagenette(progress=progress)
    imagenette, why = find_imagenette(data)
    if imagenette is not None:
        dataset = open_dataset(imagenette)
        if "val" in dataset.splits:
            dataset = dataset.subset(split="val")
        if limit is not None:
            dataset = dataset.subset(limit=limit)
        result.sections.append(_section(
            "Imagenette val", f"{len(dataset)} images of {imagenette} ({len(dataset.classes)} "
            "ImageNet classes). In ILSVRC 17% of images contain faces.", dataset,
            out / "imagenette", workers=workers, progress=progress, examples=8,
            per_class=True, log=log))
        if study:
            result.study_report = _demo_study(
                imagenette, out / "imagenette" / "faces.sqlite", out / "study",
                workers=workers, progress=progress, log=log)
        else:
            result.skipped.append("the demo-sized study (--no-study)")
    else:
        result.skipped.append(why)
    render("demo.html", result.report, version=__version__, detector=DETECTOR,
           created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
           seconds=time.perf_counter() - start, sections=result.sections,
           skipped=result.skipped,
           study_report=(os.path.relpath(result.study_report, out)
                         if result.study_report else None),
           study_images=DEMO_STUDY_IMAGES, study_epochs=DEMO_STUDY_EPOCHS)
    return result
