"""veil: make image datasets face-private and measure what that costs.

The Python API mirrors the CLI verbs, one function each::

    import veil

    data = veil.open_dataset("imagenette")
    with veil.FaceStore("faces.sqlite") as store:
        veil.detect(data, store)                                  # veil detect
    faces = veil.load_faces("faces.sqlite")
    veil.obfuscate_dataset(data, faces, "imagenette-blurred")     # veil obfuscate
    report = veil.audit(veil.open_dataset("imagenette-blurred"), source=data)  # veil audit
    report.write_html("audit.html"); report.write_json("audit.json")
    blurred = veil.obfuscate(image, boxes, "blur")                # one image

Names load on first use, so ``import veil`` stays cheap (torch, onnxruntime and the web
stack are imported only by the parts that need them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from veil.boxes import Box

if TYPE_CHECKING:  # the lazy names below, as type checkers and editors see them
    # ("X as X": an explicit re-export)
    from veil.analysis.pipeline import analyze as analyze
    from veil.datasets import Dataset as Dataset
    from veil.datasets import open_dataset as open_dataset
    from veil.demo import run_demo as run_demo
    from veil.detection import create_detector as create_detector
    from veil.detection import detector_settings as detector_settings
    from veil.evaluation.faces import evaluate_faces as evaluate_faces
    from veil.faces import load_faces as load_faces
    from veil.images import load_image as load_image
    from veil.obfuscation import obfuscate as obfuscate
    from veil.report.study import build_report as build_report
    from veil.stages.audit import audit as audit
    from veil.stages.audit_report import AuditReport as AuditReport
    from veil.stages.detect import detect as detect
    from veil.stages.obfuscate import obfuscate_dataset as obfuscate_dataset
    from veil.store import FaceStore as FaceStore
    from veil.study import StudyConfig as StudyConfig
    from veil.study import run_study as run_study
    from veil.transfer import TransferConfig as TransferConfig
    from veil.transfer import run_transfer as run_transfer
    from veil.transforms import Obfuscate as Obfuscate

__version__ = "0.1.0"

#: public name -> "module:attribute"
_API: dict[str, str] = {
    "open_dataset": "veil.datasets:open_dataset",
    "Dataset": "veil.datasets:Dataset",
    "FaceStore": "veil.store:FaceStore",
    "load_faces": "veil.faces:load_faces",
    "load_image": "veil.images:load_image",
    "detect": "veil.stages.detect:detect",
    "create_detector": "veil.detection:create_detector",
    "detector_settings": "veil.detection.settings:detector_settings",
    "obfuscate": "veil.obfuscation:obfuscate",
    "obfuscate_dataset": "veil.stages.obfuscate:obfuscate_dataset",
    "audit": "veil.stages.audit:audit",
    "AuditReport": "veil.stages.audit_report:AuditReport",
    "evaluate_faces": "veil.evaluation.faces:evaluate_faces",
    "Obfuscate": "veil.transforms:Obfuscate",
    "StudyConfig": "veil.study:StudyConfig",
    "run_study": "veil.study:run_study",
    "TransferConfig": "veil.transfer:TransferConfig",
    "run_transfer": "veil.transfer:run_transfer",
    "analyze": "veil.analysis.pipeline:analyze",
    "build_report": "veil.report.study:build_report",
    "run_demo": "veil.demo:run_demo",
}

__all__ = ["Box", "__version__", *_API]


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'veil' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
