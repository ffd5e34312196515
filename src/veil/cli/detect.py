"""``veil detect``: find the faces in a dataset and record them in the face store."""

from __future__ import annotations

import sys
from typing import Any

import click

from veil.cli.common import (
    dataset_options,
    echo_summary,
    exit_code,
    fail_cleanly,
    max_pixels_option,
    progress_option,
    shard_size_option,
    store_option,
    want_progress,
    workers_option,
)
from veil.detection import available_detectors
from veil.stages.detect import detect
from veil.store import FaceStore


@click.command("detect")
@dataset_options
@store_option()
@click.option("--detector", type=click.Choice(available_detectors()), default="centerface",
              show_default=True, help="The face detector.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Minimum detector score for a box (CenterFace default 0.2: low, because "
                   "review removes false alarms and nothing recovers a missed face).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per detector call.")
@workers_option
@shard_size_option
@max_pixels_option
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue an interrupted run with the same settings instead of starting over.")
@progress_option
@fail_cleanly
def detect_command(dataset: Any, store_url: str, detector: str, threshold: float | None,
                   batch_size: int, workers: int | None, shard_size: int, max_pixels: int | None,
                   resume: bool, progress: bool | None) -> None:
    """Detect the faces in every image of DATASET and record them as a detection run.

    Each run is kept: the store's current boxes of an image are its latest review, or
    else its latest detection. Unreadable images become error rows; the run goes on and
    the exit code is 1 when any input failed.
    """
    options = {} if threshold is None else {"threshold": threshold}
    with FaceStore(store_url) as store:
        summary = detect(
            dataset, store, detector=detector, options=options, workers=workers,
            batch_size=batch_size, shard_size=shard_size, max_pixels=max_pixels,
            resume=resume, progress=want_progress(progress),
        )
        echo_summary(f"detect ({detector}) -> {store.display_url}", summary,
                     order=("images", "images with faces", "faces", "errors"))
    sys.exit(exit_code(summary))
