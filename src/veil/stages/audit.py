"""The audit stage: prove an obfuscated dataset is clean before it is published.

It re-detects faces in the *output* images. A detection that is not inside a region
veil obfuscated is a residual face: a face the boxes missed, or a face copied
unobfuscated. It also flags identifying metadata (EXIF thumbnails still show the face;
GPS says where it was taken). Obfuscated regions come from the output's own ledger
(``OUT.veil-ledger.sqlite`` beside it, written by ``veil obfuscate``; an older veil's
``OUT/.veil/ledger.sqlite`` is read too, and flagged: it names the host and absolute
paths, and would be published with the folder) or, for folders made by
other tools, from the faces they were obfuscated with (``--faces``).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np

from veil.backends import Backend, ShardResult, get_backend
from veil.boxes import Box
from veil.datasets import Dataset, FileReader, ImageReader
from veil.detection import create_detector
from veil.errors import ImageError, VeilError
from veil.evaluation.faces import covered_fraction
from veil.images import load_image, probe
from veil.runner import DEFAULT_SHARD_SIZE, RunSummary, execute, prepare_run
from veil.stages.audit_report import AuditReport, Finding, detector_label
from veil.store import FaceStore, RunItem

__all__ = ["COVERED_FRACTION", "DEFAULT_MIN_SCORE", "AuditReport", "AuditTask", "Finding",
           "audit", "find_ledger", "published_ledger", "regions_from_faces",
           "regions_from_ledger"]

Rect = tuple[float, float, float, float]
DEFAULT_MIN_SCORE = 0.5
COVERED_FRACTION = 0.5
"""A detection whose area lies at least this much inside obfuscated regions is a face
veil already obfuscated (detectors still fire on a blurred face), not a residual."""
LEAKING_METADATA = ("exif-thumbnail", "gps", "xmp", "iptc", "comment", "maker-note", "exif",
                    "png-text")


@dataclass
class AuditTask:
    """Check a shard of output images: metadata first, then residual faces."""

    wants_gpu: ClassVar[bool] = True  # a Ray cluster with GPUs gives each worker one

    root: str
    regions: dict[str, list[Rect]]
    detector: str = "centerface"
    options: dict[str, Any] = field(default_factory=dict)
    min_score: float = DEFAULT_MIN_SCORE
    threads: int | None = None
    max_pixels: int | None = None
    reader: ImageReader | None = None

    def setup(self) -> None:
        if self.reader is None:
            self.reader = FileReader(Path(self.root))
        self._detector = create_detector(self.detector, threads=self.threads, **self.options)

    def __call__(self, index: int, keys: Sequence[str]) -> ShardResult:
        result = ShardResult(index)
        for key in keys:
            try:
                findings = self._check(key)
            except (ImageError, OSError) as exc:
                message = str(exc) if isinstance(exc, ImageError) else (exc.strerror or str(exc))
                result.items.append(RunItem(key, status="error", error=message))
                result.counts["errors"] += 1
                continue
            result.counts["images"] += 1
            result.counts["residual faces"] += sum(f.kind == "face" for f in findings)
            result.counts["metadata findings"] += sum(f.kind == "metadata" for f in findings)
            result.counts["clean images"] += not findings
            result.items.append(RunItem(key, info={
                "findings": [f.to_dict() for f in findings]}))
        return result

    def _check(self, key: str) -> list[Finding]:
        data = self.reader.read(key)  # type: ignore[union-attr]  # set in setup
        findings = [
            Finding(key, "metadata", kind) for kind in probe(data).metadata
            if kind in LEAKING_METADATA
        ]
        image = load_image(data, max_pixels=self.max_pixels)
        regions = self.regions.get(key, [])
        for box in self._detector.detect([np.asarray(image.image)])[0]:
            if (box.score or 0.0) < self.min_score:
                continue
            rect = box.as_xyxy()
            share = covered_fraction(rect, np.asarray(regions, dtype=np.float64))
            if share < COVERED_FRACTION:
                findings.append(Finding(
                    key, "face", f"face (score {box.score:.2f}) {100 * share:.0f}% inside "
                    "obfuscated regions", rect, box.score))
        return findings


def find_ledger(out: Path, ledger: Path | None = None) -> Path | None:
    """The obfuscate ledger of output folder ``out``: ``ledger`` if given, else the one
    beside ``out``, else one an older veil left inside it; None when there is none."""
    from veil.stages.obfuscate import LEGACY_LEDGER, ledger_path

    for candidate in (ledger_path(out, ledger), Path(out) / LEGACY_LEDGER):
        if candidate.is_file():
            return candidate
        if ledger is not None:
            return None
    return None


def published_ledger(out: Path) -> Path | None:
    """A ledger inside ``out`` (an older veil's ``.veil/ledger.sqlite``): a metadata
    finding, since it records the host name and absolute paths."""
    from veil.stages.obfuscate import LEGACY_LEDGER

    inside = Path(out) / LEGACY_LEDGER
    return inside if inside.is_file() else None


def regions_from_ledger(out: Path, ledger: Path | None = None
                        ) -> dict[str, list[Rect]] | None:
    """Output key -> obfuscated rectangles, from the newest obfuscate run recorded for
    ``out`` (its ledger as :func:`find_ledger` finds it)."""
    ledger = find_ledger(out, ledger)
    if ledger is None:
        return None
    with FaceStore(ledger, create=False) as store:
        runs = [r for r in store.runs("obfuscate") if r.status == "done"]
        if not runs:
            return None
        regions: dict[str, list[Rect]] = {}
        for item in store.run_items(runs[-1].id, status="ok"):
            info = item.info or {}
            output = info.get("output", item.key)
            regions[output] = [(float(x0), float(y0), float(x1), float(y1))
                               for x0, y0, x1, y1 in info.get("regions", [])]
        return regions


def regions_from_faces(faces: Mapping[str, Sequence[Box]], keys: Sequence[str]
                       ) -> dict[str, list[Rect]]:
    """For outputs made elsewhere: the face boxes are the regions (an output key may
    differ from the faces' key by its suffix, e.g. after conversion to PNG)."""
    by_stem = {str(PurePosixPath(k).with_suffix("")): k for k in faces}
    regions = {}
    for key in keys:
        source = key if key in faces else by_stem.get(str(PurePosixPath(key).with_suffix("")))
        if source is not None:
            regions[key] = [b.as_xyxy() for b in faces[source]]
    return regions


def audit(
    dataset: Dataset,
    regions: dict[str, list[Rect]] | None = None,
    *,
    ledger: str | os.PathLike[str] | None = None,
    regions_source: str | None = None,
    detector: str = "centerface",
    options: dict[str, Any] | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    store: FaceStore | None = None,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int | None = None,
    progress: bool = True,
    backend: str | Backend | None = None,
) -> AuditReport:
    """Re-detect faces in ``dataset`` (an obfuscated output) and list what leaks.

    ``regions`` are the obfuscated rectangles per key (``regions_source`` says where
    they came from, for the report); None reads them from the obfuscate ledger (``ledger``,
    else the one beside the output; an explicit ``ledger`` without a finished run is a
    :class:`~veil.errors.VeilError`) or, without one, reports every detection. A ledger an
    older veil left inside the folder is a finding. With a ``store`` the audit is
    recorded as a run of kind ``audit`` and resumes when interrupted; otherwise it runs
    on a throwaway ledger. The returned :class:`AuditReport` writes the JSON and HTML
    reports ``veil audit`` writes.
    """
    root = Path(dataset.root)
    if regions is None:
        given = Path(ledger) if ledger is not None else None
        regions = regions_from_ledger(root, given)
        if regions is not None:
            regions_source = f"the obfuscate ledger {find_ledger(root, given)}"
        elif given is not None:
            raise VeilError(f"ledger {given}: no finished obfuscate run there")
        else:
            regions = {}
            regions_source = "none (no ledger and no faces given): every detection is reported"
    elif regions_source is None:
        regions_source = "the regions given to veil.audit"
    summary, findings = _run_audit(
        dataset, regions, detector=detector, options=options or {}, min_score=min_score,
        store=store, workers=workers, shard_size=shard_size, max_pixels=max_pixels,
        progress=progress, backend=backend)
    inside = published_ledger(root)
    if inside is not None:  # an older veil's ledger, published with the images
        findings.append(Finding(
            inside.relative_to(root).as_posix(), "metadata",
            "veil's obfuscate ledger inside the folder: it records the host name and absolute "
            "paths; run `veil obfuscate` again (it moves the ledger beside the folder) or "
            "delete it before publishing"))
        summary.counts["metadata findings"] += 1
    return AuditReport(str(root), summary, findings, detector_label(detector, options or {}),
                       min_score, regions_source, COVERED_FRACTION, dataset=dataset)


def _run_audit(
    dataset: Dataset, regions: dict[str, list[Rect]], *, detector: str,
    options: dict[str, Any], min_score: float, store: FaceStore | None, workers: int | None,
    shard_size: int, max_pixels: int | None, progress: bool, backend: str | Backend | None,
) -> tuple[RunSummary, list[Finding]]:
    """Run the audit's shards and read back every finding from its ledger."""
    runner = get_backend(backend)
    workers = workers or runner.default_workers()
    config = {"dataset": str(dataset.root.resolve()), "images": len(dataset),
              "detector": detector, "options": options, "min_score": min_score}
    task = AuditTask(str(dataset.root.resolve()), regions, detector, dict(options),
                     min_score, threads=runner.threads_per_worker(workers),
                     max_pixels=max_pixels, reader=dataset.reader())
    with tempfile.TemporaryDirectory(prefix="veil-audit-") as tmp:
        ledger = store if store is not None else FaceStore(Path(tmp) / "ledger.sqlite")
        try:
            run_id, done = prepare_run(ledger, "audit", config, dataset.keys(),
                                       shard_size=shard_size,
                                       shards=dataset.work_shards(shard_size))
            summary = execute(ledger, run_id, task, workers=workers, progress=progress,
                              description="audit", resumed_shards=done, backend=runner)
            items = ledger.run_items(run_id)
        finally:
            if store is None:
                ledger.close()
    findings = [
        Finding(f["key"], f["kind"], f["detail"], tuple(f["box"]) if f["box"] else None,
                f["score"])
        for item in items if item.status == "ok"
        for f in (item.info or {}).get("findings", [])
    ]
    # Counted from the ledger, so a resumed audit reports the whole run.
    summary.errors = [(i.key, i.error or "error") for i in items if i.status == "error"]
    flagged = {f.key for f in findings}
    summary.counts = Counter({
        "images": sum(i.status == "ok" for i in items),
        "clean images": sum(i.status == "ok" and i.key not in flagged for i in items),
        "residual faces": sum(f.kind == "face" for f in findings),
        "metadata findings": sum(f.kind == "metadata" for f in findings),
        "errors": len(summary.errors),
    })
    return summary, findings
