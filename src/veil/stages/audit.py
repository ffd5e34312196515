"""The audit stage: prove an obfuscated dataset is clean before it is published.

It proves rather than trusts (:mod:`veil.stages.audit_checks` for each check):

* every output file's bytes against the SHA-256 ``veil obfuscate`` recorded in its ledger
  (``OUT.veil-ledger.sqlite`` beside the output; an older veil's ``OUT/.veil/ledger.sqlite``
  is read too, and flagged: it names the host and absolute paths, and would be published
  with the folder), and every file copied unchanged against its source;
* with the source (``source=``, ``--source``), every obfuscated face box against the
  source's pixels: hidden at least as well as the method hides it, and the picture
  outside the regions still the source's;
* every identifying metadata field;
* residual faces: a detection outside the obfuscated regions is a finding; one inside is
  for information when its box passed the pixel check, a finding when it failed or could
  not run.

Regions and boxes come from the ledger or, for folders made by other tools, from the
faces they were obfuscated with (``--faces``; then ``--method`` says how, for the pixel
check). What could not be verified (no source, no ledger, an unknown method) is listed,
and such an audit is not called clean.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from veil.backends import Backend, ShardResult, get_backend
from veil.boxes import Box
from veil.datasets import Dataset, FileReader, ImageReader
from veil.detection import create_detector
from veil.errors import ImageError, VeilError
from veil.runner import DEFAULT_SHARD_SIZE, RunSummary, execute, prepare_run
from veil.stages.audit_checks import COVERED_FRACTION, ImageChecker
from veil.stages.audit_ledger import (
    Ledger,
    LedgerReader,
    find_ledger,
    published_ledger,
    read_ledger,
)
from veil.stages.audit_report import AuditReport, Finding, detector_label
from veil.store import FaceStore, RunItem

__all__ = ["COVERED_FRACTION", "DEFAULT_MIN_SCORE", "AuditReport", "AuditTask", "Finding",
           "audit", "find_ledger", "published_ledger", "regions_from_faces",
           "regions_from_ledger"]

Rect = tuple[float, float, float, float]
DEFAULT_MIN_SCORE = 0.5


@dataclass
class AuditTask:
    """Audit a shard of output images (see :class:`~veil.stages.audit_checks.ImageChecker`
    for the fields it passes on)."""

    wants_gpu: ClassVar[bool] = True  # a Ray cluster with GPUs gives each worker one

    root: str
    regions: dict[str, list[Rect]]
    detector: str = "centerface"
    options: dict[str, Any] = field(default_factory=dict)
    min_score: float = DEFAULT_MIN_SCORE
    threads: int | None = None
    max_pixels: int | None = None
    reader: ImageReader | None = None
    ledger: LedgerReader | None = None  # None: no ledger
    source: ImageReader | None = None
    source_keys: dict[str, str] = field(default_factory=dict)
    boxes: dict[str, list[Rect]] = field(default_factory=dict)
    method: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    render: dict[str, Any] | None = None

    def setup(self) -> None:
        if self.reader is None:
            self.reader = FileReader(Path(self.root))
        self._checker = ImageChecker(
            self.regions, create_detector(self.detector, threads=self.threads, **self.options),
            self.min_score, None, self.source, self.source_keys, self.boxes,
            self.method, self.method_options, self.render, self.max_pixels)

    def __call__(self, index: int, keys: Sequence[str]) -> ShardResult:
        result = ShardResult(index)
        if self.ledger is not None:  # this shard's records, read here
            self._checker.records = self.ledger.records(keys)
        for key in keys:
            try:
                data = self.reader.read(key)  # type: ignore[union-attr]  # set in setup
                audited = self._checker.check(key, data)
            except (ImageError, OSError) as exc:
                message = str(exc) if isinstance(exc, ImageError) else (exc.strerror or str(exc))
                result.items.append(RunItem(key, status="error", error=message))
                result.counts["errors"] += 1
                continue
            result.counts["images"] += 1
            result.counts["images with findings"] += bool(audited.findings)
            result.items.append(RunItem(key, info=audited.to_info()))
        return result


def regions_from_ledger(out: Path, ledger: Path | None = None
                        ) -> dict[str, list[Rect]] | None:
    """Output key -> obfuscated rectangles, from the newest obfuscate run recorded for
    ``out`` (its ledger as :func:`find_ledger` finds it)."""
    found = read_ledger(out, ledger)
    return None if found is None else found.regions()


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
    source: Dataset | None = None,
    method: str | None = None,
    method_options: dict[str, Any] | None = None,
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
    """Audit ``dataset`` (an obfuscated output) and list what leaks and what could not
    be verified.

    The obfuscate ledger (``ledger``, else the one beside the output; an explicit
    ``ledger`` without a finished run is a :class:`~veil.errors.VeilError`) gives each
    file's recorded bytes, face boxes, regions and the method. ``regions``: the face
    boxes per key of an output made elsewhere (``regions_source`` says where they came
    from, for the report); they are the regions and, where the ledger records no boxes,
    the boxes the pixel check judges. ``source``: the dataset that was obfuscated; with
    it, copied files are compared with their sources and obfuscated regions with the
    source's pixels. ``method``/``method_options``: how an output without a ledger was
    obfuscated (a ledger's own method wins; a different one is a VeilError).

    With a ``store`` the audit is recorded as a run of kind ``audit`` and resumes when
    interrupted; otherwise it runs on a throwaway ledger. The returned
    :class:`AuditReport` writes the JSON and HTML reports ``veil audit`` writes.
    """
    root = Path(dataset.root)
    given = Path(ledger) if ledger is not None else None
    found = read_ledger(root, given)
    if found is None and given is not None:
        raise VeilError(f"ledger {given}: no finished obfuscate run there")
    boxes: dict[str, list[Rect]] = {}
    if regions is not None:
        boxes = {k: list(v) for k, v in regions.items()}
        regions_source = regions_source or "the regions given to veil.audit"
    elif found is not None:
        regions = {}  # each worker takes them from the ledger's records
        regions_source = f"the obfuscate ledger {found.path}"
    else:
        regions = {}
        regions_source = "none (no ledger and no faces given): every detection is reported"
    method, method_options = _method(found, method, method_options)
    config = {"dataset": str(dataset.root.resolve()), "images": len(dataset),
              "detector": detector, "options": options or {}, "min_score": min_score,
              "source": None if source is None else str(source.root.resolve()),
              "ledger": None if found is None else str(found.path), "method": method,
              "method_options": method_options}
    task = AuditTask(
        str(dataset.root.resolve()), regions, detector, dict(options or {}), min_score,
        max_pixels=max_pixels, reader=dataset.reader(),
        ledger=None if found is None else found.reader(),
        source=None if source is None else source.reader(),
        source_keys={} if source is None or found is not None else _source_keys(
            dataset.keys(), source),
        boxes=boxes, method=method, method_options=method_options,
        render=None if found is None else _render_settings(found))
    summary, items = _run_audit(dataset, task, config, store=store, workers=workers,
                                shard_size=shard_size, progress=progress, backend=backend)
    known = found.known_hashes() if found is not None else {}
    report = AuditReport.from_items(
        str(root), summary, items, detector_label(detector, options or {}), min_score,
        regions_source, COVERED_FRACTION, known_hashes=known, dataset=dataset, source=source,
        method=method, ledger=None if found is None else str(found.path))
    inside = published_ledger(root)
    if inside is not None:  # an older veil's ledger, published with the images
        report.add_finding(Finding(
            inside.relative_to(root).as_posix(), "metadata",
            "veil's obfuscate ledger inside the folder: it records the host name and absolute "
            "paths; run `veil obfuscate` again (it moves the ledger beside the folder) or "
            "delete it before publishing"))
    return report


def _method(found: Ledger | None, method: str | None, options: dict[str, Any] | None
            ) -> tuple[str | None, dict[str, Any]]:
    """The method the outputs were made with: the ledger's, else the one given."""
    if found is None or found.method is None:
        return method, dict(options or {})
    if method is not None and (method != found.method
                               or (options is not None and options != found.options)):
        raise VeilError(f"the ledger {found.path} says the output was made with "
                        f"{found.method} {found.options or ''}; --method/--option must not "
                        "contradict it (leave them out)")
    return found.method, found.options


def _render_settings(found: Ledger) -> dict[str, Any] | None:
    """The obfuscate run's encoder settings, to re-render its exact output."""
    config = found.config
    if "format" not in config:
        return None
    return {"fmt": config["format"], "jpeg_quality": config.get("jpeg_quality", 95),
            "strip_metadata": config.get("strip_metadata", True)}


def _source_keys(keys: Sequence[str], source: Dataset) -> dict[str, str]:
    """Output key -> source key for an output made elsewhere: the same key, or the same
    key with another suffix (a conversion to PNG)."""
    by_stem = {str(PurePosixPath(k).with_suffix("")): k for k in source.keys()}
    mapping = {}
    for key in keys:
        if key not in source:
            match = by_stem.get(str(PurePosixPath(key).with_suffix("")))
            if match is not None:
                mapping[key] = match
    return mapping


def _run_audit(
    dataset: Dataset, task: AuditTask, config: dict[str, Any], *, store: FaceStore | None,
    workers: int | None, shard_size: int, progress: bool, backend: str | Backend | None,
) -> tuple[RunSummary, list[RunItem]]:
    """Run the audit's shards and read every image's record back from its ledger."""
    runner = get_backend(backend)
    workers = workers or runner.default_workers()
    task.threads = runner.threads_per_worker(workers)
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
    # Counted from the ledger, so a resumed audit reports the whole run.
    summary.errors = [(i.key, i.error or "error") for i in items if i.status == "error"]
    summary.counts = Counter()
    return summary, items
