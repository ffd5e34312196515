"""Face detectors behind one interface, built by name.

``create_detector("centerface", threshold=0.2)`` returns an object whose
``detect(images)`` gives one list of :class:`veil.boxes.Box` per RGB image.
"""

from veil.detection.base import (
    Detector,
    available_detectors,
    create_detector,
    register_detector,
)
from veil.detection.settings import detector_settings

__all__ = ["Detector", "available_detectors", "create_detector", "detector_settings",
           "register_detector"]
