"""The transfer table: do backbones trained on obfuscated images transfer as well?

Reads the folders ``veil transfer`` wrote (``transfer.json``, ``results.json``, and each
backbone's ``predictions.parquet``, through :mod:`veil.transfer.results`) and compares,
per task, mode, architecture and method, the backbones trained on original images with
those trained on obfuscated ones:

- the metric per seed, then mean ± SEM over seeds (ddof=1), in percentage points;
- the difference original - obfuscated (positive: the obfuscated backbone transfers
  worse) with a 95% CI over *seeds and test images*
  (:func:`veil.analysis.stats.seed_image_interval`: a seed-paired t interval, df =
  seeds - 1, whose SE also carries the image part). Every backbone of a transfer folder is
  tested on the same images. For accuracy-type metrics (CelebA: the share of the 40
  attributes right) the image part is the between-seed covariance of per-image drops
  (:func:`veil.analysis.stats.shared_image_variance`); for VOC mAP, which is no mean over
  images, it is the variance of a paired bootstrap that reweights the test images and
  recomputes mAP (detections are matched once; see :mod:`veil.transfer.metrics`), which
  also counts a part of the seed noise again (conservative);
- the verdict from the p-value Holm-adjusted across the archs of each task, mode and
  method; with one seed no verdict ("one seed: training randomness unmeasured").
  Secondary metrics (CelebA's mean AP) get mean ± SEM only.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.analysis.stats import (
    ONE_SEED,
    BootstrapCI,
    DropInterval,
    holm,
    mean_sem,
    seed_image_interval,
    shared_image_variance,
    verdict_from_p,
)
from veil.analysis.tables import fmt, fmt_ci, fmt_mean_sem, fmt_p, markdown_table
from veil.errors import VeilError
from veil.files import atomic_write_bytes
from veil.study.layout import ORIGINAL
from veil.transfer.results import (
    COMPARISON,
    TransferOutput,
    load_transfer,
    read_detections,
)

METRIC_LABELS = {"top1": "top-1 accuracy", "mean_accuracy": "mean attribute accuracy",
                 "mean_ap": "mean attribute AP", "map50": "mAP@0.5"}
DETECTION_CHUNK = 32  # bootstrap resamples of mAP computed at once


@dataclass
class TransferRow:
    """One comparison: original vs ``method`` backbones of ``arch`` on a task, in points."""

    task: str
    mode: str
    metric: str
    primary: bool
    arch: str
    method: str
    seeds: list[int]
    n_test: int
    original: float
    original_sem: float
    obfuscated: float
    obfuscated_sem: float
    drop: float
    ci_low: float
    ci_high: float
    verdict: str
    paired: bool
    original_per_seed: list[float] = field(default_factory=list)
    obfuscated_per_seed: list[float] = field(default_factory=list)
    pvalue: float = math.nan
    p_holm: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}


def _keys(table: Any) -> np.ndarray:
    return np.asarray(table.column("key").to_pylist(), dtype=object)


def _per_image(output: TransferOutput, arch: str, seeds: list[int], condition: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """(keys, (seeds, images) per-image correctness), sorted by key."""
    keys: np.ndarray | None = None
    rows = []
    for seed in seeds:
        table = output.table(arch, seed, condition)
        k = _keys(table)
        order = np.argsort(k, kind="stable")
        rows.append(table.column("correct").to_numpy().astype(float)[order])
        if keys is None:
            keys = k[order]
        elif not np.array_equal(keys, k[order]):
            raise VeilError(f"{output.root}: {arch} seeds were tested on different images")
    assert keys is not None
    return keys, np.stack(rows)


def unpaired_bootstrap(first: np.ndarray, second: np.ndarray, *, resamples: int, seed: int,
                       level: float) -> BootstrapCI:
    """CI of mean(first) - mean(second) when the two were tested on different images."""
    rng = np.random.default_rng(seed)
    a = rng.choice(first, size=(resamples, len(first))).mean(axis=1)
    b = rng.choice(second, size=(resamples, len(second))).mean(axis=1)
    low, high = np.quantile(a - b, [(1 - level) / 2, (1 + level) / 2])
    return BootstrapCI(float(first.mean() - second.mean()), float(low), float(high), level,
                       resamples, float(np.var(a - b, ddof=1)))


def detection_bootstrap(original: list[Any], obfuscated: list[Any], method: str, *,
                        resamples: int, seed: int, level: float) -> BootstrapCI:
    """CI of (mean mAP over original seeds) - (mean over obfuscated seeds), resampling
    test images with the same draw for every model."""
    from veil.transfer.metrics import mean_ap

    n = original[0].positives.shape[0]
    rng = np.random.default_rng(seed)
    drops = []
    for start in range(0, resamples, DETECTION_CHUNK):
        size = min(DETECTION_CHUNK, resamples - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float)
        a = np.mean(np.stack([mean_ap(m, method, weights) for m in original]), axis=0)
        b = np.mean(np.stack([mean_ap(m, method, weights) for m in obfuscated]), axis=0)
        drops.append(a - b)
    values = np.concatenate(drops)
    estimate = (float(np.mean([mean_ap(m, method) for m in original]))
                - float(np.mean([mean_ap(m, method) for m in obfuscated])))
    low, high = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return BootstrapCI(estimate, float(low), float(high), level, resamples,
                       float(np.nanvar(values, ddof=1)))


def _matched(output: TransferOutput, arch: str, seed: int, condition: str) -> Any:
    from veil.transfer.metrics import match_detections

    table = output.table(arch, seed, condition)
    order = np.argsort(_keys(table), kind="stable")
    detections = read_detections(table.take(order))
    classes = len(output.manifest["task"].get("classes") or []) or 20
    return match_detections(detections, classes)


def compare(output: TransferOutput, *, resamples: int = 2000, seed: int = 0,
            level: float = 0.95) -> tuple[list[TransferRow], list[str]]:
    """Every (arch, method, metric) comparison of one transfer output."""
    notes: list[str] = []
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for row in output.rows:
        by.setdefault((row["arch"], row["condition"]), {})[int(row["seed"])] = row
    archs = list(dict.fromkeys(r["arch"] for r in output.rows))
    methods = list(dict.fromkeys(r["condition"] for r in output.rows if r["condition"]
                                 != ORIGINAL))
    rows: list[TransferRow] = []
    for arch in archs:
        base = by.get((arch, ORIGINAL), {})
        for method in methods:
            other = by.get((arch, method), {})
            if not other:
                continue
            seeds = sorted(set(base) & set(other))
            if not seeds:
                notes.append(f"{output.task}/{output.mode} {arch}: no seed has both an original"
                             f" and a {method} backbone result")
                continue
            for metric in output.metrics:
                a = [100 * float(base[s][metric]) for s in seeds]
                b = [100 * float(other[s][metric]) for s in seeds]
                mean_a, sem_a = mean_sem(a)
                mean_b, sem_b = mean_sem(b)
                ci: DropInterval | None = None
                paired = True
                if metric == output.primary:
                    ci, paired = _ci(output, arch, method, seeds, resamples, seed, level)
                    ci = ci.scaled(100.0)
                nan = math.nan
                low = ci.low if ci else nan
                high = ci.high if ci else nan
                rows.append(TransferRow(
                    task=output.task, mode=output.mode, metric=metric,
                    primary=metric == output.primary, arch=arch, method=method, seeds=seeds,
                    n_test=int(base[seeds[0]].get("n_test", 0)), original=mean_a,
                    original_sem=sem_a, obfuscated=mean_b, obfuscated_sem=sem_b,
                    drop=mean_a - mean_b, ci_low=low, ci_high=high,
                    verdict=(verdict_from_p(mean_a - mean_b, ci.pvalue, ci.seeds) if ci
                             else "n/a"), paired=paired,
                    original_per_seed=a, obfuscated_per_seed=b,
                    pvalue=ci.pvalue if ci else nan))
    _holm_across_archs(rows)
    return rows, notes


def _holm_across_archs(rows: list[TransferRow]) -> None:
    """Holm across the archs of each (task, mode, method) on the primary metric."""
    families: dict[tuple[str, str, str], list[TransferRow]] = {}
    for r in rows:
        if r.primary:
            families.setdefault((r.task, r.mode, r.method), []).append(r)
    for family in families.values():
        for r, p in zip(family, holm([r.pvalue for r in family]), strict=True):
            r.p_holm = float(p)
            r.verdict = verdict_from_p(r.drop, float(p), len(r.seeds))


def _ci(output: TransferOutput, arch: str, method: str, seeds: list[int], resamples: int,
        seed: int, level: float) -> tuple[DropInterval, bool]:
    """The drop's interval over seeds and images (fractions), and whether it is paired."""
    if output.kind == "detection":
        from veil.transfer.metrics import mean_ap

        ap_method = str(output.manifest["task"].get("ap_method", "area"))
        original = [_matched(output, arch, s, ORIGINAL) for s in seeds]
        obfuscated = [_matched(output, arch, s, method) for s in seeds]
        boot = detection_bootstrap(original, obfuscated, ap_method, resamples=resamples,
                                   seed=seed, level=level)
        per_seed = [float(mean_ap(o, ap_method)) - float(mean_ap(b, ap_method))
                    for o, b in zip(original, obfuscated, strict=True)]
        n = int(original[0].positives.shape[0])
        return seed_image_interval(per_seed, boot.variance * n, images=n, level=level), True
    keys_a, a = _per_image(output, arch, seeds, ORIGINAL)
    keys_b, b = _per_image(output, arch, seeds, method)
    if np.array_equal(keys_a, keys_b):
        drops = a - b
        return seed_image_interval(drops.mean(axis=1), shared_image_variance(drops),
                                   images=drops.shape[1], level=level), True
    boot = unpaired_bootstrap(a.mean(axis=0), b.mean(axis=0), resamples=resamples,
                              seed=seed, level=level)
    per_seed = a.mean(axis=1) - b.mean(axis=1)
    n = min(a.shape[1], b.shape[1])
    return seed_image_interval(per_seed, boot.variance * n, images=n, level=level), False


# --------------------------------------------------------------------------- outputs


def transfer_frame(rows: list[TransferRow]) -> Any:
    import pandas as pd

    columns = ["task", "mode", "metric", "arch", "method", "seeds", "n_test", "original",
               "original_sem", "obfuscated", "obfuscated_sem", "drop", "ci_low", "ci_high",
               "pvalue", "p_holm", "verdict", "paired"]
    records = []
    for r in rows:
        record = {c: getattr(r, c) for c in columns}
        record["seeds"] = " ".join(str(s) for s in r.seeds)
        records.append(record)
    return pd.DataFrame.from_records(records, columns=columns)


TRANSFER_CAPTION = (
    "Metrics in %: mean ± SEM over seeds (ddof=1). Drop = original - obfuscated (points; "
    "positive = the obfuscated backbone transfers worse), with a 95% CI over seeds and test "
    "images (seed-paired t, df = seeds - 1, SE with the image part; primary metric only). "
    "Verdict: p-value Holm-adjusted across the archs of each task, mode and method, below "
    f"0.05; with one seed no verdict ({ONE_SEED}).")


def transfer_markdown(rows: list[TransferRow], notes: list[str]) -> str:
    parts = ["# Transfer: original vs obfuscated backbones\n",
             TRANSFER_CAPTION + "\n"]
    groups: dict[tuple[str, str], list[TransferRow]] = {}
    for r in rows:
        groups.setdefault((r.task, r.mode), []).append(r)
    for (task, mode), group in groups.items():
        parts.append(f"\n## {task}, {mode}\n")
        table = [[r.arch, r.method, METRIC_LABELS.get(r.metric, r.metric), len(r.seeds),
                  fmt_mean_sem(r.original, r.original_sem, 2),
                  fmt_mean_sem(r.obfuscated, r.obfuscated_sem, 2), fmt(r.drop, 2),
                  fmt_ci(r.ci_low, r.ci_high, 2) if r.primary else "n/a",
                  fmt_p(r.p_holm) if r.primary else "n/a", r.verdict]
                 for r in group]
        parts.append(markdown_table(["arch", "method", "metric", "seeds",
                                     "original (± SEM, ddof=1)", "obfuscated", "drop",
                                     "95% CI (seeds+images)", "p (Holm)", "verdict"], table,
                                    "lllrrrrrrl"))
    if notes:
        parts.append("\nNotes:\n\n" + "".join(f"- {n}\n" for n in notes))
    return "".join(parts)


def plot_transfer(rows: list[TransferRow], path: Path) -> Path:
    """Per task and mode: original vs obfuscated (mean ± SEM) with the drop and its CI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    primary = [r for r in rows if r.primary]
    groups: dict[tuple[str, str], list[TransferRow]] = {}
    for r in primary:
        groups.setdefault((r.task, r.mode), []).append(r)
    width = max(1, len(groups))
    fig = Figure(figsize=(max(4.5, 3.2 * width), 3.8))
    axes = fig.subplots(1, width, squeeze=False)[0]
    for ax, ((task, mode), group) in zip(axes, groups.items(), strict=False):
        x = np.arange(len(group))
        for offset, side, color in ((-0.2, "original", "#0a64d6"),
                                    (0.2, "obfuscated", "#ff9f0a")):
            values = np.array([getattr(r, side) for r in group])
            errors = np.nan_to_num(np.array([getattr(r, f"{side}_sem") for r in group]))
            ax.bar(x + offset, values, width=0.4, color=color,
                   label="original" if side == "original" else "obfuscated",
                   yerr=errors, capsize=3)
        for i, r in enumerate(group):
            ci = f"\n[{r.ci_low:.1f}, {r.ci_high:.1f}]" if not math.isnan(r.ci_low) else ""
            ax.annotate(f"drop {r.drop:.2f}{ci}", (i, max(r.original, r.obfuscated)),
                        xytext=(0, 4), textcoords="offset points", ha="center", fontsize=7)
        ax.set_xticks(x, [f"{r.arch}\n{r.method}" for r in group], fontsize=8)
        ax.set_ylabel(f"{METRIC_LABELS.get(group[0].metric, group[0].metric)} (%)")
        top = max(max(r.original, r.obfuscated) for r in group)
        ax.set_ylim(0, min(100.0, top * 1.25 + 1))
        ax.set_title(f"{task}, {mode}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass
class TransferTables:
    rows: list[dict[str, Any]]
    notes: list[str]
    files: list[str]


def write_transfer_tables(dirs: list[Path], out: Path, *, prefix: str = "transfer",
                          resamples: int = 2000, seed: int = 0, level: float = 0.95
                          ) -> tuple[list[dict[str, Any]], TransferTables]:
    """Compare every transfer output in ``dirs``; write ``<prefix>.md``, ``.csv`` and
    ``.png`` into ``out``. Returns the rows as dicts, and what was written."""
    rows: list[TransferRow] = []
    notes: list[str] = []
    for d in dirs:
        output = load_transfer(d)
        if output.manifest.get("status") != "done":
            notes.append(f"{d}: the transfer run is not finished; its results so far are used")
        found, more = compare(output, resamples=resamples, seed=seed, level=level)
        rows += found
        notes += more
        if not found:
            notes.append(f"{d}: no original/obfuscated pair of backbones to compare")
    files: list[str] = []
    if rows:
        out.mkdir(parents=True, exist_ok=True)
        md = out / f"{prefix}.md"
        atomic_write_bytes(md, transfer_markdown(rows, notes).encode("utf-8"))
        csv_path = out / f"{prefix}.csv"
        atomic_write_bytes(csv_path, transfer_frame(rows).to_csv(index=False).encode("utf-8"))
        files += [md.name, csv_path.name, plot_transfer(rows, out / f"{prefix}.png").name]
    dicts = [r.to_dict() for r in rows]
    return dicts, TransferTables(dicts, notes, files)


def write_comparison(out: str | Path) -> list[dict[str, Any]]:
    """The comparison table of one transfer output folder, written into it
    (``comparison.md``, ``.csv``, ``.png``); ``veil transfer`` calls it after the run."""
    rows, _ = write_transfer_tables([Path(out)], Path(out), prefix=COMPARISON)
    return rows
