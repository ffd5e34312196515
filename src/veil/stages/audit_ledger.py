"""What ``veil obfuscate`` recorded about each output file, as the audit reads it.

The obfuscate ledger (``OUT.veil-ledger.sqlite`` beside the output, see
:func:`veil.stages.obfuscate.ledger_path`) holds one record per image of its newest run:
the output key, what was done (obfuscated, copied, converted), the face boxes and the
regions the method changed, and the SHA-256 and size of the output and the SHA-256 of
its source. The audit proves each published file against it and, given the source,
re-renders the method's own output from the run's settings.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.store import FaceStore

__all__ = ["Ledger", "LedgerReader", "LedgerRecord", "find_ledger", "published_ledger",
           "read_ledger"]

Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class LedgerRecord:
    """One output file as ``veil obfuscate`` recorded it (hashes are None in a ledger
    an older veil wrote)."""

    source_key: str
    action: str  # obfuscated, copied, converted
    sha256: str | None = None
    source_sha256: str | None = None
    size: int | None = None
    regions: tuple[Rect, ...] = ()
    boxes: tuple[Rect, ...] | None = None  # None: not recorded (an older veil)
    stripped: bool = False  # copied with identifying metadata removed losslessly


@dataclass
class Ledger:
    """The newest finished obfuscate run of an output (``run_id``): its settings and its
    records by output key."""

    path: Path
    config: dict[str, Any]
    records: dict[str, LedgerRecord] = field(default_factory=dict)
    run_id: int = 0

    def reader(self) -> LedgerReader:
        """What a worker needs to read its shard's records itself (the whole ledger is
        not shipped to every worker: it holds ~300 bytes an image)."""
        return LedgerReader(str(self.path), self.run_id,
                            {out: r.source_key for out, r in self.records.items()
                             if out != r.source_key})

    @property
    def method(self) -> str | None:
        return self.config.get("method")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.config.get("options") or {})

    def regions(self) -> dict[str, list[Rect]]:
        return {key: list(record.regions) for key, record in self.records.items()}

    def known_hashes(self) -> dict[str, str]:
        """SHA-256 -> what a file with those bytes is (``the unobfuscated source of K``,
        ``veil's output for K``): names a file that was swapped in."""
        known: dict[str, str] = {}
        for key, record in self.records.items():
            if record.sha256:
                known.setdefault(record.sha256, f"veil's output for {key}")
            if record.source_sha256 and record.source_sha256 != record.sha256:
                known[record.source_sha256] = f"the unobfuscated source of {key}"
        return known


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


def read_ledger(out: Path, ledger: Path | None = None) -> Ledger | None:
    """The newest finished obfuscate run recorded for ``out`` (its ledger as
    :func:`find_ledger` finds it); None without a ledger or a finished run."""
    path = find_ledger(out, ledger)
    if path is None:
        return None
    with FaceStore(path, create=False) as store:
        runs = [r for r in store.runs("obfuscate") if r.status == "done"]
        if not runs:
            return None
        found = Ledger(path, dict(runs[-1].config), run_id=runs[-1].id)
        for item in store.run_items(runs[-1].id, status="ok"):
            record = _record(item.key, item.info or {})
            if record is not None:
                found.records[(item.info or {}).get("output", item.key)] = record
        return found


@dataclass(frozen=True)
class LedgerReader:
    """Reads the records of a few output keys straight from the ledger file (read-only,
    SQLite's own indexes), in any worker that sees the file at ``path``."""

    path: str
    run_id: int
    renamed: Mapping[str, str]  # output key -> source key, where the two differ

    def records(self, keys: Sequence[str]) -> dict[str, LedgerRecord]:
        """The records of the output ``keys`` that the run wrote (others are absent)."""
        wanted = {self.renamed.get(key, key): key for key in keys}
        found: dict[str, LedgerRecord] = {}
        names = list(wanted)
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as db:
            for start in range(0, len(names), 500):
                chunk = names[start:start + 500]
                rows = db.execute(
                    'SELECT im."key", ri.info FROM run_items ri JOIN images im '
                    "ON im.id = ri.image_id WHERE ri.run_id = ? AND ri.status = 'ok' "
                    f'AND im."key" IN ({", ".join("?" * len(chunk))})', (self.run_id, *chunk))
                for key, text in rows:
                    info = json.loads(text) if text else {}
                    record = _record(key, info)
                    if record is not None and info.get("output", key) == wanted[key]:
                        found[wanted[key]] = record
        return found


def _record(key: str, info: Mapping[str, Any]) -> LedgerRecord | None:
    """A ledger item's record, None for an image nothing was written for (skipped)."""
    if info.get("action") not in ("obfuscated", "copied", "converted"):
        return None
    boxes = info.get("boxes")
    return LedgerRecord(
        key, info["action"], info.get("sha256"), info.get("source_sha256"), info.get("bytes"),
        tuple(_rect(r) for r in info.get("regions", [])),
        None if boxes is None and info["action"] == "obfuscated" else
        tuple(_rect(b) for b in boxes or []),
        bool(info.get("stripped")))


def _rect(values: list[float]) -> Rect:
    x0, y0, x1, y1 = values
    return float(x0), float(y0), float(x1), float(y1)
