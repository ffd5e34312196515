"""Rebuild the paper's Table 3 (blur) and Table B (overlay) from the authors' released
evaluation pickles, so anyone can check veil's numbers against theirs.

Each pickle is a dict with ``output_scores`` (N x 1000) and ``examples`` (dicts with
``label`` and ``top5_predictions``). File names, as the authors' analysis scripts
parse them::

    eval_<arch>_seed<k>_val_results.pickle                          original
    eval_<arch>_blurtrain_blurval_seed<k>_val_results.pickle        blurred
    eval_<arch>_overlaytrain_overlayval_seed<k>_val_results.pickle  overlaid

A name with ``<m>train`` but not ``<m>val`` is a model trained on obfuscated images and
evaluated on originals; it is listed separately (the authors' scripts skip it). Any other
name is reported as not recognised.

The numbers follow the authors' ``analysis/overall_accuracy*.py``: top-1 is
``label == top5_predictions[0]``, top-5 is ``label in top5_predictions``, accuracies in
%, the mean over seeds with ``scipy.stats.sem(..., ddof=2)`` as the "+-" (their choice;
``ddof=1`` is the textbook SEM and is available as an option), the drop is original mean
minus obfuscated mean, and the ``average`` row averages the per-arch means. Everything
is printed with 3 decimals, as the paper prints it.
"""

from __future__ import annotations

import pickle
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.analysis.stats import mean_sem
from veil.analysis.tables import text_table
from veil.errors import VeilError

#: the paper's architectures, in its tables' order
PAPER_ARCHS = (
    "alexnet", "squeezenet1_0", "shufflenet_v2_x1_0", "vgg11", "vgg13", "vgg16", "vgg19",
    "mobilenet_v2", "densenet121", "densenet201", "resnet18", "resnet34", "resnet50",
    "resnet101", "resnet152",
)
PAPER_SEM_DDOF = 2
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
    examples = results["examples"]
    if not examples:
        raise VeilError("a pickle has no examples")
    top1 = sum(e["label"] == e["top5_predictions"][0] for e in examples)
    top5 = sum(e["label"] in list(e["top5_predictions"]) for e in examples)
    return top1 / len(examples), top5 / len(examples), len(examples)


def scan(directory: str | Path) -> Scan:
    """Read every ``eval_*_val_results.pickle`` in ``directory``.

    The pickles are the authors' files: loading a pickle runs code, so read only files
    you trust.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise VeilError(f"{directory} is not a folder")
    found = Scan()
    for path in sorted(directory.glob("eval_*_val_results.pickle")):
        parsed = parse_name(path.name)
        if parsed is None:
            found.unrecognised.append(path.name)
            continue
        arch, train, evaluated, seed = parsed
        try:
            with path.open("rb") as handle:
                data = pickle.load(handle)
            top1, top5, n = accuracies(data)
        except (OSError, pickle.UnpicklingError, KeyError, TypeError, EOFError) as exc:
            raise VeilError(f"{path.name}: not an evaluation pickle ({exc})") from exc
        found.results.append(PickleResult(arch, train, evaluated, seed, top1, top5, n, path))
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


def paper_tables(directory: str | Path, *, sem_ddof: int = PAPER_SEM_DDOF) -> str:
    """Every table the pickles in ``directory`` support, as text."""
    found = scan(directory)
    methods = sorted({r.train for r in found.results} - {"original"},
                     key=lambda m: (m not in _PARTICIPLES, m))
    parts = []
    sem_note = ("SEM with ddof=2, as the authors' scripts compute it" if sem_ddof == 2
                else f"SEM with ddof={sem_ddof}")
    titles = {"blur": "Table 3", "overlay": "Table B"}
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
    if not parts:
        parts.append("No arch has both original and obfuscated pickles.\n")
    if found.unrecognised:
        parts.append("Not recognised (skipped): " + ", ".join(found.unrecognised) + "\n")
    return "\n".join(parts)
