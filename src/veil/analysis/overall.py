"""Overall top-1 / top-5 per architecture and method: the paper's Table 3 (blur) and
Table B (overlay), with the uncertainty the paper leaves out.

Two comparisons per method ``m``, both against train-original/eval-original:
``train+eval m`` (the paper's tables) and ``train m, eval original`` (do features learned
on obfuscated images still work on faces?). For each:

- accuracy per seed, then mean ± SEM over seeds (ddof=1);
- the drop = original mean - obfuscated mean, in percentage points;
- a paired bootstrap 95% CI of the drop over validation images: per image, correctness is
  averaged over the seeds of each condition, the per-image difference is resampled with
  the same indices for top-1 and top-5 (:func:`veil.analysis.stats.paired_bootstrap`);
- McNemar's test on top-1 per seed (the seed-k original model against the seed-k
  obfuscated one), reported with the largest p-value over seeds.

The ``average`` row per method averages the architectures as the paper does; its CI
resamples images once for all architectures (the per-image drop averaged over archs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from veil.analysis.run import ORIGINAL, Condition, StudyRun, paired
from veil.analysis.stats import (
    BootstrapCI,
    McNemarResult,
    mcnemar,
    mean_sem,
    paired_bootstrap,
    verdict,
)
from veil.analysis.tables import fmt, fmt_ci, fmt_mean_sem, fmt_p, markdown_table

BASELINE = Condition(ORIGINAL, ORIGINAL)
METRICS = ("top1", "top5")
#: comparison kind -> (how to build the condition from the method, label)
COMPARISONS = {
    "obfuscated": (lambda m: Condition(m, m), "train+eval {m}"),
    "train-obfuscated": (lambda m: Condition(m, ORIGINAL), "train {m}, eval original"),
}


@dataclass
class MetricResult:
    """One metric of one comparison, accuracies in percent."""

    original: float
    original_sem: float
    obfuscated: float
    obfuscated_sem: float
    drop: float
    ci_low: float
    ci_high: float
    verdict: str
    original_per_seed: list[float] = field(default_factory=list)
    obfuscated_per_seed: list[float] = field(default_factory=list)


@dataclass
class OverallRow:
    arch: str  # or "average"
    method: str
    comparison: str  # a key of COMPARISONS
    label: str
    seeds: list[int]
    images: int
    top1: MetricResult
    top5: MetricResult
    mcnemar: list[dict[str, Any]] = field(default_factory=list)  # per seed, top-1

    @property
    def mcnemar_p_max(self) -> float:
        ps = [m["pvalue"] for m in self.mcnemar]
        return max(ps) if ps else math.nan

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mcnemar_p_max"] = self.mcnemar_p_max
        return out

    def sentence(self, metric: str = "top1") -> str:
        """Plain words for one metric, e.g. 'top-1 dropped 0.60 points, 95% CI [0.20, 1.00]'."""
        return describe_drop(metric, getattr(self, metric))


def describe_drop(metric: str, result: MetricResult) -> str:
    name = {"top1": "top-1", "top5": "top-5"}.get(metric, metric)
    ci = f"95% CI [{result.ci_low:.2f}, {result.ci_high:.2f}]"
    if math.isnan(result.drop):
        return f"{name}: no paired predictions"
    if result.verdict == "within noise":
        drop = result.drop + 0.0  # no "-0.00"
        return f"{name} drop {drop:+.2f} points ({ci} of the drop): within noise"
    if result.drop > 0:
        return f"{name} dropped {result.drop:.2f} points, {ci}"
    return f"{name} rose {-result.drop:.2f} points, {ci} of the drop"


def _per_image(run: StudyRun, arch: str, seeds: list[int], cond: Condition
               ) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    preds = [run.predictions(arch, s, cond) for s in seeds]
    for p in preds[1:]:
        paired(preds[0], p, f"{arch} {cond} seeds")
    correct = np.stack([np.stack([p.correct1, p.correct5]) for p in preds])  # seed, metric, img
    return correct.mean(axis=0), 100.0 * correct.mean(axis=2), preds


def _metric(orig_seed: np.ndarray, obf_seed: np.ndarray, ci: BootstrapCI) -> MetricResult:
    o, o_sem = mean_sem(orig_seed)
    b, b_sem = mean_sem(obf_seed)
    scaled = BootstrapCI(100 * ci.estimate, 100 * ci.low, 100 * ci.high, ci.level,
                         ci.resamples)
    return MetricResult(o, o_sem, b, b_sem, o - b, scaled.low, scaled.high, verdict(scaled),
                        [float(v) for v in orig_seed], [float(v) for v in obf_seed])


def overall_table(run: StudyRun, *, resamples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[list[OverallRow], list[str]]:
    """Every (arch, method, comparison) the run has predictions for, then one ``average``
    row per (method, comparison). Returns the rows and notes on what was missing."""
    rows: list[OverallRow] = []
    notes: list[str] = []
    per_image_drops: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for method in run.methods:
        for kind, (make, label) in COMPARISONS.items():
            cond = make(method)
            for arch in run.archs:
                base_seeds = run.seeds(arch, BASELINE)
                other_seeds = run.seeds(arch, cond)
                seeds = sorted(set(base_seeds) & set(other_seeds))
                if not seeds:
                    if other_seeds or (kind == "obfuscated" and base_seeds):
                        notes.append(f"{arch}: no seed has both {BASELINE} and {cond}")
                    continue
                if set(base_seeds) ^ set(other_seeds):
                    notes.append(f"{arch} {cond}: only seeds {seeds} have both conditions")
                orig_img, orig_seed, orig_preds = _per_image(run, arch, seeds, BASELINE)
                obf_img, obf_seed, obf_preds = _per_image(run, arch, seeds, cond)
                paired(orig_preds[0], obf_preds[0], f"{arch} {cond}")
                cis = paired_bootstrap(orig_img, obf_img, resamples=resamples, level=level,
                                       seed=seed)
                tests: list[McNemarResult] = [
                    mcnemar(o.correct1, b.correct1) for o, b in zip(orig_preds, obf_preds,
                                                                     strict=True)]
                rows.append(OverallRow(
                    arch, method, kind, label.format(m=method), seeds,
                    len(orig_preds[0]),
                    _metric(orig_seed[:, 0], obf_seed[:, 0], cis[0]),
                    _metric(orig_seed[:, 1], obf_seed[:, 1], cis[1]),
                    [{"seed": s, **t.to_dict()} for s, t in zip(seeds, tests, strict=True)],
                ))
                per_image_drops.setdefault((method, kind), []).append(
                    (orig_img, obf_img))
    rows += _averages(rows, per_image_drops, resamples, seed, level)
    return rows, notes


def _averages(rows: list[OverallRow],
              per_image: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]],
              resamples: int, seed: int, level: float) -> list[OverallRow]:
    """The paper's average row: means over architectures of each condition's mean."""
    out = []
    for (method, kind), pairs in per_image.items():
        group = [r for r in rows if r.method == method and r.comparison == kind]
        if len(group) < 2:
            continue
        shapes = {p[0].shape for p in pairs}
        if len(shapes) == 1:
            orig = np.mean([p[0] for p in pairs], axis=0)
            obf = np.mean([p[1] for p in pairs], axis=0)
            cis = paired_bootstrap(orig, obf, resamples=resamples, level=level, seed=seed)
        else:
            nan = math.nan
            cis = [BootstrapCI(nan, nan, nan, level, resamples)] * 2
        metrics = []
        for i, name in enumerate(METRICS):
            o = np.array([getattr(r, name).original for r in group])
            b = np.array([getattr(r, name).obfuscated for r in group])
            ci = cis[i]
            scaled = BootstrapCI(100 * ci.estimate, 100 * ci.low, 100 * ci.high, level,
                                 resamples)
            metrics.append(MetricResult(float(o.mean()), math.nan, float(b.mean()), math.nan,
                                        float(o.mean() - b.mean()), scaled.low, scaled.high,
                                        verdict(scaled)))
        seeds = sorted({s for r in group for s in r.seeds})
        out.append(OverallRow("average", method, kind, group[0].label, seeds,
                              group[0].images, metrics[0], metrics[1]))
    return out


def overall_frame(rows: list[OverallRow]) -> Any:
    """One CSV row per table row, numbers at full precision."""
    import pandas as pd

    records = []
    for r in rows:
        rec: dict[str, Any] = {"arch": r.arch, "method": r.method, "comparison": r.comparison,
                               "condition": r.label, "seeds": " ".join(map(str, r.seeds)),
                               "images": r.images}
        for name in METRICS:
            m: MetricResult = getattr(r, name)
            rec |= {f"{name}_original": m.original, f"{name}_original_sem": m.original_sem,
                    f"{name}_obfuscated": m.obfuscated,
                    f"{name}_obfuscated_sem": m.obfuscated_sem, f"{name}_drop": m.drop,
                    f"{name}_drop_ci_low": m.ci_low, f"{name}_drop_ci_high": m.ci_high,
                    f"{name}_verdict": m.verdict}
        rec["top1_mcnemar_p_max"] = r.mcnemar_p_max
        records.append(rec)
    return pd.DataFrame.from_records(records)


def overall_markdown(rows: list[OverallRow], notes: list[str]) -> str:
    """One table per method and comparison, in the paper's layout plus CI and McNemar."""
    parts = ["# Overall accuracy: original vs obfuscated\n",
             "Accuracies in %: mean ± SEM over seeds (ddof=1). Drop = original - obfuscated "
             "(positive: the obfuscated model is worse). 95% CI: paired bootstrap over "
             "validation images. McNemar p: top-1, largest over seeds. A drop whose CI "
             "contains 0 is within noise.\n"]
    groups: dict[tuple[str, str], list[OverallRow]] = {}
    for r in rows:
        groups.setdefault((r.method, r.comparison), []).append(r)
    for (method, kind), group in groups.items():
        title = {"blur": "Table 3", "overlay": "Table B"}.get(method, "Table")
        heading = f"## {group[0].label}"
        if kind == "obfuscated":
            heading += f" (the paper's {title})" if method in ("blur", "overlay") else ""
        parts.append(heading + "\n")
        table_rows = []
        for r in group:
            row: list[str] = [r.arch]
            for name in METRICS:
                m: MetricResult = getattr(r, name)
                row += [fmt_mean_sem(m.original, m.original_sem),
                        fmt_mean_sem(m.obfuscated, m.obfuscated_sem), fmt(m.drop),
                        fmt_ci(m.ci_low, m.ci_high), m.verdict]
            row.insert(6, fmt_p(r.mcnemar_p_max))
            table_rows.append(row)
        headers = ["arch", "top-1 original", f"top-1 {method}", "top-1 drop", "95% CI",
                   "reading", "McNemar p", "top-5 original", f"top-5 {method}", "top-5 drop",
                   "95% CI", "reading"]
        parts.append(markdown_table(headers, table_rows))
    if notes:
        parts.append("\nNotes:\n" + "".join(f"- {n}\n" for n in notes))
    return "\n".join(parts)
