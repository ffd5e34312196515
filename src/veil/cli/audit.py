"""``veil audit``: the check a curator runs before publishing an obfuscated dataset."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from veil.cli import exit_codes
from veil.cli.common import (
    dataset_options,
    echo_summary,
    fail_cleanly,
    open_source_dataset,
    progress_option,
    sharded_run_options,
    want_progress,
)
from veil.detection import available_detectors
from veil.detection.profiles import available_profiles, profiles_help
from veil.detection.settings import detector_settings
from veil.faces import load_faces, match_faces
from veil.obfuscation import METHODS, parse_method_options
from veil.stages.audit import DEFAULT_MIN_SCORE, audit, find_ledger, regions_from_faces
from veil.store import FaceStore


@click.command("audit", short_help="Prove an obfuscated dataset is clean: bytes, face "
                                   "regions, metadata, residual faces.")
@dataset_options
@click.option("--source", "source_path", default=None, metavar="DATASET",
              help="The dataset that was obfuscated (as given to `veil obfuscate`). With it, "
                   "every file copied unchanged is compared with its source and every face "
                   "region with the source's pixels; without it those pixels cannot be "
                   "verified and the audit is not called clean.")
@click.option("--faces", "faces_source", default=None, metavar="STORE_OR_FILE",
              help="The boxes the images were obfuscated with, for folders not written by "
                   "`veil obfuscate` (it records the regions in its ledger, beside the output "
                   "folder: OUT.veil-ledger.sqlite).")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False), default=None,
              help="The ledger `veil obfuscate --ledger` wrote, if it is not beside DATASET "
                   "(default: DATASET.veil-ledger.sqlite, or an older veil's DATASET/.veil).")
@click.option("--method", type=click.Choice(list(METHODS)), default=None,
              help="How an output without a veil ledger was obfuscated, for the pixel check "
                   "(`veil obfuscate`'s ledger records it; a contradicting --method is an "
                   "error).")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="An option of --method, as given to `veil obfuscate` (repeatable).")
@click.option("--detector", type=click.Choice(available_detectors()), default="centerface",
              show_default=True, help="The detector that looks for residual faces.")
@click.option("--profile", type=click.Choice(available_profiles()), default=None,
              help="Multi-scale settings for the detector (thorough finds the most faces: the "
                   "check to run before a release): " + profiles_help())
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
def audit_command(dataset: Any, source_path: str | None, faces_source: str | None,
                  method: str | None, option_pairs: tuple[str, ...], detector: str,
                  profile: str | None, min_score: float, ledger_path: str | None,
                  report: str, json_path: str | None, store_url: str | None,
                  workers: int | None, shard_size: int, max_pixels: int | None,
                  progress: bool | None, backend: Any = None) -> None:
    """Prove DATASET (an obfuscated output) clean before it is published.

    Each file's bytes are checked against the SHA-256 `veil obfuscate` recorded in its
    ledger; with --source, files copied unchanged against their sources and every face
    region against the source's pixels (hidden at least as well as the method hides it);
    every identifying metadata field is named; faces are re-detected (one outside the
    obfuscated regions is a residual face). The report lists per image what was verified,
    what could not be and why, and what was found. The exit code is 0 only when nothing
    was found, every image was read and every check could run, so the command can gate a
    release pipeline.
    """
    root = dataset.root
    if option_pairs and method is None:
        raise click.UsageError("-o/--option needs --method")
    method_options = parse_method_options(method, list(option_pairs)) if method else None
    source = open_source_dataset(source_path) if source_path else None
    regions, regions_from = None, None
    if faces_source is not None:
        keys = dataset.keys()
        matched = match_faces(load_faces(faces_source), keys, min_share=0.0).snapshot
        regions = regions_from_faces(matched.boxes, keys)
        regions_from = f"the boxes in {faces_source}"
    elif ledger_path is None and find_ledger(root) is None:
        click.echo(f"warning: {root} has no veil ledger and --faces was not given; "
                   "every detected face will be reported", err=True)
    name, options = detector_settings(detector, profile=profile)
    store = FaceStore(store_url) if store_url else None
    try:
        result = audit(
            dataset, regions, ledger=ledger_path, regions_source=regions_from, source=source,
            method=method, method_options=method_options, detector=name,
            options=options, min_score=min_score, store=store, workers=workers,
            shard_size=shard_size, max_pixels=max_pixels, progress=want_progress(progress),
            backend=backend)
    finally:
        if store is not None:
            store.close()
    result.write_html(report)
    if json_path:
        result.write_json(json_path)
    findings = result.findings
    echo_summary(f"audit ({result.detector}) of {root}", result.summary,
                 order=tuple(result.counts))
    for f in findings[:10]:
        click.echo(f"  {f.key}: {f.kind}: {f.detail}", err=True)
    if len(findings) > 10:
        click.echo(f"  ... and {len(findings) - 10} more in the report", err=True)
    for reason, images in result.unverified_reasons()[:5]:
        click.echo(f"  not verified in {images} image(s): {reason}", err=True)
    click.echo(f"{result.verdict.upper()}: report {Path(report).resolve()}")
    if result.summary.interrupted:
        sys.exit(exit_codes.INTERRUPTED)
    sys.exit(exit_codes.OK if result.clean else exit_codes.FINDINGS)
