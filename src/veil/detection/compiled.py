"""Optional numba-compiled loops of the detection pipeline (NMS, box fusion).

Each kernel lives in a ``_*_kernel`` module that imports numba; importing it is what
compiles (or loads from numba's cache). Callers fall back to their numpy loop, with the
same results, where numba is absent, refuses (no writable cache folder), or the user set
``VEIL_NO_NUMBA=1``.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any


def compiled_kernel(module: str, name: str, what: str) -> Any | None:
    """``module.name`` (a numba-compiled function), or None where it cannot be had;
    ``what`` names the step in the warning a refusing numba gives."""
    if os.environ.get("VEIL_NO_NUMBA", "") not in ("", "0"):
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None
    except RuntimeError as exc:  # e.g. numba finds nowhere writable for its cache
        warnings.warn(f"{what} runs without numba ({exc})", RuntimeWarning, stacklevel=3)
        return None
