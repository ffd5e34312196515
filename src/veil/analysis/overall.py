"""Overall top-1 / top-5 per architecture and method: the paper's Table 3 (blur) and
Table B (overlay), with the uncertainty the paper leaves out.

Two comparisons per method ``m``, both against train-original/eval-original:
``train+eval m`` (the paper's tables) and ``train m, eval original`` (do features learned
on obfuscated images still work on faces?). For each:

- accuracy per seed, then mean ± SEM over seeds (ddof=1);
- the drop = original mean - obfuscated mean, in percentage points;
- its 95% CI over seeds *and* images (:func:`veil.analysis.stats.seed_image_interval`:
  the seed-k original model is paired with the seed-k obfuscated one; the interval is a
  seed-paired t interval whose SE also carries the shared image variance);
- the reading (drop / gain / within noise) from the Holm-adjusted p-value across the
  architectures of the table (one family per method, comparison and metric); with one
  seed there is no reading ("one seed: training randomness unmeasured");
- McNemar's test on top-1 per seed (the seed-k original model against the seed-k
  obfuscated one), reported with the largest p-value over seeds: it compares two trained
  models, not the method, so it carries no verdict.

The ``average`` row per method averages the architectures as the paper does; its
per-seed drop is the mean over archs of their seed-k drops (seeds all archs share), and
it is read on its own p-value (a single test, outside the Holm family).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from veil.analysis.run import ORIGINAL, StudyRun, TrainEval, paired
from veil.analysis.stats import (
    INTERVAL_METHOD,
    ONE_SEED,
    DropInterval,
    McNemarResult,
    holm,
    mcnemar,
    mean_sem,
    seed_image_interval,
    shared_image_variance,
    verdict_from_p,
)
from veil.analysis.tables import fmt, fmt_ci, fmt_mean_sem, fmt_p, markdown_table

BASELINE = TrainEval(ORIGINAL, ORIGINAL)
METRICS = ("top1", "top5")
#: comparison kind -> (how to build the condition from the method, label)
COMPARISONS = {
    "obfuscated": (lambda m: TrainEval(m, m), "train+eval {m}"),
    "train-obfuscated": (lambda m: TrainEval(m, ORIGINAL), "train {m}, eval original"),
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
    pvalue: float = math.nan  # t test of the drop, seeds and images
    p_adjusted: float = math.nan  # Holm across archs (average row: = pvalue)
    seed_se: float = math.nan  # points
    image_se: float = math.nan  # points


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
    if result.verdict == ONE_SEED:
        drop = result.drop + 0.0
        return f"{name} drop {drop:+.2f} points, no verdict ({ONE_SEED})"
    ci += f" over seeds and images, p = {fmt_p(result.p_adjusted)}"
    if result.verdict == "within noise":
        drop = result.drop + 0.0  # no "-0.00"
        return f"{name} drop {drop:+.2f} points ({ci}): within noise"
    if result.drop > 0:
        return f"{name} dropped {result.drop:.2f} points ({ci})"
    return f"{name} rose {-result.drop:.2f} points ({ci}, of the drop)"


def _per_image(run: StudyRun, arch: str, seeds: list[int], cond: TrainEval
               ) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(seed, metric, image) correctness, (seed, metric) accuracy in %, predictions."""
    preds = [run.predictions(arch, s, cond) for s in seeds]
    for p in preds[1:]:
        paired(preds[0], p, f"{arch} {cond} seeds")
    correct = np.stack([np.stack([p.correct1, p.correct5]) for p in preds]).astype(float)
    return correct, 100.0 * correct.mean(axis=2), preds


def drop_interval(per_image_drops: np.ndarray, level: float) -> DropInterval:
    """The interval of one metric from its (seeds, images) per-image drops, in points."""
    seed_drops = per_image_drops.mean(axis=1)
    return seed_image_interval(seed_drops, shared_image_variance(per_image_drops),
                               images=per_image_drops.shape[1], level=level).scaled(100.0)


def _metric(orig_seed: np.ndarray, obf_seed: np.ndarray, ci: DropInterval) -> MetricResult:
    o, o_sem = mean_sem(orig_seed)
    b, b_sem = mean_sem(obf_seed)
    return MetricResult(o, o_sem, b, b_sem, o - b, ci.low, ci.high,
                        verdict_from_p(o - b, ci.pvalue, ci.seeds),
                        [float(v) for v in orig_seed], [float(v) for v in obf_seed],
                        pvalue=ci.pvalue, p_adjusted=ci.pvalue, seed_se=ci.seed_se,
                        image_se=ci.image_se)


def overall_table(run: StudyRun, *, level: float = 0.95
                  ) -> tuple[list[OverallRow], list[str]]:
    """Every (arch, method, comparison) the run has predictions for, then one ``average``
    row per (method, comparison). Returns the rows and notes on what was missing."""
    rows: list[OverallRow] = []
    notes: list[str] = []
    # (method, kind) -> arch -> seed -> (metric, image) per-image drops
    per_image_drops: dict[tuple[str, str], dict[str, dict[int, np.ndarray]]] = {}
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
                drops = orig_img - obf_img  # (seed, metric, image)
                cis = [drop_interval(drops[:, i], level) for i in range(len(METRICS))]
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
                per_image_drops.setdefault((method, kind), {})[arch] = dict(
                    zip(seeds, drops, strict=True))
    _holm_across_archs(rows)
    rows += _averages(rows, per_image_drops, level, notes)
    return rows, notes


def _holm_across_archs(rows: list[OverallRow]) -> None:
    """Holm across the archs of each (method, comparison, metric): the reading of a row
    asks "does obfuscation change this arch's accuracy" for every arch at once."""
    groups: dict[tuple[str, str], list[OverallRow]] = {}
    for r in rows:
        groups.setdefault((r.method, r.comparison), []).append(r)
    for group in groups.values():
        for name in METRICS:
            results: list[MetricResult] = [getattr(r, name) for r in group]
            adjusted = holm([m.pvalue for m in results])
            for r, m, p in zip(group, results, adjusted, strict=True):
                m.p_adjusted = float(p)
                m.verdict = verdict_from_p(m.drop, float(p), len(r.seeds))


def _averages(rows: list[OverallRow],
              per_image: dict[tuple[str, str], dict[str, dict[int, np.ndarray]]],
              level: float, notes: list[str]) -> list[OverallRow]:
    """The paper's average row: means over architectures of each condition's mean; the
    interval from the arch-averaged per-image drops of the seeds every arch has."""
    out = []
    for (method, kind), by_arch in per_image.items():
        group = [r for r in rows if r.method == method and r.comparison == kind]
        if len(group) < 2:
            continue
        common = sorted(set.intersection(*(set(v) for v in by_arch.values())))
        shapes = {d.shape for v in by_arch.values() for d in v.values()}
        cis: list[DropInterval | None] = [None, None]
        if common and len(shapes) == 1:
            drops = np.stack([np.mean([by_arch[a][s] for a in by_arch], axis=0)
                              for s in common])  # (seed, metric, image)
            cis = [drop_interval(drops[:, i], level) for i in range(len(METRICS))]
        else:
            notes.append(f"{group[0].label} average: the archs share no seed or no image "
                         "set, so the average has no interval")
        metrics = []
        for i, name in enumerate(METRICS):
            o = np.array([getattr(r, name).original for r in group])
            b = np.array([getattr(r, name).obfuscated for r in group])
            ci = cis[i]
            nan = math.nan
            drop = float(o.mean() - b.mean())
            metrics.append(MetricResult(
                float(o.mean()), nan, float(b.mean()), nan, drop,
                ci.low if ci else nan, ci.high if ci else nan,
                verdict_from_p(drop, ci.pvalue, ci.seeds) if ci else "n/a",
                pvalue=ci.pvalue if ci else nan, p_adjusted=ci.pvalue if ci else nan,
                seed_se=ci.seed_se if ci else nan, image_se=ci.image_se if ci else nan))
        out.append(OverallRow("average", method, kind, group[0].label, common,
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
                    f"{name}_p": m.pvalue, f"{name}_p_holm": m.p_adjusted,
                    f"{name}_seed_se": m.seed_se, f"{name}_image_se": m.image_se,
                    f"{name}_verdict": m.verdict}
        rec["top1_mcnemar_p_max"] = r.mcnemar_p_max
        records.append(rec)
    return pd.DataFrame.from_records(records)


OVERALL_CAPTION = (
    "Accuracies in %: mean ± SEM over seeds (SEM = std with ddof=1 / sqrt(seeds)). Drop = "
    "original - obfuscated (positive: the obfuscated model is worse). 95% CI over seeds and "
    f"images ({INTERVAL_METHOD}). Reading: drop or gain when the p-value, Holm-adjusted "
    "across the archs of the table, is below 0.05, else within noise; the average row is "
    f"read on its own p-value; with one seed no reading ({ONE_SEED}). McNemar p: top-1, "
    "the seed-k models compared on the same images, largest over seeds (it tests two "
    "trained models, not the method).")


def overall_markdown(rows: list[OverallRow], notes: list[str]) -> str:
    """One table per method and comparison, in the paper's layout plus CI and McNemar."""
    parts = ["# Overall accuracy: original vs obfuscated\n",
             OVERALL_CAPTION + "\n"]
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
                        fmt_ci(m.ci_low, m.ci_high), fmt_p(m.p_adjusted), m.verdict]
            row.insert(1, str(len(r.seeds)))
            row.insert(8, fmt_p(r.mcnemar_p_max))
            table_rows.append(row)
        headers = ["arch", "seeds", "top-1 original (± SEM, ddof=1)", f"top-1 {method}",
                   "top-1 drop", "95% CI (seeds+images)", "p (Holm)", "reading",
                   "McNemar p", "top-5 original (± SEM, ddof=1)", f"top-5 {method}",
                   "top-5 drop", "95% CI (seeds+images)", "p (Holm)", "reading"]
        parts.append(markdown_table(headers, table_rows))
    if notes:
        parts.append("\nNotes:\n" + "".join(f"- {n}\n" for n in notes))
    return "\n".join(parts)
