"""Transfer learning: do features learned on face-obfuscated images transfer as well?

``run_transfer(TransferConfig(run=RUN, task="cifar10", data=DIR, mode="linear"))`` is
``veil transfer`` as a function: every backbone a study trained (original and each
obfuscation method) on a downstream task, by linear probe on cached frozen features or
by full fine-tuning; VOC detection with a Faster R-CNN on the backbone. Tasks are read
in their published formats (:mod:`veil.transfer.tasks`).
"""

from veil.transfer.tasks import TASKS, open_task

__all__ = ["TASKS", "TransferConfig", "TransferSummary", "open_task", "run_transfer"]


def __getattr__(name: str) -> object:
    # the run machinery (torch, torchvision detection) loads only when used
    if name in ("TransferConfig", "TransferSummary", "run_transfer"):
        from veil.transfer import run

        return getattr(run, name)
    raise AttributeError(name)
