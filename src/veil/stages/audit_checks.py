"""The audit of one output image: its bytes, its metadata, its pixels and its faces.

Each check says what it verified, what it could not verify and why, and what it found
(:class:`ImageAudit`); :class:`veil.stages.audit.AuditTask` runs them over a shard.

* **Bytes.** The output's SHA-256 against the one ``veil obfuscate`` recorded in its
  ledger (no source needed); a file copied unchanged against its source's bytes, and one
  copied with its metadata stripped against the stripped source, when the source is
  given. A restored, swapped, re-saved or truncated file is a finding naming what changed.
* **Metadata.** Every identifying field (:mod:`veil.metadata`), one finding per kind.
* **Pixels** (with the source). Outside the obfuscated regions the output must be its
  source's picture; inside, each face box must be hidden at least as well as the method
  hides it (:mod:`veil.obfuscation.verify`; the method's own output is re-rendered from
  the source with the run's settings).
* **Faces.** A strong detection outside the obfuscated regions is a residual face. One
  inside them is for information when its box passed the pixel check, and a finding when
  the check failed or could not run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.boxes import Box
from veil.detection.base import Detector
from veil.errors import ImageError
from veil.evaluation.faces import covered_fraction
from veil.images import load_image
from veil.metadata import describe, group_fields, identifying_fields
from veil.obfuscation import obfuscate
from veil.obfuscation.verify import OUTSIDE_MIN_PSNR, RegionCheck, check_faces, outside_psnr
from veil.stages.audit_ledger import LedgerRecord

__all__ = ["COVERED_FRACTION", "FINDING_KINDS", "ImageAudit", "ImageChecker"]

Rect = tuple[float, float, float, float]
COVERED_FRACTION = 0.5
"""A detection whose area lies at least this much inside obfuscated regions is a face
veil obfuscated (detectors still fire on a blurred face), not a residual."""
FINDING_KINDS = ("bytes", "pixels", "face", "metadata")
FOREIGN_MARGIN = 0.5
"""Outside check for outputs made elsewhere: each box grown by this share of its longer
side on every side is left out (other tools' blurs reach past the box)."""


@dataclass
class ImageAudit:
    """What the audit verified, could not verify and found for one image."""

    key: str
    source_key: str | None = None
    verified: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)  # for information only
    regions: list[dict[str, object]] = field(default_factory=list)  # pixel checks per box
    sha256: str | None = None
    size: int | None = None
    same_as_source: bool = False  # the bytes are proven to be the source's picture

    def find(self, kind: str, detail: str, box: Rect | None = None,
             score: float | None = None) -> dict[str, Any]:
        finding = {"key": self.key, "kind": kind, "detail": detail,
                   "box": list(box) if box else None, "score": score}
        self.findings.append(finding)
        return finding

    def note(self, detail: str, box: Rect, score: float | None) -> None:
        self.notes.append({"key": self.key, "kind": "face", "detail": detail,
                           "box": list(box), "score": score})

    def to_info(self) -> dict[str, Any]:
        """The record the audit's run ledger keeps for the image (JSON)."""
        return {"source_key": self.source_key, "sha256": self.sha256, "bytes": self.size,
                "verified": self.verified, "unverified": self.unverified,
                "findings": self.findings, "notes": self.notes, "regions": self.regions}


@dataclass
class _Pixels:
    """The decoded output and, when the pixel checks ran, their verdict per box."""

    output: np.ndarray
    checks: list[RegionCheck] | None = None  # None: not run (no source, method unknown)
    why_not: str = ""


@dataclass
class ImageChecker:
    """Checks one output image at a time; built once per worker (it holds the detector).

    ``records``: the obfuscate ledger's records by output key (None: no ledger).
    ``source``: reads the source's bytes by source key (None: not given).
    ``boxes``: the face boxes by output key where the ledger does not record them.
    ``method``/``options``: the method the outputs were made with (None: unknown), and
    ``render``: the obfuscate run's settings to re-render its exact output (None: the
    method's pixels are the reference, unencoded).
    """

    regions: Mapping[str, Sequence[Rect]]
    detector: Detector
    min_score: float
    records: Mapping[str, LedgerRecord] | None = None
    source: Any = None  # an ImageReader
    source_keys: Mapping[str, str] = field(default_factory=dict)
    boxes: Mapping[str, Sequence[Rect]] = field(default_factory=dict)
    method: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    render: Mapping[str, Any] | None = None
    max_pixels: int | None = None

    def _regions(self, key: str, record: LedgerRecord | None) -> list[Rect]:
        """The obfuscated regions: those given (``--faces``), else the ledger's."""
        if key in self.regions:
            return list(self.regions[key])
        return list(record.regions) if record is not None else []

    def check(self, key: str, data: bytes) -> ImageAudit:
        """Audit the output ``key`` whose bytes are ``data``. Raises ImageError when the
        output cannot be decoded and nothing else explains why (its bytes unverified)."""
        record = self.records.get(key) if self.records is not None else None
        result = ImageAudit(key, self._source_key(key, record),
                            sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        source = self._read_source(result, record)
        changed = self._check_bytes(result, record, source)
        self._check_metadata(result, data)
        try:
            output = np.asarray(load_image(data, max_pixels=self.max_pixels).image)
        except ImageError as exc:
            if changed is None:
                raise
            changed["detail"] += f"; it does not decode: {exc}"
            return result
        pixels = self._check_pixels(result, record, source, output)
        self._check_faces(result, pixels, self._regions(key, record), record is not None
                          and changed is None and record.sha256 is not None)
        return result

    # ------------------------------------------------------------------ sources

    def _source_key(self, key: str, record: LedgerRecord | None) -> str | None:
        if self.source is None:
            return None
        if record is not None:
            return record.source_key
        return self.source_keys.get(key, key)

    def _read_source(self, result: ImageAudit, record: LedgerRecord | None) -> bytes | None:
        """The source's bytes, when given, readable and the very file veil obfuscated."""
        if result.source_key is None:
            return None
        try:
            source = self.source.read(result.source_key)
        except (OSError, KeyError, ImageError) as exc:
            result.unverified.append(f"source: cannot read {result.source_key} from the "
                                     f"source ({exc}): nothing compared with it")
            return None
        if record is not None and record.source_sha256 is not None \
                and hashlib.sha256(source).hexdigest() != record.source_sha256:
            result.unverified.append(
                f"source: {result.source_key} is not the file veil obfuscated (its SHA-256 "
                "differs from the ledger's): nothing compared with it")
            return None
        return source

    # ------------------------------------------------------------------ bytes

    def _check_bytes(self, result: ImageAudit, record: LedgerRecord | None,
                     source: bytes | None) -> dict[str, Any] | None:
        """Verify the bytes; return the finding when they are not what was written."""
        sha = result.sha256
        if self.records is not None and record is None:
            return result.find("bytes", "not written by veil obfuscate: its ledger has no "
                                        "record of this file (added or renamed since?)")
        if record is not None and record.action == "obfuscated" \
                and record.sha256 is not None and record.sha256 == record.source_sha256:
            return result.find("bytes", "veil obfuscate wrote this image's source unchanged "
                                        "although it had faces to hide")
        if record is not None and record.sha256 is not None:
            if sha == record.sha256:
                result.verified.append(f"bytes: SHA-256 as veil obfuscate wrote them "
                                       f"({record.action})")
            else:
                return result.find("bytes", self._what_changed(result, record, source))
        elif record is not None:
            result.unverified.append("bytes: the ledger records no SHA-256 (written by an "
                                     "older veil)")
        elif source is None:
            result.unverified.append("bytes: no obfuscate ledger to check them against")
        if source is None or (record is not None and record.action != "copied"):
            return None
        source_sha = hashlib.sha256(source).hexdigest()
        if record is not None and record.stripped:
            from veil.encoding import strip_identifying_metadata

            if hashlib.sha256(strip_identifying_metadata(source)).hexdigest() == sha:
                result.verified.append("bytes: the source's, minus its identifying metadata")
                result.same_as_source = True
                return None
            return result.find("bytes", "differs from its source minus its identifying "
                                        "metadata, which is what veil copied")
        if sha == source_sha:
            result.verified.append("bytes: identical to the source (copied unchanged)")
            result.same_as_source = True
            return None
        if record is not None:
            return result.find("bytes", "differs from its source, which veil copied "
                                        "unchanged")
        return None  # made elsewhere: the pixel check compares the pictures

    @staticmethod
    def _what_changed(result: ImageAudit, record: LedgerRecord, source: bytes | None) -> str:
        sha = result.sha256 or ""
        if sha == record.source_sha256 or (
                source is not None and sha == hashlib.sha256(source).hexdigest()):
            return "restored: the file is its own unobfuscated source"
        size = "" if record.size is None else (
            f", {result.size:,} bytes where veil wrote {record.size:,}")
        return (f"changed since veil obfuscate wrote it: SHA-256 {sha[:12]}... where the "
                f"ledger records {(record.sha256 or '')[:12]}...{size}")

    # ------------------------------------------------------------------ metadata

    def _check_metadata(self, result: ImageAudit, data: bytes) -> None:
        try:
            fields = identifying_fields(data)
        except ImageError as exc:
            result.unverified.append(f"metadata: {exc}")
            return
        for kind, names in group_fields(fields):
            result.find("metadata", describe(kind, names))
        if not fields:
            result.verified.append("metadata: no identifying field")

    # ------------------------------------------------------------------ pixels

    def _boxes(self, key: str, record: LedgerRecord | None) -> list[Rect] | None:
        if record is not None and record.boxes is not None:
            return list(record.boxes)
        if key in self.boxes:
            return list(self.boxes[key])
        return [] if record is not None and record.action != "obfuscated" else None

    def _check_pixels(self, result: ImageAudit, record: LedgerRecord | None,
                      source: bytes | None, output: np.ndarray) -> _Pixels:
        boxes = self._boxes(result.key, record)
        pixels = _Pixels(output)
        if result.same_as_source and not boxes:
            return pixels  # the source's own bytes: nothing more to compare
        if source is None:
            pixels.why_not = "no --source" if self.source is None else "the source is unusable"
            if boxes:
                result.unverified.append(f"pixels: {len(boxes)} face region(s) not compared "
                                         f"with their source ({pixels.why_not})")
            return pixels
        try:
            src = np.asarray(load_image(source, max_pixels=self.max_pixels).image)
        except ImageError as exc:
            pixels.why_not = "the source does not decode"
            result.unverified.append(f"pixels: the source does not decode ({exc})")
            return pixels
        if src.shape != output.shape:
            result.find("pixels", f"the output is {output.shape[1]}x{output.shape[0]}, its "
                                  f"source {src.shape[1]}x{src.shape[0]}: not the source's "
                                  "picture")
            pixels.why_not = "the output is not the source's picture"
            return pixels
        self._check_outside(result, record, src, output, boxes or [])
        if not boxes:
            return pixels
        if self.method is None:
            pixels.why_not = "the method is unknown (pass --method)"
            result.unverified.append(f"pixels: {len(boxes)} face region(s) not judged: "
                                     f"{pixels.why_not}")
            return pixels
        reference = self._reference(result, source, src, output, boxes)
        pixels.checks = check_faces(src, output, reference, boxes)
        result.regions = [c.to_dict() for c in pixels.checks]
        failed = [c for c in pixels.checks if not c.ok]
        for check in failed:
            result.find("pixels", f"face region not hidden as {self.method} hides it: "
                                  f"{check.reason}", check.box)
        judged = [c for c in pixels.checks if c.status == "verified"]
        if not failed:
            quiet = len(pixels.checks) - len(judged)
            result.verified.append(
                f"pixels: {len(judged)} face region(s) hidden as {self.method} hides them"
                + (f" ({quiet} with nothing to hide)" if quiet else ""))
        return pixels

    def _check_outside(self, result: ImageAudit, record: LedgerRecord | None,
                       src: np.ndarray, output: np.ndarray, boxes: list[Rect]) -> None:
        rects = [*self._regions(result.key, record), *(record.regions if record else ())]
        exclude = [(int(x0), int(y0), math.ceil(x1), math.ceil(y1)) for x0, y0, x1, y1 in rects]
        if record is None:  # made elsewhere: its method may reach past the boxes
            for x0, y0, x1, y1 in boxes:
                margin = FOREIGN_MARGIN * max(x1 - x0, y1 - y0)
                exclude.append((int(x0 - margin), int(y0 - margin), int(x1 + margin) + 1,
                                int(y1 + margin) + 1))
        psnr = outside_psnr(src, output, exclude)
        if psnr is None:
            result.verified.append("pixels: nothing outside the regions to compare")
        elif psnr < OUTSIDE_MIN_PSNR:
            result.find("pixels", f"outside the obfuscated regions the output is not its "
                                  f"source's picture (PSNR {psnr:.1f} dB < {OUTSIDE_MIN_PSNR:g})")
        else:
            where = "outside the obfuscated regions" if boxes else "everywhere"
            result.verified.append(f"pixels: the source's picture {where} "
                                   f"(PSNR {min(psnr, 99.0):.1f} dB)")

    def _reference(self, result: ImageAudit, source: bytes, src: np.ndarray,
                   output: np.ndarray, boxes: list[Rect]) -> np.ndarray:
        """What the method makes of the source: veil's own output re-rendered with the
        run's settings when the ledger has them, else the method's pixels."""
        faces = [Box(*b) for b in boxes]
        if self.render is not None and result.source_key is not None:
            from veil.stages.obfuscate import ObfuscateTask

            task = ObfuscateTask("", "", {result.source_key: faces}, self.method or "blur",
                                 dict(self.options), max_pixels=self.max_pixels,
                                 unannotated="copy", **self.render)
            try:
                rendered = task.render(result.source_key, source)
            except ImageError:
                rendered = None
            if rendered is not None and rendered.data is not None:
                if hashlib.sha256(rendered.data).hexdigest() == result.sha256:
                    result.verified.append("pixels: the output is exactly what veil makes "
                                           "of this source (re-rendered)")
                    return output  # the same bytes decode to the same pixels
                return np.asarray(load_image(rendered.data, max_pixels=self.max_pixels).image)
        made = obfuscate(src, faces, self.method or "blur", **self.options)
        return np.asarray(made)

    # ------------------------------------------------------------------ faces

    def _check_faces(self, result: ImageAudit, pixels: _Pixels, rects: list[Rect],
                     bytes_verified: bool) -> None:
        regions = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        detections = self.detector.detect([pixels.output])[0]
        for box in detections:
            score = box.score or 0.0
            if score < self.min_score:
                continue
            rect = box.as_xyxy()
            share = covered_fraction(rect, regions)
            if share < COVERED_FRACTION:
                result.find("face", f"face (score {score:.2f}) {100 * share:.0f}% inside "
                                    "obfuscated regions", rect, score)
                continue
            check = _nearest(rect, pixels.checks)
            where = f"face (score {score:.2f}) inside an obfuscated region"
            if check is not None and check.ok:
                result.note(f"{where} whose pixels pass the check ({check.reason}): for "
                            "information", rect, score)
            elif check is not None:
                result.find("face", f"{where} whose pixel check failed", rect, score)
            elif bytes_verified and self.source is None:
                # The file is byte for byte what veil made of the source its ledger names,
                # and the pixel check measures an output against exactly that: it would
                # pass. What is missing is the source to confirm the ledger's record.
                result.note(f"{where} of a file veil obfuscate wrote (SHA-256 verified), "
                            "so its pixels are what the method makes of the source; not "
                            "compared with the source itself (no --source): for "
                            "information", rect, score)
            else:
                why = pixels.why_not or "no face box recorded for it"
                result.find("face", f"{where} whose pixels could not be verified ({why})",
                            rect, score)


def _nearest(rect: Rect, checks: list[RegionCheck] | None) -> RegionCheck | None:
    """The checked face box the detection overlaps most, else the one whose centre is
    nearest (a detection in a blur's feathered margin); None when none was checked."""
    def rank(check: RegionCheck) -> tuple[float, float]:
        x0, y0, x1, y1 = check.box
        w = min(rect[2], x1) - max(rect[0], x0)
        h = min(rect[3], y1) - max(rect[1], y0)
        overlap = w * h if w > 0 and h > 0 else 0.0
        distance = ((x0 + x1 - rect[0] - rect[2]) ** 2 + (y0 + y1 - rect[1] - rect[3]) ** 2)
        return -overlap, distance
    return min(checks, key=rank) if checks else None
