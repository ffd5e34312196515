"""The analysis plots as PNG files.

matplotlib's object API with the Agg canvas only (no pyplot, no global backend), so
plotting works headless and never touches a caller's matplotlib state.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from veil.files import atomic_write_bytes

DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_drops(rows: Sequence[Any], path: Path) -> Path:
    """Top-1 and top-5 drop per arch with its 95% CI (seeds and images), one panel per
    comparison."""
    groups: dict[str, list[Any]] = {}
    for r in rows:
        groups.setdefault(r.label, []).append(r)
    fig = Figure(figsize=(max(6.0, 0.7 * max(len(g) for g in groups.values()) + 3),
                          2.8 * len(groups)))
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (label, group) in zip(axes, groups.items(), strict=True):
        x = np.arange(len(group))
        for offset, metric, color in ((-0.18, "top1", "#0a64d6"), (0.18, "top5", "#ff9f0a")):
            drops = np.array([getattr(r, metric).drop for r in group])
            low = np.array([getattr(r, metric).ci_low for r in group])
            high = np.array([getattr(r, metric).ci_high for r in group])
            err = np.nan_to_num(np.vstack([drops - low, high - drops]), nan=0.0).clip(0)
            ax.bar(x + offset, drops, width=0.36, color=color, label=metric.replace("top", "top-"))
            ax.errorbar(x + offset, drops, yerr=err, fmt="none", ecolor="black", capsize=3,
                        linewidth=1)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlim(-0.7, len(group) - 0.3)
        ax.set_xticks(x, [r.arch for r in group], rotation=30, ha="right")
        ax.set_ylabel("drop (points)")
        ax.set_title(f"{label}: original - obfuscated, 95% CI")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_faces_per_category(shares: Sequence[float], path: Path) -> Path:
    """Fig. 2 left: categories sorted by their share of images with faces."""
    values = np.sort(np.asarray([s for s in shares if not math.isnan(s)]))[::-1]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.scatter(np.arange(len(values)), values, s=8)
    for level in (0.5, 0.25):
        count = int((values >= level).sum())
        if count:
            ax.hlines(level, 0, count, colors="grey", linestyles="--", linewidth=0.8)
            ax.vlines(count, 0, level, colors="grey", linestyles="--", linewidth=0.8)
            ax.annotate(f"{count} >= {level:.0%}", (count, level), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlim(0, max(1, len(values)))
    ax.set_ylim(0, 1)
    ax.set_xlabel("categories, sorted")
    ax.set_ylabel("share of images with faces")
    return _save(fig, path)


def plot_faces_per_image(histogram: Sequence[tuple[str, int]], path: Path) -> Path:
    """Fig. 2 right: how many faces an image with faces has."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    labels = [h[0] for h in histogram]
    ax.bar(labels, [h[1] for h in histogram], color="#0a64d6")
    ax.set_xlabel("faces per image")
    ax.set_ylabel("images")
    return _save(fig, path)


def plot_correlation(method: str, data: Any, records: Sequence[dict[str, Any]],
                     path: Path) -> Path:
    """Scatter of each category's drop (val) against its face share and mean face area,
    per face split (val, train)."""
    pairs = [(r["drop"], r["face_variable"], r) for r in records if r["method"] == method]
    cols = 2
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(9, 3.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax, (drop, variable, rec) in zip(axes, pairs, strict=False):
        split = rec.get("face_split", "train")
        column = f"{variable}_val" if split == "val" else variable
        ax.scatter(data[column], data[drop], s=10, alpha=0.7)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel(f"{variable.replace('_', ' ')} ({split} images)")
        ax.set_ylabel(f"{drop.replace('_', ' ')} on val (points)")
        rho, r = rec["spearman"], rec["pearson"]
        if math.isnan(rho) or math.isnan(r):
            ax.set_title("no correlation defined (a constant or too few values)", fontsize=9)
        else:
            sp = rec.get("spearman_p_bh", rec["spearman_p"])
            pp = rec.get("pearson_p_bh", rec["pearson_p"])
            ax.set_title(f"rho={rho:.2f} (p BH={sp:.2g}), r={r:.2f} (p BH={pp:.2g})",
                         fontsize=9)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle(f"{method}: category drop vs faces")
    fig.tight_layout()
    return _save(fig, path)


def plot_affected(most: Any, least: Any, column: str, method: str, path: Path) -> Path:
    """Horizontal bars: the most and the least affected categories."""
    both = list(most.itertuples()) + list(least.itertuples())[::-1]
    fig = Figure(figsize=(7, 0.28 * len(both) + 1.2))
    ax = fig.subplots()
    values = [getattr(r, column) for r in both]
    colors = ["#c9184a" if v > 0 else "#2a9d8f" for v in values]
    y = np.arange(len(both))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, [str(r.name) for r in both], fontsize=8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"{column.replace('_', ' ')} (points, original - {method})")
    ax.set_title(f"{method}: most (top) and least (bottom) affected categories")
    fig.tight_layout()
    return _save(fig, path)


def image_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str],
               row_labels: Sequence[str], path: Path) -> Path:
    """A grid of uint8 RGB arrays with column titles and row labels."""
    n_rows, n_cols = len(rows), len(titles)
    fig = Figure(figsize=(2.3 * n_cols, 2.4 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, images in enumerate(rows):
        for j, image in enumerate(images):
            ax = axes[i, j]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
