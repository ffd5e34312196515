"""What an audit found, and the JSON and HTML reports a release is judged by.

:func:`veil.audit` (``veil.stages.audit.audit``) returns an :class:`AuditReport`; the
CLI writes the same files from it, so a pipeline that calls the library gets the report
``veil audit`` writes::

    report = veil.audit(veil.open_dataset("out"))
    report.write_json("audit.json")   # report.to_json(): the same dict
    report.write_html("audit.html")   # each residual face with a crop
    if not report.clean: ...
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping
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

Rect = tuple[float, float, float, float]
CROP_SIDE = 220
"""Pixels on the longer side of a finding's crop in the HTML report."""


@dataclass(frozen=True)
class Finding:
    """One thing that leaks: a residual face (with its box and score) or a metadata
    field of an image (``detail`` names it)."""

    key: str
    kind: str  # "face" or "metadata"
    detail: str
    box: Rect | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "detail": self.detail,
                "box": list(self.box) if self.box else None, "score": self.score}


@dataclass
class AuditReport:
    """An audit's outcome: counts and errors (``summary``), ``findings``, and how it
    was run, enough to write the report without the CLI."""

    target: str
    summary: RunSummary
    findings: list[Finding]
    detector: str
    min_score: float
    regions_source: str
    covered_fraction: float
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    dataset: Dataset | None = field(default=None, repr=False, compare=False)
    """The audited images, read again for the HTML report's crops (None: no crops)."""

    @property
    def clean(self) -> bool:
        """Nothing found and every image looked at: an interrupted audit, or one with
        unreadable images or failed shards, is not clean."""
        return not self.findings and self.summary.ok

    @property
    def counts(self) -> dict[str, int]:
        return {name: int(value) for name, value in self.summary.counts.items()}

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, for release pipelines."""
        return {
            "target": self.target, "clean": self.clean, "counts": self.counts,
            "findings": [f.to_dict() for f in self.findings],
            "errors": [{"key": k, "error": e} for k, e in self.summary.errors],
            "interrupted": self.summary.interrupted,
            "failed_shards": [{"shard": i, "error": e} for i, e in self.summary.failed_shards],
            "detector": self.detector, "min_score": self.min_score,
            "regions_source": self.regions_source, "covered_fraction": self.covered_fraction,
            "created": self.created.isoformat(timespec="seconds"), "veil_version": __version__,
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically; returns the path."""
        destination = Path(path)
        atomic_write_bytes(destination, json.dumps(self.to_json(), indent=2).encode())
        return destination

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained HTML report (a crop per residual face when the
        images can be read) to ``path`` atomically; returns the path."""
        metadata: dict[str, list[str]] = defaultdict(list)
        for f in self.findings:
            if f.kind == "metadata":
                metadata[f.key].append(f.detail)
        faces = [{"key": f.key, "detail": f.detail, "crop": self._crop(f),
                  "box": [round(v, 1) for v in f.box or ()]}
                 for f in self.findings if f.kind == "face"]
        return render(
            "audit.html", Path(path), version=__version__, target=self.target,
            created=self.created.strftime("%Y-%m-%d %H:%M UTC"), detector=self.detector,
            min_score=self.min_score, counts=self.counts, clean=self.clean, faces=faces,
            metadata=sorted(metadata.items()), errors=self.summary.errors,
            regions_source=self.regions_source, covered=self.covered_fraction)

    def _crop(self, finding: Finding) -> str | None:
        """The finding with half its size of context around it, as an inline image."""
        if self.dataset is None:
            return None
        image = load_image(self.dataset.reader().read(finding.key)).image
        x0, y0, x1, y1 = finding.box or (0, 0, *image.size)
        pad = 0.5 * max(x1 - x0, y1 - y0)
        box = (max(0, int(x0 - pad)), max(0, int(y0 - pad)),
               min(image.width, int(x1 + pad) + 1), min(image.height, int(y1 + pad) + 1))
        return thumbnail_uri(image.crop(box), max_side=CROP_SIDE)


def detector_label(detector: str, options: Mapping[str, Any]) -> str:
    """How the report names the detector: ``centerface``, or ``centerface, profile
    fast`` for a profile's multi-scale settings."""
    if detector == "multiscale" and "source" in options:
        return f"{options.get('base', 'centerface')}, profile {options['source']}"
    return detector
