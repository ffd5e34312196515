"""From a user's detection settings to a registered detector and its options.

``veil detect`` and ``veil audit`` (and scripts, benchmarks) describe a detector the
same way: a base detector, an optional profile, and test-time augmentation overrides.
:func:`detector_settings` turns that description into the ``(name, options)`` pair
:func:`veil.detection.create_detector` and the stages take, so every caller gets the same
detector for the same words. Pure: nothing is loaded here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from veil.detection.profiles import available_profiles, profile_options
from veil.errors import VeilError

MAX_SCALE = 8.0
"""The largest image scale a multi-scale view may use (an 8x upsample is already ~64x
the pixels)."""


def parse_scales(text: str) -> tuple[float, ...]:
    """Scales written as a user types them, ``"1,2"`` -> ``(1.0, 2.0)``."""
    try:
        scales = tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise VeilError(f"expected numbers separated by commas, got {text!r}") from None
    return _checked_scales(scales, text)


def _checked_scales(scales: Sequence[float], shown: object) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or any(not 0 < s <= MAX_SCALE for s in scales):
        raise VeilError(f"each scale must be in (0, {MAX_SCALE:g}], got {shown!r}")
    return scales


def _is_multiscale(detector: str) -> bool:
    return detector == "multiscale" or detector in available_profiles()


def detector_settings(
    detector: str = "centerface",
    *,
    threshold: float | None = None,
    profile: str | None = None,
    scales: Sequence[float] | None = None,
    flip: bool | None = None,
    tile_size: int | None = None,
    fusion: str | None = None,
    fusion_score: str | None = None,
    dedupe_iou: float | None = None,
    device: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The registered detector name and options these settings ask for.

    A ``profile``, or any augmentation setting (``scales`` to ``dedupe_iou``), wraps
    ``detector`` in the multi-scale detector; otherwise ``detector`` runs alone with
    ``threshold``. ``None`` means "not set": the profile's value (or the detector's
    default) stands. ``device`` goes to the detector that runs the network (the base
    detector of a multi-scale one). Raises :class:`~veil.errors.VeilError` for
    settings that contradict each other.
    """
    augment: dict[str, Any] = {
        "scales": None if scales is None else _checked_scales(scales, scales),
        "flip": flip, "tile_size": tile_size, "fusion": fusion,
        "fusion_score": fusion_score, "dedupe_iou": dedupe_iou}
    on_device = {} if device is None else {"device": device}
    if profile is None and all(v is None for v in augment.values()):
        plain = {} if threshold is None else {"threshold": threshold}
        if on_device and _is_multiscale(detector):
            return detector, {**plain, "base_options": on_device}
        return detector, {**plain, **on_device}
    if on_device:
        augment["base_options"] = on_device
    if _is_multiscale(detector):
        raise VeilError(f"detector {detector!r} is already multi-scale; pick a base detector "
                        "such as centerface, and a profile (--profile) for its settings")
    if profile is not None:
        return "multiscale", profile_options(profile, base=detector, threshold=threshold,
                                             **augment)
    options = {"base": detector, **{k: v for k, v in augment.items() if v is not None}}
    if threshold is not None:
        options["threshold"] = threshold
    return "multiscale", options
