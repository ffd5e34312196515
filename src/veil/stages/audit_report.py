"""What an audit verified and found, and the JSON and HTML reports a release is judged by.

:func:`veil.audit` (``veil.stages.audit.audit``) returns an :class:`AuditReport`; the
CLI writes the same files from it, so a pipeline that calls the library gets the report
``veil audit`` writes::

    report = veil.audit(veil.open_dataset("out"), source=veil.open_dataset("photos"))
    report.write_json("audit.json")   # report.to_json(): the same dict
    report.write_html("audit.html")   # findings with source and output crops side by side
    if not report.clean: ...          # report.verdict says why

Per image the report lists what was verified, what could not be verified and why, what
was found, and detections kept for information (inside regions whose pixels passed).
The verdict is ``clean`` only when nothing was found, every image was read and every
check could run; ``not verified`` when nothing was found but some check could not run
(no source, no ledger, an unknown method); ``not clean`` otherwise.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil import __version__
from veil.files import atomic_write_bytes
from veil.html import render, thumbnail_uri
from veil.images import load_image
from veil.runner import RunSummary

if TYPE_CHECKING:
    from veil.datasets import Dataset
    from veil.store import RunItem

Rect = tuple[float, float, float, float]
CROP_SIDE = 220
"""Pixels on the longer side of a finding's crop in the HTML report."""
HTML_CROPS = 200
"""Findings (and as many notes) shown with crops in the HTML report; the JSON has all."""
HTML_IMAGE_ROWS = 1000
"""Images listed one by one in the HTML report (those with findings first)."""
_COUNT_ORDER = ("images", "clean images", "images not verified", "images with findings",
                "byte findings", "pixel findings", "residual faces", "metadata findings",
                "faces for information", "errors")
_KIND_COUNTS = {"bytes": "byte findings", "pixels": "pixel findings",
                "face": "residual faces", "metadata": "metadata findings"}


@dataclass(frozen=True)
class Finding:
    """One thing that leaks or differs: ``kind`` is ``bytes``, ``pixels``, ``face`` or
    ``metadata``; ``detail`` says what and why (a metadata finding names its fields);
    ``box`` and ``score`` locate a face or a face region."""

    key: str
    kind: str
    detail: str
    box: Rect | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "detail": self.detail,
                "box": list(self.box) if self.box else None, "score": self.score}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        box = d.get("box")
        return cls(d["key"], d["kind"], d["detail"],
                   tuple(box) if box else None, d.get("score"))  # type: ignore[arg-type]


@dataclass
class ImageReport:
    """One image's audit: ``status`` is ``clean``, ``not verified``, ``findings`` or
    ``error``."""

    key: str
    status: str
    source_key: str | None = None
    verified: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    sha256: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "status": self.status, "source_key": self.source_key,
                "sha256": self.sha256, "verified": self.verified,
                "not_verified": self.unverified,
                "findings": [f.to_dict() for f in self.findings],
                "notes": [n.to_dict() for n in self.notes], "regions": self.regions,
                "error": self.error}


@dataclass
class AuditReport:
    """An audit's outcome: per image what was verified and found (``images``), every
    ``findings`` and ``notes`` (for information), the run's ``summary``, and how it was
    run, enough to write the report without the CLI."""

    target: str
    summary: RunSummary
    findings: list[Finding]
    detector: str
    min_score: float
    regions_source: str
    covered_fraction: float
    images: list[ImageReport] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    method: str | None = None
    ledger: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    dataset: Dataset | None = field(default=None, repr=False, compare=False)
    """The audited images, read again for the HTML report's crops (None: no crops)."""
    source: Dataset | None = field(default=None, repr=False, compare=False)
    """The source dataset, for the source side of the crops (None: output crops only)."""

    @classmethod
    def from_items(cls, target: str, summary: RunSummary, items: Sequence[RunItem],
                   detector: str, min_score: float, regions_source: str,
                   covered_fraction: float, *, known_hashes: Mapping[str, str] | None = None,
                   **kwargs: Any) -> AuditReport:
        """The report of an audit run whose per-image records are ``items`` (the records
        :class:`~veil.stages.audit_checks.ImageAudit` writes). ``known_hashes`` (SHA-256
        -> what those bytes are) names what a changed file was swapped with."""
        images = [_image_report(item, known_hashes or {}) for item in items]
        report = cls(target, summary, [f for i in images for f in i.findings], detector,
                     min_score, regions_source, covered_fraction, images,
                     [n for i in images for n in i.notes], **kwargs)
        report.recount()
        return report

    def add_finding(self, finding: Finding) -> None:
        """A finding about the output as a whole (not one of its images)."""
        self.findings.append(finding)
        self.recount()

    def recount(self) -> None:
        """Derive the counts (``summary.counts``) from ``images``, ``findings`` and
        ``notes``."""
        counts = Counter({name: 0 for name in _COUNT_ORDER})
        for image in self.images:
            if image.status == "error":
                counts["errors"] += 1
                continue
            counts["images"] += 1
            counts["clean images"] += image.status == "clean"
            counts["images not verified"] += image.status == "not verified"
            counts["images with findings"] += image.status == "findings"
        for finding in self.findings:
            counts[_KIND_COUNTS.get(finding.kind, "metadata findings")] += 1
        counts["faces for information"] = len(self.notes)
        self.summary.counts = counts

    @property
    def verified(self) -> bool:
        """Every check could run on every image (no source, ledger or method missing)."""
        return not any(i.status == "not verified" or i.unverified for i in self.images)

    @property
    def clean(self) -> bool:
        """Nothing found, every image looked at and every check run: an interrupted audit,
        one with unreadable images or failed shards, or one that could not verify
        everything, is not clean."""
        return not self.findings and self.summary.ok and self.verified

    @property
    def verdict(self) -> str:
        """``clean``, ``not verified`` (nothing found, but not every check could run) or
        ``not clean``."""
        if self.clean:
            return "clean"
        if not self.findings and self.summary.ok:
            return "not verified"
        return "not clean"

    @property
    def counts(self) -> dict[str, int]:
        return {name: int(value) for name, value in self.summary.counts.items()}

    def unverified_reasons(self) -> list[tuple[str, int]]:
        """Each reason some check could not run, with the number of images it holds for."""
        reasons = Counter(_reason(text) for i in self.images for text in i.unverified)
        return reasons.most_common()

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, for release pipelines."""
        return {
            "target": self.target, "verdict": self.verdict, "clean": self.clean,
            "verified": self.verified, "counts": self.counts,
            "not_verified": [{"reason": r, "images": n} for r, n in self.unverified_reasons()],
            "findings": [f.to_dict() for f in self.findings],
            "notes": [n.to_dict() for n in self.notes],
            "images": [i.to_dict() for i in self.images],
            "errors": [{"key": k, "error": e} for k, e in self.summary.errors],
            "interrupted": self.summary.interrupted,
            "failed_shards": [{"shard": i, "error": e} for i, e in self.summary.failed_shards],
            "detector": self.detector, "min_score": self.min_score, "method": self.method,
            "ledger": self.ledger,
            "source": None if self.source is None else str(self.source.root),
            "regions_source": self.regions_source, "covered_fraction": self.covered_fraction,
            "created": self.created.isoformat(timespec="seconds"), "veil_version": __version__,
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically; returns the path."""
        destination = Path(path)
        atomic_write_bytes(destination, json.dumps(self.to_json(), indent=2).encode())
        return destination

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained HTML report to ``path`` atomically: every finding with
        crops of its region in the source and the output side by side (when they can be
        read), the detections kept for information, what could not be verified, and per
        image what was verified; returns the path."""
        by_key = {i.key: i for i in self.images}
        located = [f for f in self.findings if f.box is not None]
        shown = [self._figure(f, by_key.get(f.key)) for f in located[:HTML_CROPS]]
        notes = [self._figure(n, by_key.get(n.key)) for n in self.notes[:HTML_CROPS]]
        other: dict[str, list[Finding]] = {}
        for f in self.findings:
            if f.box is None:
                other.setdefault(f.key, []).append(f)
        order = {"findings": 0, "not verified": 1, "error": 2, "clean": 3}
        rows = sorted(self.images, key=lambda i: (order.get(i.status, 4), i.key))
        return render(
            "audit.html", Path(path), version=__version__, target=self.target,
            created=self.created.strftime("%Y-%m-%d %H:%M UTC"), detector=self.detector,
            min_score=self.min_score, counts=self.counts, verdict=self.verdict,
            located=shown, located_total=len(located), notes=notes,
            notes_total=len(self.notes), other=sorted(other.items()),
            unverified=self.unverified_reasons(), errors=self.summary.errors,
            rows=rows[:HTML_IMAGE_ROWS], rows_total=len(rows), method=self.method,
            ledger=self.ledger, source=None if self.source is None else str(self.source.root),
            regions_source=self.regions_source, covered=self.covered_fraction)

    def _figure(self, finding: Finding, image: ImageReport | None) -> dict[str, Any]:
        source_key = image.source_key if image is not None else None
        return {"key": finding.key, "kind": finding.kind, "detail": finding.detail,
                "box": [round(v, 1) for v in finding.box or ()],
                "output": _crop(self.dataset, finding.key, finding.box),
                "source": _crop(self.source, source_key, finding.box)}


def _crop(dataset: Dataset | None, key: str | None, box: Rect | None) -> str | None:
    """The box with half its size of context around it, as an inline image (None when
    there is nothing to read or it cannot be read)."""
    if dataset is None or key is None:
        return None
    try:
        image = load_image(dataset.reader().read(key)).image
    except Exception:  # an unreadable image is reported as such elsewhere
        return None
    x0, y0, x1, y1 = box or (0, 0, *image.size)
    pad = 0.5 * max(x1 - x0, y1 - y0)
    region = (max(0, int(x0 - pad)), max(0, int(y0 - pad)),
              min(image.width, int(x1 + pad) + 1), min(image.height, int(y1 + pad) + 1))
    if region[0] >= region[2] or region[1] >= region[3]:
        return None
    return thumbnail_uri(image.crop(region), max_side=CROP_SIDE)


def _reason(text: str) -> str:
    """An unverified line without its per-image numbers, to group images by reason."""
    head, _, tail = text.partition(": ")
    words = [w for w in tail.split() if not w[:1].isdigit()]
    return f"{head}: {' '.join(words)}" if tail else text


def _image_report(item: RunItem, known: Mapping[str, str]) -> ImageReport:
    if item.status != "ok":
        return ImageReport(item.key, "error", error=item.error or "error")
    info = item.info or {}
    findings = [Finding.from_dict(f) for f in info.get("findings", [])]
    sha = info.get("sha256")
    what = known.get(sha) if isinstance(sha, str) else None
    if what is not None and not what.endswith((f" of {item.key}", f" for {item.key}")):
        findings = [Finding(f.key, f.kind, f"swapped: the file is {what} ({f.detail})",
                            f.box, f.score)
                    if f.kind == "bytes" and f.detail.startswith("changed since") else f
                    for f in findings]
    unverified = list(info.get("unverified", []))
    status = "findings" if findings else "not verified" if unverified else "clean"
    return ImageReport(item.key, status, info.get("source_key"),
                       list(info.get("verified", [])), unverified, findings,
                       [Finding.from_dict(n) for n in info.get("notes", [])],
                       list(info.get("regions", [])), sha)


def detector_label(detector: str, options: Mapping[str, Any]) -> str:
    """How the report names the detector: ``centerface``, or ``centerface, profile
    fast`` for a profile's multi-scale settings."""
    if detector == "multiscale" and "source" in options:
        return f"{options.get('base', 'centerface')}, profile {options['source']}"
    return detector
