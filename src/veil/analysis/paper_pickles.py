"""Rebuild the paper's Table 3 (blur), Table B (overlay) and Table 4 (eight categories)
from the authors' released evaluation pickles, so anyone can check veil's numbers against
theirs; then add what the paper leaves out: each drop's interval over seeds and images.

Each pickle is a dict with ``output_scores`` (N x 1000) and ``examples`` (dicts with
``label`` and ``top5_predictions``). File names, as the authors' analysis scripts
parse them::

    eval_<arch>_seed<k>_val_results.pickle                          original
    eval_<arch>_blurtrain_blurval_seed<k>_val_results.pickle        blurred
    eval_<arch>_overlaytrain_overlayval_seed<k>_val_results.pickle  overlaid

A name with ``<m>train`` but not ``<m>val`` is a model trained on obfuscated images and
evaluated on originals; it is listed separately (the authors' scripts skip it). Any other
name is reported as not recognised.

The numbers follow the authors' scripts (princetonvisualai/imagenet-face-obfuscation at
commit 52d6d78): ``analysis/overall_accuracy.py`` lines 56-67 (top-1 is
``label == top5_predictions[0]``, top-5 is ``label in top5_predictions``) and 75-84
(accuracies in %, the mean over seeds with ``scipy.stats.sem(..., ddof=2)`` as the "+-":
their choice; ``ddof=1`` is the textbook SEM and is available as an option), the drop is
original mean minus obfuscated mean, and the ``average`` row averages the per-arch means.
Table 4 follows ``analysis/categorywise_accuracies.py`` (see :func:`table4`). Everything
is printed with 3 decimals, as the paper prints it.

The "Uncertainty" tables after each paper table are veil's: the drop's 95% CI over seeds
and images (:func:`veil.analysis.stats.seed_image_interval`; seed k of the original
pairs with seed k of the obfuscated model, images pair by their position in
``examples``), read with Holm across the archs of the table.
"""

from __future__ import annotations

import pickle
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.analysis.stats import (
    ONE_SEED,
    holm,
    mean_sem,
    seed_image_interval,
    shared_image_variance,
    verdict_from_p,
)
from veil.analysis.tables import fmt_ci, fmt_p, text_table
from veil.errors import VeilError

#: the paper's architectures, in its tables' order
PAPER_ARCHS = (
    "alexnet", "squeezenet1_0", "shufflenet_v2_x1_0", "vgg11", "vgg13", "vgg16", "vgg19",
    "mobilenet_v2", "densenet121", "densenet201", "resnet18", "resnet34", "resnet50",
    "resnet101", "resnet152",
)
PAPER_SEM_DDOF = 2
#: Table 4's categories, in its order (categorywise_accuracies.py lines 111-120), with
#: their wnids (the authors map them through NLTK's WordNet; veil ships the mapping)
TABLE4_CATEGORIES = (
    ("eskimo_dog.n.01", "n02109961"), ("siberian_husky.n.01", "n02110185"),
    ("projectile.n.01", "n04008634"), ("missile.n.01", "n03773504"),
    ("tub.n.02", "n04493381"), ("bathtub.n.01", "n02808440"),
    ("american_chameleon.n.01", "n01682714"), ("green_lizard.n.01", "n01693334"),
)
_NAME = re.compile(r"^eval_(?P<body>.+)_seed(?P<seed>\d+)_val_results\.pickle$")
_PARTICIPLES = {"blur": "blurred", "overlay": "overlaid"}


@dataclass(frozen=True)
class PickleResult:
    arch: str
    train: str  # "original" or the method
    eval: str
    seed: int
    top1: float  # fraction, as the authors compute it
    top5: float
    images: int
    path: Path
    correct1: np.ndarray | None = None  # per example, in the pickle's order
    correct5: np.ndarray | None = None
    labels: np.ndarray | None = None
    ap: dict[int, float] = field(default_factory=dict)  # Table 4 class index -> AP


def _sorted_wnids() -> list[str]:
    """The authors' label order: the 1000 ILSVRC wnids sorted (their SORTED_WNIDS_PATH)."""
    from veil.wordnet import load_hierarchy

    return sorted(load_hierarchy().classes)


def table4_indices() -> list[int]:
    """The label index of each Table 4 category."""
    wnids = _sorted_wnids()
    return [wnids.index(w) for _, w in TABLE4_CATEGORIES]


def class_ap(labels: np.ndarray, scores: np.ndarray, classes: list[int]) -> dict[int, float]:
    """AP of each class in ``classes`` from the raw ``output_scores`` (logits), with
    sklearn as the authors do (categorywise_accuracies.py lines 88-91:
    ``average_precision_score(one_hot, output_scores, average=None)`` scores every column
    on its own, so computing only the needed columns gives the same numbers). NaN for a
    class without a positive example (sklearn warns and returns 0 there; the authors'
    pickles have 50 per class)."""
    from sklearn.metrics import average_precision_score

    out = {}
    for k in classes:
        positives = labels == k
        out[k] = (float(average_precision_score(positives, scores[:, k]))
                  if positives.any() else np.nan)
    return out

@dataclass
class Scan:
    results: list[PickleResult] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)


def parse_name(name: str) -> tuple[str, str, str, int] | None:
    """``(arch, train, eval, seed)`` of an authors' pickle name, or None."""
    match = _NAME.match(name)
    if match is None:
        return None
    tokens = match.group("body").split("_")
    train = evaluated = "original"
    while len(tokens) > 1 and (tokens[-1].endswith("train") or tokens[-1].endswith("val")):
        token = tokens.pop()
        if token.endswith("train") and len(token) > 5:
            train = token[:-5]
        elif token.endswith("val") and len(token) > 3:
            evaluated = token[:-3]
        else:
            return None
    if train == "original" and evaluated != "original":
        return None  # original model on obfuscated images: not a paper condition
    return "_".join(tokens), train, evaluated, int(match.group("seed"))


def accuracies(results: dict[str, Any]) -> tuple[float, float, int]:
    """(top-1, top-5, N) of one pickle's ``examples``."""
    correct1, correct5, _ = per_example(results)
    return float(correct1.mean()), float(correct5.mean()), int(correct1.size)


def per_example(results: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-1 right, top-5 right, label) per example, as overall_accuracy.py lines 59-61
    count them."""
    examples = results["examples"]
    if not examples:
        raise VeilError("a pickle has no examples")
    correct1 = np.array([e["label"] == e["top5_predictions"][0] for e in examples])
    correct5 = np.array([e["label"] in list(e["top5_predictions"]) for e in examples])
    labels = np.array([int(e["label"]) for e in examples], dtype=np.int64)
    return correct1, correct5, labels


def scan(directory: str | Path) -> Scan:
    """Read every ``eval_*_val_results.pickle`` in ``directory``.

    The pickles are the authors' files: loading a pickle runs code, so read only files
    you trust.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VeilError(f"{directory} is not a folder")
    found = Scan()
    wanted = table4_indices()
    for path in sorted(directory.glob("eval_*_val_results.pickle")):
        parsed = parse_name(path.name)
        if parsed is None:
            found.unrecognised.append(path.name)
            continue
        arch, train, evaluated, seed = parsed
        try:
            with path.open("rb") as handle:
                data = pickle.load(handle)
            correct1, correct5, labels = per_example(data)
            ap: dict[int, float] = {}
            scores = data.get("output_scores")
            if scores is not None:
                scores = np.asarray(scores)
                if scores.ndim == 2 and scores.shape[0] == labels.size \
                        and scores.shape[1] > max(wanted):
                    ap = class_ap(labels, scores, wanted)
            del data, scores  # 50,000 x 1000 floats: keep only what the tables need
        except (OSError, pickle.UnpicklingError, KeyError, TypeError, EOFError,
                AttributeError) as exc:
            raise VeilError(f"{path.name}: not an evaluation pickle ({exc})") from exc
        found.results.append(PickleResult(
            arch, train, evaluated, seed, float(correct1.mean()), float(correct5.mean()),
            int(correct1.size), path, correct1, correct5, labels, ap))
    if not found.results:
        raise VeilError(f"no eval_*_val_results.pickle files in {directory}")
    return found


@dataclass
class TableRow:
    arch: str
    top1_original: tuple[float, float]  # (mean, sem) in %
    top1_obfuscated: tuple[float, float]
    top5_original: tuple[float, float]
    top5_obfuscated: tuple[float, float]
    seeds_original: int
    seeds_obfuscated: int

    @property
    def top1_drop(self) -> float:
        return self.top1_original[0] - self.top1_obfuscated[0]

    @property
    def top5_drop(self) -> float:
        return self.top5_original[0] - self.top5_obfuscated[0]


def _order(archs: set[str]) -> list[str]:
    return [a for a in PAPER_ARCHS if a in archs] + sorted(archs - set(PAPER_ARCHS))


def paper_table(results: list[PickleResult], method: str, *, train_only: bool = False,
                sem_ddof: int = PAPER_SEM_DDOF) -> list[TableRow]:
    """Per arch: original (train+eval original) against ``method`` (train+eval method, or
    train method / eval original with ``train_only``)."""
    target = (method, "original") if train_only else (method, method)
    values: dict[tuple[str, str], dict[int, tuple[float, float]]] = defaultdict(dict)
    for r in results:
        side = ("original" if (r.train, r.eval) == ("original", "original")
                else "obfuscated" if (r.train, r.eval) == target else None)
        if side is not None:
            values[(r.arch, side)][r.seed] = (r.top1, r.top5)
    rows = []
    for arch in _order({a for a, _ in values}):
        orig, obf = values.get((arch, "original")), values.get((arch, "obfuscated"))
        if not orig or not obf:
            continue

        def stat(seeds: dict[int, tuple[float, float]], i: int) -> tuple[float, float]:
            mean, sem = mean_sem([100 * v[i] for _, v in sorted(seeds.items())], ddof=sem_ddof)
            return mean, sem

        rows.append(TableRow(arch, stat(orig, 0), stat(obf, 0), stat(orig, 1), stat(obf, 1),
                             len(orig), len(obf)))
    return rows


def _cell(value: tuple[float, float]) -> str:
    mean, sem = value
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if np.isnan(sem) else f"{mean:.3f} +- {sem:.3f}"


def format_table(rows: list[TableRow], method: str, *, train_only: bool = False) -> str:
    """The paper's layout: model, top-1 original / obfuscated / diff, top-5 the same, then
    the average row."""
    word = f"{method}-trained" if train_only else _PARTICIPLES.get(method, method)
    headers = ["model", "top1 original", f"top1 {word}", "top1 diff", "top5 original",
               f"top5 {word}", "top5 diff"]
    lines = [[r.arch, _cell(r.top1_original), _cell(r.top1_obfuscated), f"{r.top1_drop:.3f}",
              _cell(r.top5_original), _cell(r.top5_obfuscated), f"{r.top5_drop:.3f}"]
             for r in rows]
    if rows:
        avg = {name: float(np.mean([getattr(r, name)[0] for r in rows]))
               for name in ("top1_original", "top1_obfuscated", "top5_original",
                            "top5_obfuscated")}
        lines.append(["average", f"{avg['top1_original']:.3f}", f"{avg['top1_obfuscated']:.3f}",
                      f"{avg['top1_original'] - avg['top1_obfuscated']:.3f}",
                      f"{avg['top5_original']:.3f}", f"{avg['top5_obfuscated']:.3f}",
                      f"{avg['top5_original'] - avg['top5_obfuscated']:.3f}"])
    return text_table(headers, lines)


def _paired_drops(results: list[PickleResult], arch: str, method: str, train_only: bool
                  ) -> tuple[dict[int, np.ndarray], str | None]:
    """seed -> (metric, example) per-example drops (original - obfuscated) of one arch, or
    why they cannot be paired."""
    target = (method, "original") if train_only else (method, method)
    orig = {r.seed: r for r in results if r.arch == arch
            and (r.train, r.eval) == ("original", "original")}
    obf = {r.seed: r for r in results if r.arch == arch and (r.train, r.eval) == target}
    out = {}
    for seed in sorted(set(orig) & set(obf)):
        a, b = orig[seed], obf[seed]
        if a.labels is None or b.labels is None or not np.array_equal(a.labels, b.labels):
            return {}, f"{arch}: seed {seed}'s pickles list different examples"
        assert a.correct1 is not None and b.correct1 is not None
        assert a.correct5 is not None and b.correct5 is not None
        out[seed] = np.stack([a.correct1.astype(float) - b.correct1,
                              a.correct5.astype(float) - b.correct5])
    return out, None


def uncertainty_table(results: list[PickleResult], rows: list[TableRow], method: str, *,
                      train_only: bool = False, level: float = 0.95) -> tuple[str, list[str]]:
    """veil's addition to a paper table: per arch and the average, each drop's CI over
    seeds and images, its Holm-adjusted p (across the table's archs) and the reading."""
    notes: list[str] = []
    per_arch: dict[str, dict[int, np.ndarray]] = {}
    cells: dict[str, list[Any]] = {}
    for r in rows:
        drops, why = _paired_drops(results, r.arch, method, train_only)
        if why:
            notes.append(why)
        per_arch[r.arch] = drops
        cells[r.arch] = [_interval(drops, i, level) for i in range(2)]
    for i in range(2):
        adjusted = holm([cells[a][i].pvalue if cells[a][i] else np.nan for a in cells])
        for a, p in zip(cells, adjusted, strict=True):
            if cells[a][i] is not None:
                cells[a][i] = (cells[a][i], float(p))
    lines = []
    for arch, (top1, top5) in cells.items():
        lines.append([arch, str(len(per_arch[arch])), *_cells(top1), *_cells(top5)])
    common = sorted(set.intersection(*(set(d) for d in per_arch.values()))) if per_arch \
        else []
    shapes = {d.shape for v in per_arch.values() for d in v.values()}
    if len(per_arch) > 1 and common and len(shapes) == 1:
        averaged = {s: np.mean([per_arch[a][s] for a in per_arch], axis=0) for s in common}
        avg = [_interval(averaged, i, level) for i in range(2)]
        lines.append(["average", str(len(common)),
                      *_cells((avg[0], avg[0].pvalue) if avg[0] else None),
                      *_cells((avg[1], avg[1].pvalue) if avg[1] else None)])
    headers = ["model", "seeds", "top1 diff", "95% CI", "p (Holm)", "reading", "top5 diff",
               "95% CI", "p (Holm)", "reading"]
    return text_table(headers, lines), notes


def _interval(drops: dict[int, np.ndarray], metric: int, level: float) -> Any:
    if not drops:
        return None
    d = np.stack([v[metric] for _, v in sorted(drops.items())])  # (seed, example)
    return seed_image_interval(d.mean(axis=1), shared_image_variance(d), images=d.shape[1],
                               level=level).scaled(100.0)


def _cells(value: Any) -> list[str]:
    if value is None:
        return ["n/a", "n/a", "n/a", "n/a"]
    ci, p = value
    reading = verdict_from_p(ci.estimate, p, ci.seeds)
    return [f"{ci.estimate:.3f}", fmt_ci(ci.low, ci.high), fmt_p(p), reading]


UNCERTAINTY_CAPTION = (
    "Uncertainty (veil's addition, not in the paper): each drop's 95% CI over seeds and "
    "images (seed-paired t interval, df = seeds - 1, whose SE adds the between-seed "
    "covariance of per-image drops / images); p Holm-adjusted across the archs of the table "
    "(the average row: its own p); reading = drop or gain when that p < 0.05, else within "
    f"noise; with one seed no reading ({ONE_SEED}).")


@dataclass
class Table4Row:
    category: str  # the authors' synset name
    wnid: str
    values: dict[str, dict[str, tuple[float, float]]]  # quantity -> side -> (mean, sem) %
    per_seed: dict[str, dict[str, dict[int, float]]]  # quantity -> side -> seed -> %
    images: int  # validation examples of the category (per model)
    top1_image_var: float = np.nan  # shared image variance of the top-1 drop, points^2


def table4(results: list[PickleResult], method: str = "blur", *,
           sem_ddof: int = PAPER_SEM_DDOF) -> list[Table4Row]:
    """Table 4 as ``analysis/categorywise_accuracies.py`` computes it (lines cited at the
    top of the module's docstring; here by step):

    - original = every train+eval original pickle, obfuscated = every train+eval
      ``method`` pickle (lines 53-66; train-only pickles are skipped);
    - per seed, a category's top-1 / top-5 is the mean of the 0/1 answers on its examples
      pooled over every model of that seed (lines 70-86, 97-104);
    - per seed, its AP is the mean over those models of sklearn's AP on ``output_scores``
      (lines 88-95, 106-107);
    - mean and ``scipy.stats.sem(..., ddof=2)`` over seeds, times 100 (lines 121-135).
    """
    indices = table4_indices()
    sides = {"original": ("original", "original"), "obfuscated": (method, method)}
    rows = []
    for (category, wnid), k in zip(TABLE4_CATEGORIES, indices, strict=True):
        values: dict[str, dict[str, tuple[float, float]]] = {}
        per_seed: dict[str, dict[str, dict[int, float]]] = {}
        images = 0
        for side, condition in sides.items():
            chosen = [r for r in results if (r.train, r.eval) == condition]
            pooled: dict[str, dict[int, list[np.ndarray]]] = {"top1": {}, "top5": {},
                                                               "ap": {}}
            for r in chosen:
                assert r.labels is not None and r.correct1 is not None
                assert r.correct5 is not None
                mask = r.labels == k
                images = max(images, int(mask.sum()))
                pooled["top1"].setdefault(r.seed, []).append(r.correct1[mask].astype(float))
                pooled["top5"].setdefault(r.seed, []).append(r.correct5[mask].astype(float))
                if k in r.ap:
                    pooled["ap"].setdefault(r.seed, []).append(np.array([r.ap[k]]))
            for quantity, by_seed in pooled.items():
                seeds = {s: (float(np.mean(np.concatenate(v))) * 100
                             if sum(x.size for x in v) else np.nan)
                         for s, v in sorted(by_seed.items())}
                per_seed.setdefault(quantity, {})[side] = seeds
                values.setdefault(quantity, {})[side] = mean_sem(list(seeds.values()),
                                                                 ddof=sem_ddof)
        rows.append(Table4Row(category, wnid, values, per_seed, images,
                              _category_image_variance(results, method, k)))
    return rows


def _category_image_variance(results: list[PickleResult], method: str, k: int) -> float:
    """The shared image variance (points^2) of category ``k``'s top-1 drop: per seed, the
    per-example drop of each arch (original minus ``method`` pickle of the same arch and
    seed) averaged over the archs, then :func:`shared_image_variance` over seeds."""
    by_seed: dict[int, list[np.ndarray]] = {}
    archs = sorted({r.arch for r in results})
    for arch in archs:
        drops, why = _paired_drops(results, arch, method, False)
        if why:
            return np.nan
        labels = next((r.labels for r in results if r.arch == arch and r.labels is not None),
                      None)
        if labels is None:
            continue
        for seed, d in drops.items():
            by_seed.setdefault(seed, []).append(100.0 * d[0][labels == k])
    shapes = {x.shape for v in by_seed.values() for x in v}
    if len(by_seed) < 2 or len(shapes) != 1:
        return np.nan
    return shared_image_variance(np.stack([np.mean(v, axis=0)
                                           for _, v in sorted(by_seed.items())]))


def format_table4(rows: list[Table4Row], method: str) -> str:
    """The authors' layout (their tabulate headers, lines 141-152)."""
    word = _PARTICIPLES.get(method, method)
    headers = ["Category"]
    for q in ("top1", "top5", "AP"):
        headers += [f"{q} original", f"{q} {word}", f"{q} diff"]
    lines = []
    for r in rows:
        line = [r.category]
        for q in ("top1", "top5", "ap"):
            o, b = r.values[q]["original"], r.values[q]["obfuscated"]
            line += [_cell(o), _cell(b), _num(o[0] - b[0])]
        lines.append(line)
    return text_table(headers, lines)


def table4_uncertainty(rows: list[Table4Row], level: float = 0.95) -> str:
    """Per category: the top-1 and AP drops' seed intervals, BH across the categories."""
    from veil.analysis.stats import benjamini_hochberg

    results: dict[str, list[Any]] = {}
    for q in ("top1", "ap"):
        cis = []
        for r in rows:
            o, b = r.per_seed[q]["original"], r.per_seed[q]["obfuscated"]
            seeds = sorted(set(o) & set(b))
            drops = [o[s] - b[s] for s in seeds]
            image_var = (0.0 if q == "ap" or np.isnan(r.top1_image_var)
                         else float(r.top1_image_var))
            cis.append(seed_image_interval(drops, image_var, images=max(r.images, 1),
                                           level=level)
                       if drops and not np.isnan(drops).any() else None)
        adjusted = benjamini_hochberg([c.pvalue if c else np.nan for c in cis])
        results[q] = [(c, float(p)) if c else None for c, p in zip(cis, adjusted,
                                                                    strict=True)]
    lines = [[r.category, str(r.images), *_cells(results["top1"][i]),
              *_cells(results["ap"][i])] for i, r in enumerate(rows)]
    headers = ["Category", "val images", "top1 diff", "95% CI", "p (BH)", "reading",
               "AP diff", "95% CI", "p (BH)", "reading"]
    return text_table(headers, lines)


def _num(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def paper_tables(directory: str | Path, *, sem_ddof: int = PAPER_SEM_DDOF) -> str:
    """Every table the pickles in ``directory`` support, as text."""
    found = scan(directory)
    methods = sorted({r.train for r in found.results} - {"original"},
                     key=lambda m: (m not in _PARTICIPLES, m))
    parts = []
    sem_note = ("SEM with ddof=2, as the authors' scripts compute it" if sem_ddof == 2
                else f"SEM with ddof={sem_ddof}")
    titles = {"blur": "Table 3", "overlay": "Table B"}
    notes: list[str] = []
    for train_only in (False, True):
        for method in methods:
            rows = paper_table(found.results, method, train_only=train_only,
                               sem_ddof=sem_ddof)
            if not rows:
                continue
            if train_only:
                title = (f"Trained on {_PARTICIPLES.get(method, method)} images, "
                         "evaluated on original images")
            else:
                title = (f"{titles.get(method, 'Table')}: original vs "
                         f"{_PARTICIPLES.get(method, method)} (train and evaluate)")
            seeds = sorted({r.seeds_original for r in rows} | {r.seeds_obfuscated for r in rows})
            table = format_table(rows, method, train_only=train_only)
            parts.append(f"{title}\naccuracy in %, mean +- {sem_note}; seeds per arch: "
                         f"{'/'.join(map(str, seeds))}\n\n{table}")
            extra, more = uncertainty_table(found.results, rows, method,
                                            train_only=train_only)
            notes += more
            parts.append(f"{UNCERTAINTY_CAPTION}\n\n{extra}")
    for method in methods:
        has = [r for r in found.results if (r.train, r.eval) == (method, method)]
        if not has or not any(r.train == r.eval == "original" for r in found.results):
            continue
        rows4 = table4(found.results, method, sem_ddof=sem_ddof)
        if not any(r.images for r in rows4):
            continue  # the pickles hold none of the eight categories (not ILSVRC val)
        name = "Table 4" if method == "blur" else "Table 4 layout"
        ap_note = ("AP from output_scores (logits) with sklearn's average_precision_score"
                   if any(r.ap for r in found.results)
                   else "no output_scores in the pickles: AP not available")
        parts.append(
            f"{name}: the paper's eight categories, original vs "
            f"{_PARTICIPLES.get(method, method)} (train and evaluate)\n"
            f"top-1/top-5/AP in %, per seed pooled over every arch, mean +- {sem_note}; "
            f"{ap_note}\n\n{format_table4(rows4, method)}")
        parts.append(
            "Uncertainty (veil's addition): seed-paired t interval over the per-seed drops "
            "(df = seeds - 1); top-1's SE also carries the category's images (between-seed "
            "covariance of per-example drops), AP's has the seed part only (AP is no mean "
            "over images); p Benjamini-Hochberg-adjusted across the eight categories; "
            "reading = drop or "
            f"gain when that p < 0.05; with one seed no reading ({ONE_SEED}).\n\n"
            f"{table4_uncertainty(rows4)}")
    if not parts:
        parts.append("No arch has both original and obfuscated pickles.\n")
    for note in dict.fromkeys(notes):
        parts.append(f"Note: {note}\n")
    if found.unrecognised:
        parts.append("Not recognised (skipped): " + ", ".join(found.unrecognised) + "\n")
    return "\n".join(parts)
