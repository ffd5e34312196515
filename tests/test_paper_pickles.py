"""`veil analyze --paper-pickles`: the paper's Table 3 / Table B from the authors' pickles.

The pickles here are written by the test with known accuracies (8 validation images
each), so every printed number is known in advance; they were checked by hand, e.g.
top-1 6/8, 5/8, 7/8 over three seeds = 75, 62.5, 87.5 %: mean 75.000, and the authors'
SEM ``std(ddof=2) / sqrt(3) = sqrt(312.5 / 1) / sqrt(3) = 10.206``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from veil.analysis.paper_pickles import (
    TABLE4_CATEGORIES,
    paper_tables,
    parse_name,
    table4_indices,
)
from veil.cli import main
from veil.errors import VeilError

N = 8


def _examples(top1: int, top5: int) -> list[dict[str, object]]:
    """N examples: the first ``top1`` right at rank 1, the next ``top5 - top1`` right at
    rank 3, the rest wrong."""
    out = []
    for i in range(N):
        label = 10 * i + 3
        others = [500 + 5 * i + j for j in range(5)]
        if i < top1:
            top = [label, *others[:4]]
        elif i < top5:
            top = [others[0], others[1], label, others[2], others[3]]
        else:
            top = others
        out.append({"label": label, "top5_predictions": top})
    return out


def _write(folder: Path, name: str, top1: int, top5: int) -> None:
    rng = np.random.default_rng(len(name))
    data = {"output_scores": rng.random((N, 1000), dtype=np.float32),
            "examples": _examples(top1, top5)}
    with (folder / name).open("wb") as handle:
        pickle.dump(data, handle)


# (arch, infix) -> per-seed (top1 count, top5 count)
KNOWN = {
    ("resnet18", ""): [(6, 7), (5, 7), (7, 8)],
    ("resnet18", "blurtrain_blurval_"): [(5, 6), (5, 7), (6, 7)],
    ("resnet18", "overlaytrain_overlayval_"): [(4, 8), (5, 8), (6, 8)],
    ("resnet18", "blurtrain_"): [(6, 7), (5, 7), (7, 8)],
    ("shufflenet_v2_x1_0", ""): [(3, 7), (4, 8), (4, 8)],
    ("shufflenet_v2_x1_0", "blurtrain_blurval_"): [(6, 8), (7, 8), (8, 8)],
}


@pytest.fixture
def pickles(tmp_path: Path) -> Path:
    folder = tmp_path / "eval_pickles"
    folder.mkdir()
    for (arch, infix), seeds in KNOWN.items():
        for seed, (top1, top5) in enumerate(seeds, start=1):
            _write(folder, f"eval_{arch}_{infix}seed{seed}_val_results.pickle", top1, top5)
    _write(folder, "eval_resnet18_blurval_seed1_val_results.pickle", 1, 1)  # not a condition
    return folder


def _rows(text: str) -> dict[str, list[str]]:
    """Table lines by their first cell, split on the column gaps."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 7:
            rows.setdefault(cells[0], cells)
    return rows


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n\n", text.index("average", start))
    return text[start:end]


def test_cli_prints_table_3_with_the_known_numbers(pickles: Path) -> None:
    result = CliRunner().invoke(main, ["analyze", "--paper-pickles", str(pickles)])
    assert result.exit_code == 0, result.output
    table = _rows(_section(result.output, "Table 3"))
    assert table["model"] == ["model", "top1 original", "top1 blurred", "top1 diff",
                              "top5 original", "top5 blurred", "top5 diff"]
    assert table["resnet18"] == ["resnet18", "75.000 +- 10.206", "66.667 +- 5.893", "8.333",
                                 "91.667 +- 5.893", "83.333 +- 5.893", "8.333"]
    assert table["shufflenet_v2_x1_0"] == [
        "shufflenet_v2_x1_0", "45.833 +- 5.893", "87.500 +- 10.206", "-41.667",
        "95.833 +- 5.893", "100.000 +- 0.000", "-4.167"]
    # the average row averages the per-arch means, as the paper does
    assert table["average"] == ["average", "60.417", "77.083", "-16.667", "93.750", "91.667",
                                "2.083"]
    # the paper's order of architectures
    section = _section(result.output, "Table 3")
    assert section.index("shufflenet_v2_x1_0") < section.index("resnet18")


def test_cli_prints_table_b_for_overlay(pickles: Path) -> None:
    result = CliRunner().invoke(main, ["analyze", "--paper-pickles", str(pickles)])
    table = _rows(_section(result.output, "Table B"))
    assert table["resnet18"] == ["resnet18", "75.000 +- 10.206", "62.500 +- 10.206", "12.500",
                                 "91.667 +- 5.893", "100.000 +- 0.000", "-8.333"]
    assert "shufflenet_v2_x1_0" not in table  # no overlay pickles for it
    assert table["model"][2] == "top1 overlaid"


def test_train_obfuscated_eval_original_is_listed_separately(pickles: Path) -> None:
    text = paper_tables(pickles)
    section = _section(text, "Trained on blurred images, evaluated on original images")
    assert _rows(section)["resnet18"][1:4] == ["75.000 +- 10.206", "75.000 +- 10.206",
                                               "0.000"]
    assert "Not recognised (skipped): eval_resnet18_blurval_seed1_val_results.pickle" in text


def test_textbook_sem_on_request(pickles: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["analyze", "--paper-pickles", str(pickles),
                                       "--sem-ddof", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # std(ddof=1) of 75, 62.5, 87.5 = 12.5; / sqrt(3) = 7.217
    assert _rows(_section(result.output, "Table 3"))["resnet18"][1] == "75.000 +- 7.217"
    assert (out / "paper_tables.txt").read_text() in result.output


@pytest.mark.parametrize(("name", "parsed"), [
    ("eval_resnet18_seed1_val_results.pickle", ("resnet18", "original", "original", 1)),
    ("eval_shufflenet_v2_x1_0_blurtrain_blurval_seed3_val_results.pickle",
     ("shufflenet_v2_x1_0", "blur", "blur", 3)),
    ("eval_mobilenet_v2_overlaytrain_overlayval_seed2_val_results.pickle",
     ("mobilenet_v2", "overlay", "overlay", 2)),
    ("eval_vgg11_blurtrain_seed1_val_results.pickle", ("vgg11", "blur", "original", 1)),
    ("eval_vgg11_blurval_seed1_val_results.pickle", None),
    ("eval_vgg11_seed1_train_results.pickle", None),
    ("results.pickle", None),
])
def test_parse_name(name: str, parsed: tuple[str, str, str, int] | None) -> None:
    assert parse_name(name) == parsed


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(VeilError, match="no eval_"):
        paper_tables(tmp_path)
    (tmp_path / "eval_resnet18_seed1_val_results.pickle").write_bytes(b"not a pickle")
    result = CliRunner().invoke(main, ["analyze", "--paper-pickles", str(tmp_path)])
    assert result.exit_code != 0
    assert "not an evaluation pickle" in result.output
    assert "Traceback" not in result.output


# -- Table 4 and the uncertainty tables --------------------------------------------------------

T4_PER_CLASS = 3  # validation examples per Table 4 category
T4_ARCHS = ("alexnet", "resnet18")


def _table4_pickle(folder: Path, name: str, rng: np.random.Generator) -> dict[str, object]:
    """24 examples, 3 of each Table 4 category, random logits; top-5 from the logits."""
    labels = np.repeat(table4_indices(), T4_PER_CLASS)
    scores = rng.normal(size=(labels.size, 1000)).astype(np.float32)
    # some signal: the true class gets a random boost, so accuracy and AP vary
    scores[np.arange(labels.size), labels] += rng.uniform(0, 4, labels.size)
    top5 = np.argsort(-scores, axis=1)[:, :5]
    data = {"output_scores": scores,
            "examples": [{"label": int(lab), "top5_predictions": [int(t) for t in top]}
                         for lab, top in zip(labels, top5, strict=True)]}
    with (folder / name).open("wb") as handle:
        pickle.dump(data, handle)
    return data


def test_table4_from_pickles_matches_the_authors_recipe(tmp_path: Path) -> None:
    from scipy import stats as sps
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(4)
    data: dict[tuple[str, str, int], dict[str, object]] = {}
    for arch in T4_ARCHS:
        for infix, side in (("", "original"), ("blurtrain_blurval_", "blur")):
            for seed in (1, 2, 3):
                name = f"eval_{arch}_{infix}seed{seed}_val_results.pickle"
                data[(arch, side, seed)] = _table4_pickle(tmp_path, name, rng)
    result = CliRunner().invoke(main, ["analyze", "--paper-pickles", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = result.output[result.output.index("Table 4: the paper's eight categories"):]
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ".n.0" in line:
            lines.setdefault(line.split()[0], line.split())  # Table 4, not its uncertainty

    # the authors' categorywise_accuracies.py, by hand: per seed, pool the 0/1 answers
    # of every model; AP per model with sklearn on output_scores, mean over models; then
    # mean and scipy.stats.sem(ddof=2) over seeds, x 100, "%.03f"
    def per_seed(side: str, k: int, what: str) -> list[float]:
        values = []
        for seed in (1, 2, 3):
            if what == "ap":
                aps = []
                for arch in T4_ARCHS:
                    d = data[(arch, side, seed)]
                    y = np.array([e["label"] for e in d["examples"]]) == k
                    aps.append(average_precision_score(y, d["output_scores"][:, k]))
                values.append(float(np.mean(aps)))
                continue
            pooled = []
            for arch in T4_ARCHS:
                for e in data[(arch, side, seed)]["examples"]:
                    if e["label"] == k:
                        top = e["top5_predictions"]
                        pooled.append(float(k == top[0] if what == "top1" else k in top))
            values.append(float(np.mean(pooled)))
        return values

    for (category, _), k in zip(TABLE4_CATEGORIES, table4_indices(), strict=True):
        expected = [category]
        for what in ("top1", "top5", "ap"):
            o, b = per_seed("original", k, what), per_seed("blur", k, what)
            expected += [f"{100 * np.mean(o):.3f}", "+-", f"{100 * sps.sem(o, ddof=2):.3f}",
                         f"{100 * np.mean(b):.3f}", "+-", f"{100 * sps.sem(b, ddof=2):.3f}",
                         f"{100 * np.mean(o) - 100 * np.mean(b):.3f}"]
        assert lines[category] == expected
    assert "mean +- SEM with ddof=2" in text
    assert "AP from output_scores (logits) with sklearn's average_precision_score" in text
    assert "Benjamini-Hochberg-adjusted across the eight categories" in text


def test_seeds_that_disagree_are_not_called_significant(tmp_path: Path) -> None:
    # resnet18's seeds: the blurred model loses 3/8, gains 2/8 and loses 1/8 of the
    # answers: the paper's table shows a mean drop of 8.333 points, which the seeds
    # explain; the image-only view (one seed's 3 images) would call seed 1 a drop
    seeds = {"": [(7, 8), (5, 8), (6, 8)], "blurtrain_blurval_": [(4, 8), (7, 8), (5, 8)]}
    for infix, counts in seeds.items():
        for seed, (top1, top5) in enumerate(counts, start=1):
            _write(tmp_path, f"eval_resnet18_{infix}seed{seed}_val_results.pickle", top1, top5)
    text = paper_tables(tmp_path)
    assert _rows(_section(text, "Table 3"))["resnet18"][3] == "8.333"
    uncertainty = text[text.index("Uncertainty (veil's addition"):]
    row = next(line for line in uncertainty.splitlines() if line.startswith("resnet18"))
    assert "within noise" in row and " drop" not in row.replace("within noise", "")
    assert "Holm-adjusted across the archs" in uncertainty


def test_one_seed_pickles_get_no_reading(tmp_path: Path) -> None:
    for infix, (top1, top5) in (("", (8, 8)), ("blurtrain_blurval_", (2, 8))):
        _write(tmp_path, f"eval_resnet18_{infix}seed1_val_results.pickle", top1, top5)
    text = paper_tables(tmp_path)
    row = next(line for line in text[text.index("Uncertainty"):].splitlines()
               if line.startswith("resnet18"))
    assert "one seed: training randomness unmeasured" in row
