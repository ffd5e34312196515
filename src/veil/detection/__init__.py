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

__all__ = ["Detector", "available_detectors", "create_detector", "register_detector"]
