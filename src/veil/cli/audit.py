"""``veil audit``: the check a curator runs before publishing an obfuscated dataset."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from veil import __version__
from veil.cli import exit_codes
from veil.cli.common import (
    dataset_options,
    echo_summary,
    fail_cleanly,
    progress_option,
    sharded_run_options,
    want_progress,
)
from veil.cli.detect import detector_settings
from veil.detection import available_detectors
from veil.detection.profiles import available_profiles
from veil.faces import load_faces, match_faces
from veil.files import atomic_write_bytes
from veil.images import load_image
from veil.report import render, thumbnail_uri
from veil.stages.audit import (
    COVERED_FRACTION,
    DEFAULT_MIN_SCORE,
    Finding,
    audit,
    find_ledger,
    published_ledger,
    regions_from_faces,
    regions_from_ledger,
)
from veil.store import FaceStore


def _crop(dataset: Any, finding: Finding) -> str:
    """The finding with some context around it, as an inline image."""
    image = load_image(dataset.reader().read(finding.key)).image
    x0, y0, x1, y1 = finding.box or (0, 0, *image.size)
    pad = 0.5 * max(x1 - x0, y1 - y0)
    box = (max(0, int(x0 - pad)), max(0, int(y0 - pad)),
           min(image.width, int(x1 + pad) + 1), min(image.height, int(y1 + pad) + 1))
    return thumbnail_uri(image.crop(box), max_side=220)


@click.command("audit", short_help="Prove an obfuscated dataset is clean: residual faces, "
                                   "leaking metadata.")
@dataset_options
@click.option("--faces", "faces_source", default=None, metavar="STORE_OR_FILE",
              help="The boxes the images were obfuscated with, for folders not written by "
                   "`veil obfuscate` (it records the regions in its ledger, beside the output "
                   "folder: OUT.veil-ledger.sqlite).")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False), default=None,
              help="The ledger `veil obfuscate --ledger` wrote, if it is not beside DATASET "
                   "(default: DATASET.veil-ledger.sqlite, or an older veil's DATASET/.veil).")
@click.option("--detector", type=click.Choice(available_detectors()), default="centerface",
              show_default=True, help="The detector that looks for residual faces.")
@click.option("--profile", type=click.Choice(available_profiles()), default=None,
              help="Multi-scale settings for the detector: 'fast', or 'thorough' (slow, finds "
                   "the most faces: the check to run before a release).")
@click.option("--min-score", type=click.FloatRange(0, 1), default=DEFAULT_MIN_SCORE,
              show_default=True, help="Detections below this score are not reported.")
@click.option("--report", type=click.Path(dir_okay=False), default="audit-report.html",
              show_default=True, help="Where to write the HTML report (each finding with a crop).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the findings as JSON, for release pipelines.")
@click.option("--store", "store_url", default=None,
              help="Record the audit as a run in this face store (then it resumes if "
                   "interrupted).")
@sharded_run_options
@progress_option
@fail_cleanly
def audit_command(dataset: Any, faces_source: str | None, detector: str, profile: str | None,
                  min_score: float, ledger_path: str | None,
                  report: str, json_path: str | None, store_url: str | None,
                  workers: int | None, shard_size: int, max_pixels: int | None,
                  progress: bool | None, backend: Any = None) -> None:
    """Re-detect faces in DATASET (an obfuscated output) and flag identifying metadata.

    A residual face is a detection that is not inside a region veil obfuscated. The exit
    code is 0 only when nothing is found and every image was read, so the command can
    gate a release pipeline.
    """
    root = dataset.root
    ledger = Path(ledger_path) if ledger_path else None
    regions = regions_from_ledger(root, ledger)
    source = f"the obfuscate ledger {find_ledger(root, ledger)}"
    if ledger is not None and regions is None and faces_source is None:
        raise click.UsageError(f"--ledger {ledger_path}: no finished obfuscate run there")
    if faces_source is not None:
        keys = dataset.keys()
        matched = match_faces(load_faces(faces_source), keys, min_share=0.0).snapshot
        regions = regions_from_faces(matched.boxes, keys)
        source = f"the boxes in {faces_source}"
    elif regions is None:
        regions, source = {}, "none (no ledger and no --faces): every detection is reported"
        click.echo(f"warning: {root} has no veil ledger and --faces was not given; "
                   "every detected face will be reported", err=True)
    name, options = detector_settings(detector, None, profile, None, None, None, None)
    label = f"{detector}, profile {profile}" if profile else detector
    store = FaceStore(store_url) if store_url else None
    try:
        summary, findings = audit(
            dataset, regions, detector=name, options=options, min_score=min_score, store=store,
            workers=workers, shard_size=shard_size, max_pixels=max_pixels,
            progress=want_progress(progress), backend=backend)
    finally:
        if store is not None:
            store.close()
    inside = published_ledger(root)
    if inside is not None:  # an older veil's ledger, published with the images
        findings.append(Finding(
            inside.relative_to(root).as_posix(), "metadata",
            "veil's obfuscate ledger inside the folder: it records the host name and absolute "
            "paths; run `veil obfuscate` again (it moves the ledger beside the folder) or "
            "delete it before publishing"))
        summary.counts["metadata findings"] += 1
    metadata: dict[str, list[str]] = defaultdict(list)
    for f in findings:
        if f.kind == "metadata":
            metadata[f.key].append(f.detail)
    faces = [{"key": f.key, "detail": f.detail, "crop": _crop(dataset, f),
              "box": [round(v, 1) for v in f.box or ()]} for f in findings if f.kind == "face"]
    # an interrupted audit, or one with failed shards, has not looked at every image
    clean = not findings and summary.ok
    render("audit.html", Path(report), version=__version__, target=str(root),
           created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), detector=label,
           min_score=min_score, counts=dict(summary.counts), clean=clean, faces=faces,
           metadata=sorted(metadata.items()), errors=summary.errors,
           regions_source=source, covered=COVERED_FRACTION)
    if json_path:
        payload = {"target": str(root), "clean": clean, "counts": dict(summary.counts),
                   "findings": [f.to_dict() for f in findings],
                   "errors": [{"key": k, "error": e} for k, e in summary.errors]}
        atomic_write_bytes(Path(json_path), json.dumps(payload, indent=2).encode())
    echo_summary(f"audit ({label}) of {root}", summary,
                 order=("images", "clean images", "residual faces", "metadata findings",
                        "errors"))
    for f in findings[:10]:
        click.echo(f"  {f.key}: {f.detail}", err=True)
    if len(findings) > 10:
        click.echo(f"  ... and {len(findings) - 10} more in the report", err=True)
    click.echo(f"{'CLEAN' if clean else 'NOT CLEAN'}: report {Path(report).resolve()}")
    if summary.interrupted:
        sys.exit(exit_codes.INTERRUPTED)
    sys.exit(exit_codes.OK if clean else exit_codes.FINDINGS)
