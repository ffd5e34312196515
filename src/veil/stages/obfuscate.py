"""The obfuscate stage: write a mirrored copy of a dataset with every face obfuscated.

Faceless images are copied byte for byte (or hard-linked); only images with faces are
decoded, obfuscated and re-encoded, JPEGs with their own quantisation tables. Every
file is written atomically, and the run is recorded shard by shard in a ledger inside
the output folder (``OUT/.veil/ledger.sqlite``), so a killed run resumes and produces
exactly the bytes an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from veil.boxes import Box, usable_boxes
from veil.datasets import Dataset
from veil.encoding import (
    atomic_copy,
    atomic_write_bytes,
    encode_image,
    remove_stale_temps,
    strip_identifying_metadata,
)
from veil.errors import ImageError, VeilError
from veil.faces import FacesSnapshot
from veil.images import load_image, probe
from veil.obfuscation import METHODS, affected_region, obfuscate
from veil.runner import (
    DEFAULT_SHARD_SIZE,
    RunSummary,
    ShardResult,
    default_workers,
    execute,
    prepare_run,
)
from veil.store import FaceStore, RunItem

FORMATS = ("keep", "png", "jpeg")
UNANNOTATED_POLICIES = ("error", "copy", "skip")
LEDGER = PurePosixPath(".veil") / "ledger.sqlite"
UNANNOTATED_MESSAGE = (
    "no face record for this image (never detected or reviewed): run `veil detect` on it,"
    " or pass --unannotated copy to copy it unchanged"
)


@dataclass
class ObfuscateTask:
    """Obfuscate or copy each image of a shard into the output folder."""

    root: str
    out: str
    faces: dict[str, list[Box]]
    method: str = "blur"
    options: dict[str, Any] = field(default_factory=dict)
    fmt: str = "keep"
    jpeg_quality: int = 95
    link: bool = False
    strip_metadata: bool = True
    unannotated: str = "error"
    max_pixels: int | None = None

    def setup(self) -> None:
        pass

    def __call__(self, index: int, keys: Sequence[str]) -> ShardResult:
        result = ShardResult(index)
        for key in keys:
            try:
                info = self._one(key)
            except ImageError as exc:
                result.items.append(RunItem(key, status="error", error=str(exc)))
                result.counts["errors"] += 1
                continue
            except OSError as exc:
                message = f"{exc.strerror or exc} ({exc.filename or key})"
                result.items.append(RunItem(key, status="error", error=message))
                result.counts["errors"] += 1
                continue
            if info["action"] == "unannotated":
                result.items.append(RunItem(key, status="error", error=UNANNOTATED_MESSAGE))
                result.counts["errors"] += 1
                continue
            result.counts[info["action"]] += 1
            result.counts["faces"] += info.get("faces", 0)
            result.items.append(RunItem(key, info=info))
        # One flush per shard instead of one fsync per file: the shard is recorded as done
        # only after its files are on disk, so a power cut cannot leave a 'done' shard torn.
        os.sync()
        return result

    def _one(self, key: str) -> dict[str, Any]:
        source = Path(self.root) / key
        boxes = self.faces.get(key)
        if boxes is None:
            if self.unannotated == "error":
                return {"action": "unannotated"}
            if self.unannotated == "skip":
                return {"action": "skipped"}
            boxes = []
        kept, warnings = usable_boxes(boxes)
        info: dict[str, Any] = {"faces": len(kept)}
        if warnings:
            info["warnings"] = warnings
        if not kept and self.fmt != "png":
            info.update(self._copy(key, source))
            return info
        loaded = load_image(source, max_pixels=self.max_pixels)
        outside = [b for b in kept if b.clipped(loaded.width, loaded.height).is_degenerate]
        if outside:
            size = f"{loaded.width}x{loaded.height}"
            info.setdefault("warnings", []).append(
                f"{len(outside)} box(es) lie entirely outside the {size} image"
            )
        image = obfuscate(loaded.image, kept, self.method, **self.options) if kept else loaded.image
        data, suffix = encode_image(image, loaded, fmt=self.fmt, jpeg_quality=self.jpeg_quality)
        target = output_key(key, suffix)
        atomic_write_bytes(Path(self.out) / target, data, durable=False)
        info.update(action="obfuscated" if kept else "converted", output=target)
        if kept:
            info["regions"] = [list(r) for r in affected_region(
                (loaded.width, loaded.height), kept, self.method, **self.options)]
        return info

    def _copy(self, key: str, source: Path) -> dict[str, Any]:
        """Faceless: the source bytes, minus identifying metadata (removed losslessly)."""
        target = Path(self.out) / key
        if self.fmt == "jpeg" and probe(source).format != "JPEG":
            loaded = load_image(source, max_pixels=self.max_pixels)
            data, suffix = encode_image(loaded.image, loaded, fmt="jpeg",
                                        jpeg_quality=self.jpeg_quality)
            target = Path(self.out) / output_key(key, suffix)
            atomic_write_bytes(target, data, durable=False)
            return {"action": "converted", "output": output_key(key, suffix)}
        if self.strip_metadata and probe(source).metadata:
            atomic_write_bytes(target, strip_identifying_metadata(source.read_bytes()),
                               durable=False)
            return {"action": "copied", "output": key, "stripped": True}
        atomic_copy(source, target, link=self.link, durable=False)
        return {"action": "copied", "output": key}


def output_key(key: str, suffix: str) -> str:
    """The output's key: the input key, with the suffix the output format demands."""
    path = PurePosixPath(key)
    if not suffix or path.suffix.lower() == suffix.lower():
        return key
    if suffix.lower() in (".jpg", ".jpeg") and path.suffix.lower() in (".jpg", ".jpeg"):
        return key
    return str(path.with_suffix(suffix))


def _fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def obfuscate_dataset(
    dataset: Dataset,
    faces: FacesSnapshot,
    out: str | Path,
    *,
    method: str = "blur",
    options: dict[str, Any] | None = None,
    fmt: str = "keep",
    jpeg_quality: int = 95,
    link: bool = False,
    strip_metadata: bool = True,
    unannotated: str = "error",
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Write ``dataset`` with every face in ``faces`` obfuscated into ``out``.

    Resumes an interrupted run into the same folder with the same settings; refuses
    to mix the output of different settings in one folder unless ``overwrite``.
    """
    if method not in METHODS:
        raise VeilError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if fmt not in FORMATS:
        raise VeilError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if unannotated not in UNANNOTATED_POLICIES:
        raise VeilError(f"--unannotated must be one of {', '.join(UNANNOTATED_POLICIES)}")
    out = Path(out)
    root = dataset.root.resolve()
    if out.resolve() == root or root in out.resolve().parents:
        raise VeilError(f"the output folder {out} must not be inside the dataset {root}")
    config = {
        "dataset": str(root), "images": len(dataset), "faces": faces.fingerprint(),
        "faces_source": faces.description, "method": method, "options": options or {},
        "format": fmt, "jpeg_quality": jpeg_quality, "link": link,
        "strip_metadata": strip_metadata, "unannotated": unannotated, "max_pixels": max_pixels,
    }
    ledger_path = out / LEDGER
    if overwrite and out.exists():
        shutil.rmtree(out)
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    with FaceStore(ledger_path) as ledger:
        previous = [r for r in ledger.runs("obfuscate") if r.config != config]
        if previous:
            raise VeilError(
                f"{out} already holds output made with other settings (run {previous[-1].id});"
                " use another folder or --overwrite"
            )
        remove_stale_temps(out)
        keys = dataset.keys()
        run_id, done = prepare_run(ledger, "obfuscate", config, keys, shard_size=shard_size)
        task = ObfuscateTask(
            str(dataset.root), str(out), {k: faces.boxes[k] for k in keys if k in faces.boxes},
            method, dict(options or {}), fmt, jpeg_quality, link, strip_metadata, unannotated,
            max_pixels,
        )
        summary = execute(
            ledger, run_id, task, workers=workers or default_workers(), progress=progress,
            description=f"obfuscate ({method})", resumed_shards=done,
        )
        if done:
            _add_earlier_counts(ledger, run_id, summary)
    return summary


def _add_earlier_counts(ledger: FaceStore, run_id: int, summary: RunSummary) -> None:
    """After a resume, report the whole run, not only the shards this process did."""
    counts: Counter[str] = Counter()
    errors = []
    for item in ledger.run_items(run_id):
        if item.status == "error":
            counts["errors"] += 1
            errors.append((item.key, item.error or "error"))
            continue
        info = item.info or {}
        counts[info.get("action", "copied")] += 1
        counts["faces"] += info.get("faces", 0)
    summary.counts = counts
    summary.errors = errors
