"""Number formatting and table writing shared by the analysis modules.

Every table is written twice: CSV with full precision for machines, markdown with the
paper's precision for people.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from veil.files import atomic_write_bytes


def fmt(value: float | None, decimals: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}"


def fmt_mean_sem(mean: float, sem: float, decimals: int = 3, sep: str = " ± ") -> str:
    """``75.000 ± 0.258``; the mean alone when the SEM is undefined (one seed)."""
    if math.isnan(sem):
        return fmt(mean, decimals)
    return f"{fmt(mean, decimals)}{sep}{fmt(sem, decimals)}"


def fmt_ci(low: float, high: float, decimals: int = 3) -> str:
    return f"[{fmt(low, decimals)}, {fmt(high, decimals)}]"


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    if p < 1e-4:
        return "<0.0001"
    return f"{p:.4f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one letter per column (l or r, default: first
    column left, the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table for a terminal: first column left, the others right."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out) + "\n"


def write_text(path: Path, text: str) -> Path:
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def write_csv(path: Path, frame: Any) -> Path:
    """A pandas DataFrame as CSV, atomically."""
    return write_text(path, frame.to_csv(index=False))
