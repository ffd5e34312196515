"""Per-category effects: the paper's Table 4, look-alike pairs, most/least affected.

For each method ``m`` the comparison is train+eval original against train+eval ``m``.
Per class and per seed: top-1 and top-5 accuracy over the class's validation images and
one-vs-rest AP from the logits (the authors' Table 4 takes sklearn's AP on the raw
``output_scores``; runs older than the ``logits`` column fall back to the softmax
probabilities and the table says so); then mean ± SEM over seeds (ddof=1). The ``all``
rows average the architectures seed by seed (seed k = the mean over archs of their seed-k
values), as the authors' Table 4 script does (their pooling of every model's answers is
the same mean when the archs share the validation images).

Each ``all`` row also gets a test of its top-1 drop over seeds and the class's images
(:func:`veil.analysis.stats.seed_image_interval`) and a seed-paired t test of its AP drop
(AP is no mean over images: the seed part only), Benjamini-Hochberg-adjusted across the
categories.

The paper's own eight categories (Eskimo dog / Siberian husky, projectile / missile,
tub / bathtub, American chameleon / green lizard) get a table of their own in Table 4's
layout with the SEM at ddof=2, as the paper prints it, beside veil's rule-based pairs.

Why AP: a model that trades one look-alike class for another (Eskimo dog vs Siberian
husky) moves both classes' top-1 by +-15 points while ranking, and so AP, barely
changes. The paper therefore reads per-category effects from AP.

Look-alike pairs, as veil defines them. Confusions are counted in the *original*
condition over every arch and seed: class j is i's most frequent confusion when j is the
most common wrong top-1 answer on i's images (ties: the lower index). A candidate pair
{i, j} has one as the other's most frequent confusion. It is flagged as a look-alike pair
when either

- **mutual**: each is the other's most frequent confusion, or
- **swing**: their top-1 drops have opposite signs, each at least ``swing`` points
  (default 5) in size, while both AP drops are at most ``ap_tolerance`` points
  (default 2) in size (needs AP, i.e. a ``probs`` column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.analysis.overall import BASELINE
from veil.analysis.run import StudyRun, TrainEval, paired
from veil.analysis.stats import (
    ONE_SEED,
    benjamini_hochberg,
    mean_sem,
    seed_image_interval,
    shared_image_variance,
    verdict_from_p,
)
from veil.analysis.tables import fmt, fmt_mean_sem, fmt_p, markdown_table

DEFAULT_SWING = 5.0
DEFAULT_AP_TOLERANCE = 2.0
QUANTITIES = ("top1", "top5", "ap")


def class_accuracy(labels: np.ndarray, correct: np.ndarray, num_classes: int) -> np.ndarray:
    """Percent correct per class; NaN for a class without images."""
    totals = np.bincount(labels, minlength=num_classes).astype(float)
    hits = np.bincount(labels, weights=correct.astype(float), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * hits / totals, np.nan)


@dataclass
class CategoryResult:
    """Per-class results of one method: ``frame`` (one row per arch and class, arch
    ``all`` included), the look-alike candidates, and whether AP was available."""

    method: str
    frame: Any  # pandas DataFrame
    lookalikes: Any  # pandas DataFrame
    ap_available: bool
    archs: list[str]
    ap_source: str = "logits"  # "logits", "probs" or "logits and probs"
    all_per_seed: dict[int, dict[str, dict[str, np.ndarray]]] | None = None


def _seed_values(run: StudyRun, arch: str, seed: int, cond: TrainEval
                 ) -> dict[str, np.ndarray | None]:
    p = run.predictions(arch, seed, cond)
    n = run.num_classes
    ap = run.class_ap(arch, seed, cond)
    return {"top1": class_accuracy(p.labels, p.correct1, n),
            "top5": class_accuracy(p.labels, p.correct5, n),
            "ap": None if ap is None else 100.0 * ap}


def confusion_counts(run: StudyRun, archs: list[str]) -> np.ndarray:
    """(true, predicted) counts of wrong top-1 answers in the original condition."""
    n = run.num_classes
    counts = np.zeros((n, n), dtype=np.int64)
    for arch in archs:
        for seed in run.seeds(arch, BASELINE):
            p = run.predictions(arch, seed, BASELINE)
            wrong = ~p.correct1
            np.add.at(counts, (p.labels[wrong], p.pred[wrong]), 1)
    np.fill_diagonal(counts, 0)
    return counts


def most_confused(counts: np.ndarray) -> np.ndarray:
    """Per class, its most frequent wrong answer, or -1 when it was never confused."""
    best = counts.argmax(axis=1)
    return np.where(counts.max(axis=1) > 0, best, -1)


def per_category(run: StudyRun, method: str, *, swing: float = DEFAULT_SWING,
                 ap_tolerance: float = DEFAULT_AP_TOLERANCE) -> CategoryResult | None:
    """The per-class table of ``method``, or None when no arch has both conditions."""
    import pandas as pd

    cond = TrainEval(method, method)
    n = run.num_classes
    names = run.class_names()
    wnids = run.class_wnids()
    # arch -> seed -> condition -> quantity -> (classes,)
    values: dict[str, dict[int, dict[str, dict[str, np.ndarray | None]]]] = {}
    n_val = np.zeros(n, dtype=np.int64)
    for arch in run.archs:
        seeds = sorted(set(run.seeds(arch, BASELINE)) & set(run.seeds(arch, cond)))
        for seed in seeds:
            paired(run.predictions(arch, seed, BASELINE), run.predictions(arch, seed, cond),
                   f"{arch} seed {seed} {cond}")
            values.setdefault(arch, {})[seed] = {
                "original": _seed_values(run, arch, seed, BASELINE),
                "obfuscated": _seed_values(run, arch, seed, cond)}
        if seeds:
            n_val = np.bincount(run.predictions(arch, seeds[0], BASELINE).labels,
                                minlength=n)
    if not values:
        return None
    ap_available = all(v[side]["ap"] is not None for a in values.values()
                       for v in a.values() for side in v)
    sources = {run.ap_source(arch, seed, c) for arch, seeds_ in values.items()
               for seed in seeds_ for c in (BASELINE, cond)} - {None}
    ap_source = " and ".join(sorted(str(s) for s in sources)) if sources else "none"
    by_seed_all: dict[int, dict[str, dict[str, list[np.ndarray]]]] = {}
    records: list[dict[str, Any]] = []
    for arch, per_seed in values.items():
        records += _rows(arch, per_seed, names, wnids, n_val, ap_available)
        for seed, sides in per_seed.items():
            slot = by_seed_all.setdefault(seed, {"original": {}, "obfuscated": {}})
            for side, qs in sides.items():
                for q, v in qs.items():
                    if v is not None:
                        slot[side].setdefault(q, []).append(v)
    averaged = {seed: {side: {q: np.mean(vs, axis=0) for q, vs in qs.items()}
                       for side, qs in sides.items()}
                for seed, sides in by_seed_all.items()}
    records += _rows("all", averaged, names, wnids, n_val, ap_available)
    frame = pd.DataFrame.from_records(records)
    _tests_across_categories(frame, averaged, ap_available,
                             _top1_image_variance(run, values, cond, n))
    all_rows = frame[frame["arch"] == "all"].set_index("class_index")
    counts = confusion_counts(run, list(values))
    lookalikes = lookalike_pairs(all_rows, counts, swing=swing, ap_tolerance=ap_tolerance,
                                 ap_available=ap_available)
    flagged = lookalikes[lookalikes["flagged"].astype(bool)]
    partner: dict[int, str] = {}
    for row in flagged.itertuples():
        partner.setdefault(int(row.class_a), str(row.name_b))
        partner.setdefault(int(row.class_b), str(row.name_a))
    frame["lookalike_of"] = [partner.get(int(i), "") if a == "all" else ""
                             for a, i in zip(frame["arch"], frame["class_index"], strict=True)]
    return CategoryResult(method, frame, lookalikes, ap_available, list(values), ap_source,
                          averaged)


def _top1_image_variance(run: StudyRun, values: dict[str, dict[int, Any]], cond: TrainEval,
                         n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: the shared image variance of its top-1 drop (in points^2, from the
    per-image drops averaged over the archs of each seed) and its number of images."""
    by_seed: dict[int, list[np.ndarray]] = {}
    labels = None
    for arch, seeds in values.items():
        for seed in seeds:
            a = run.predictions(arch, seed, BASELINE)
            b = run.predictions(arch, seed, cond)
            labels = a.labels
            by_seed.setdefault(seed, []).append(100.0 * (a.correct1.astype(float)
                                                         - b.correct1))
    assert labels is not None
    drops = np.stack([np.mean(v, axis=0) for _, v in sorted(by_seed.items())])
    variance = np.full(n, np.nan)
    counts = np.bincount(labels, minlength=n)[:n]
    for k in range(n):
        variance[k] = shared_image_variance(drops[:, labels == k])
    return variance, counts


def _tests_across_categories(frame: Any, averaged: dict[int, Any], ap_available: bool,
                             top1_images: tuple[np.ndarray, np.ndarray]) -> None:
    """p, BH-adjusted p and reading of each ``all`` row's top-1 and AP drop (in place).

    Top-1: :func:`veil.analysis.stats.seed_image_interval` with the class's own image part;
    AP is no mean over images, so its test has the seed part only (the per-seed AP drops
    still carry each model's image-level noise)."""
    is_all = (frame["arch"] == "all").to_numpy()
    seeds = sorted(averaged)
    variance, counts = top1_images
    for q in ("top1", "ap"):
        if q == "ap" and not ap_available:
            continue
        drops = np.stack([averaged[s]["original"][q] - averaged[s]["obfuscated"][q]
                          for s in seeds])  # (seed, class)
        image_var = np.nan_to_num(variance) if q == "top1" else np.zeros(len(counts))
        p = np.array([seed_image_interval(drops[:, k], float(image_var[k]),
                                          images=max(int(counts[k]), 1)).pvalue
                      if not np.isnan(drops[:, k]).any() else np.nan
                      for k in range(drops.shape[1])])
        adjusted = benjamini_hochberg(p)
        for column, values in ((f"{q}_p", p), (f"{q}_p_bh", adjusted)):
            frame[column] = np.nan
            frame.loc[is_all, column] = values
        frame[f"{q}_reading"] = ""
        frame.loc[is_all, f"{q}_reading"] = [
            verdict_from_p(d, a, len(seeds))
            for d, a in zip(drops.mean(axis=0), adjusted, strict=True)]


def _rows(arch: str, seeds: dict[int, Any], names: list[str], wnids: list[str | None],
          n_val: np.ndarray, ap_available: bool) -> list[dict[str, Any]]:
    out = []
    for k in range(len(names)):
        rec: dict[str, Any] = {"arch": arch, "class_index": k, "wnid": wnids[k] or "",
                               "name": names[k], "val_images": int(n_val[k]),
                               "seeds": len(seeds)}
        for q in QUANTITIES:
            if q == "ap" and not ap_available:
                continue
            stats_by_side = {}
            for side in ("original", "obfuscated"):
                per_seed = [s[side][q][k] for s in seeds.values()]
                stats_by_side[side] = mean_sem(per_seed)
            (o, o_sem), (b, b_sem) = stats_by_side["original"], stats_by_side["obfuscated"]
            rec |= {f"{q}_original": o, f"{q}_original_sem": o_sem, f"{q}_obfuscated": b,
                    f"{q}_obfuscated_sem": b_sem, f"{q}_drop": o - b}
        out.append(rec)
    return out


def lookalike_pairs(all_rows: Any, counts: np.ndarray, *, swing: float = DEFAULT_SWING,
                    ap_tolerance: float = DEFAULT_AP_TOLERANCE, ap_available: bool = True
                    ) -> Any:
    """Every candidate pair (one is the other's most frequent confusion) with its flags;
    flagged pairs first, then by how far their top-1 drops diverge."""
    import pandas as pd

    top = most_confused(counts)
    pairs = sorted({tuple(sorted((i, int(j)))) for i, j in enumerate(top) if j >= 0})
    records = []
    for a, b in pairs:
        mutual = bool(top[a] == b and top[b] == a)
        d1a, d1b = all_rows.at[a, "top1_drop"], all_rows.at[b, "top1_drop"]
        dapa = all_rows.at[a, "ap_drop"] if ap_available else math.nan
        dapb = all_rows.at[b, "ap_drop"] if ap_available else math.nan
        swings = bool(
            ap_available and not any(math.isnan(v) for v in (d1a, d1b, dapa, dapb))
            and d1a * d1b < 0 and min(abs(d1a), abs(d1b)) >= swing
            and max(abs(dapa), abs(dapb)) <= ap_tolerance)
        reasons = [r for r, on in (("mutual confusion", mutual), ("swing", swings)) if on]
        records.append({
            "class_a": a, "name_a": all_rows.at[a, "name"], "class_b": b,
            "name_b": all_rows.at[b, "name"], "confusions_a_to_b": int(counts[a, b]),
            "confusions_b_to_a": int(counts[b, a]), "mutual": mutual, "swing": swings,
            "flagged": mutual or swings, "reason": " + ".join(reasons),
            "top1_drop_a": d1a, "top1_drop_b": d1b, "ap_drop_a": dapa, "ap_drop_b": dapb,
        })
    frame = pd.DataFrame.from_records(records, columns=[
        "class_a", "name_a", "class_b", "name_b", "confusions_a_to_b", "confusions_b_to_a",
        "mutual", "swing", "flagged", "reason", "top1_drop_a", "top1_drop_b", "ap_drop_a",
        "ap_drop_b"])
    if len(frame):
        frame["divergence"] = (frame["top1_drop_a"] - frame["top1_drop_b"]).abs()
        frame = frame.sort_values(["flagged", "swing", "divergence"],
                                  ascending=[False, False, False], kind="stable")
        frame = frame.reset_index(drop=True)
    return frame


def flagged_pairs(result: CategoryResult) -> Any:
    """The look-alike pairs that met the definition."""
    return result.lookalikes[result.lookalikes["flagged"].astype(bool)]


def most_least_affected(result: CategoryResult, k: int = 10) -> tuple[Any, Any, str]:
    """The k classes with the largest and the smallest drop, by AP when available (else
    top-1), over the ``all`` rows; k is capped at half the classes so the two lists never
    share a class. Returns (most, least, the quantity used)."""
    rows = result.frame[result.frame["arch"] == "all"]
    by = "ap_drop" if result.ap_available else "top1_drop"
    rows = rows[~rows[by].isna()]
    k = max(1, min(k, len(rows) // 2))
    most = rows.sort_values(by, ascending=False, kind="stable").head(k)
    least = rows.sort_values(by, ascending=True, kind="stable").head(k)
    return most, least, by


def paper_categories(result: CategoryResult, wnids: list[str | None], sem_ddof: int = 2
                     ) -> list[dict[str, Any]]:
    """The paper's Table 4 categories the run has, in its order: per quantity and side
    (mean, SEM with ``sem_ddof`` over seeds) in % from the arch-averaged per-seed values."""
    from veil.analysis.paper_pickles import TABLE4_CATEGORIES

    if not result.all_per_seed:
        return []
    out = []
    seeds = sorted(result.all_per_seed)
    for synset, wnid in TABLE4_CATEGORIES:
        if wnid not in wnids:
            continue
        k = wnids.index(wnid)
        row: dict[str, Any] = {"category": synset, "class_index": k, "seeds": len(seeds)}
        for q in QUANTITIES:
            if q == "ap" and not result.ap_available:
                continue
            for side in ("original", "obfuscated"):
                row[f"{q}_{side}"] = mean_sem(
                    [result.all_per_seed[s][side][q][k] for s in seeds], ddof=sem_ddof)
        out.append(row)
    return out


def _face_cells(faces: Any, index: int) -> list[str]:
    if faces is None:
        return ["n/a", "n/a"]
    row = faces[faces["class_index"] == index]
    if row.empty:
        return ["n/a", "n/a"]
    train = float(row["share_with_faces"].iloc[0])
    val = (float(row["share_with_faces_val"].iloc[0]) if "share_with_faces_val" in row
           else math.nan)
    return [fmt(100 * train, 1), fmt(100 * val, 1)]


def per_category_markdown(result: CategoryResult, k: int = 10, faces: Any = None,
                          wnids: list[str | None] | None = None) -> str:
    """The paper's eight categories (Table 4's layout, SEM ddof=2), veil's look-alike pairs,
    then the most and least affected categories with their face shares (train and val).

    ``faces``: the per-class face statistics (:func:`veil.analysis.faces.face_stats`'s
    ``per_class``); ``wnids``: the run's class wnids, to find the paper's categories."""
    method = result.method
    all_rows = result.frame[result.frame["arch"] == "all"].set_index("class_index")
    quantities = [q for q in QUANTITIES if q != "ap" or result.ap_available]
    labels = {"top1": "top-1", "top5": "top-5", "ap": "AP"}
    headers = ["category"]
    for q in quantities:
        headers += [f"{labels[q]} original (± SEM, ddof=1)", f"{labels[q]} {method}",
                    f"{labels[q]} drop"]

    def line(index: int) -> list[str]:
        r = all_rows.loc[index]
        cells = [str(r["name"])]
        for q in quantities:
            cells += [fmt_mean_sem(r[f"{q}_original"], r[f"{q}_original_sem"]),
                      fmt_mean_sem(r[f"{q}_obfuscated"], r[f"{q}_obfuscated_sem"]),
                      fmt(r[f"{q}_drop"])]
        return cells

    seeds = int(all_rows["seeds"].max()) if len(all_rows) else 0
    parts = [f"# Per-category effects of {method}\n",
             f"All archs ({', '.join(result.archs)}) averaged seed by seed; values in %, "
             "mean ± SEM over seeds (SEM = std with ddof=1 / sqrt(seeds), except the paper's "
             "eight categories: ddof=2, as the paper). Drop = original - obfuscated.\n"]
    if not result.ap_available:
        parts.append("The predictions have neither a `logits` nor a `probs` column, so AP is "
                     "not available; categories are ranked by top-1.\n")
    elif result.ap_source == "logits":
        parts.append("AP: one-vs-rest average precision on the logits (as the authors, "
                     "with sklearn's definition).\n")
    else:
        parts.append(f"AP: on the stored {result.ap_source} (no `logits` column in some or "
                     "all prediction files: a run older than veil's logits); the softmax "
                     "ranks a class's images differently from the logits the paper used, so "
                     "these AP values are not the paper's.\n")
    paper = paper_categories(result, wnids or [])
    parts.append("## The paper's eight categories (its Table 4)\n")
    if paper:
        rows = []
        for r in paper:
            cells = [r["category"]]
            for q in quantities:
                o, b = r[f"{q}_original"], r[f"{q}_obfuscated"]
                cells += [fmt_mean_sem(*o), fmt_mean_sem(*b), fmt(o[0] - b[0])]
            rows.append(cells)
        head = ["category"]
        for q in quantities:
            head += [f"{labels[q]} original (± SEM, ddof=2)", f"{labels[q]} {method}",
                     f"{labels[q]} drop"]
        parts.append(markdown_table(head, rows))
    else:
        parts.append("None of them is a class of this run.\n")
    parts.append("## Look-alike pairs (veil's rule)\n")
    parts.append("A candidate pair has one class as the other's most frequent confusion "
                 "(original models). Flagged: *mutual confusion* (each is the other's) or "
                 "*swing* (top-1 drops of opposite sign, each >= the swing threshold, both AP "
                 "drops within the AP tolerance).\n")
    flagged = flagged_pairs(result)
    if len(flagged):
        rows = []
        for pair in flagged.itertuples():
            rows.append([*line(int(pair.class_a)), pair.reason])
            rows.append([*line(int(pair.class_b)), pair.reason])
        parts.append(markdown_table([*headers, "why flagged"], rows))
    else:
        parts.append("No look-alike pair was flagged.\n")
    most, least, by = most_least_affected(result, k)
    basis = "AP" if by == "ap_drop" else "top-1"
    q = "ap" if by == "ap_drop" else "top1"
    how = ("over seeds and the category's images" if q == "top1"
           else "over seeds only, as AP is no mean over images")
    reading = (f"p ({basis} drop): seed-paired t test (df = seeds - 1) {how}, "
               "Benjamini-Hochberg-adjusted across all categories; reading = drop or gain "
               "when that p < 0.05" + (f"; {ONE_SEED}: no reading" if seeds < 2 else "")
               + ". Faces: share of the category's images with faces in the train and the "
               "val split.\n")
    extra = ["faces train (%)", "faces val (%)", f"p {basis} (BH)", "reading"]

    def ranked(index: int) -> list[str]:
        r = all_rows.loc[index]
        return [*line(index), *_face_cells(faces, index), fmt_p(r.get(f"{q}_p_bh", math.nan)),
                str(r.get(f"{q}_reading", ""))]

    parts.append(f"## Most affected by {basis} (largest drop)\n")
    parts.append(reading)
    parts.append(markdown_table([*headers, *extra],
                                [ranked(int(i)) for i in most["class_index"]]))
    parts.append(f"## Least affected by {basis} (smallest drop or a gain)\n")
    parts.append(markdown_table([*headers, *extra],
                                [ranked(int(i)) for i in least["class_index"]]))
    return "\n".join(parts)
