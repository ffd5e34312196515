"""`veil analyze` and `veil report` on small synthetic run folders with known predictions.

The run: 6 ImageNet classes, 60 validation images ``val/img_<i>.JPEG`` with label
``i % 6``, one arch, seeds 0 and 1, method blur. A model is right on image i when
``i < cutoff``:

    train-original/eval-original  cutoff 45 (seed 0), 48 (seed 1)  -> 75 %, 80 %
    train-blur/eval-blur          cutoff 42, 45                     -> 70 %, 75 %
    train-blur/eval-original      cutoff 45, 48                     -> same as original

so top-1 is 77.5 ± 2.5 vs 72.5 ± 2.5, a drop of 5.0 points in both seeds. The interval
over seeds and images: the per-seed drops agree (SD 0) and the two seeds' per-image drops
(images 42-44 vs 45-47) have a negative covariance, so the shared image part is 0 and the
CI is [5, 5]: a drop. McNemar per seed: 3 images right only for the original model, none
the other way: exact p = 0.25.
Wrong answers: class 0 -> 1, 1 -> 0 (a mutual confusion pair), k -> k+1 otherwise.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from veil.analysis import AnalyzeOptions, analyze, load_run
from veil.analysis.per_category import lookalike_pairs, most_confused
from veil.analysis.stats import paired_bootstrap
from veil.boxes import Box
from veil.cli import main
from veil.interchange import write_faces

CLASSES = [("n02109961", "Eskimo dog"), ("n02110185", "Siberian husky"), ("n01440764", "tench"),
           ("n03394916", "French horn"), ("n03417042", "garbage truck"),
           ("n01530575", "brambling")]
K = len(CLASSES)
N_VAL = 60
CUTOFFS = {("original", "original"): (45, 48), ("blur", "blur"): (42, 45),
           ("blur", "original"): (45, 48)}
ARCH = "mobilenet_v3_small"  # small enough to build and save in a test
FACE_BOX = (16.0, 16.0, 44.0, 48.0)


def _wrong(label: int) -> int:
    return {0: 1, 1: 0}.get(label, (label + 1) % K)


def _logits(scores: np.ndarray) -> np.ndarray:
    """Logits whose per-class ranking of the images differs from the softmax's: each
    image gets its own offset (softmax removes it, a column's ranking keeps it)."""
    offset = np.linspace(3.0, 0.0, scores.shape[0], dtype=np.float32)[:, None]
    return np.log(scores) + offset


def write_predictions(path: Path, cutoff: int, *, probs: bool = True,
                      logits: bool = False) -> None:
    labels = np.arange(N_VAL) % K
    pred = np.array([lab if i < cutoff else _wrong(lab) for i, lab in enumerate(labels)])
    scores = np.full((N_VAL, K), 0.02, dtype=np.float32)
    scores[np.arange(N_VAL), pred] = 0.6
    # the true class second when wrong, so top-5 stays right
    scores[np.arange(N_VAL), labels] = np.maximum(scores[np.arange(N_VAL), labels], 0.3)
    # a little per-image variety so AP is not degenerate
    scores += np.linspace(0, 0.01, N_VAL, dtype=np.float32)[:, None]
    scores /= scores.sum(axis=1, keepdims=True)
    top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    columns = {
        "key": pa.array([f"val/img_{i:03d}.JPEG" for i in range(N_VAL)][::-1]),  # unsorted
        "label": pa.array(labels[::-1], pa.int64()),
        "pred": pa.array(pred[::-1], pa.int64()),
        "top5": pa.array([list(map(int, r)) for r in top5[::-1]], pa.list_(pa.int32(), 5)),
        "correct1": pa.array((pred == labels)[::-1]),
        "correct5": pa.array((top5 == labels[:, None]).any(axis=1)[::-1]),
    }
    if probs:
        columns["probs"] = pa.array([list(map(float, r)) for r in scores[::-1]],
                                    pa.list_(pa.float32(), K))
    if logits:
        columns["logits"] = pa.array([list(map(float, r)) for r in _logits(scores)[::-1]],
                                     pa.list_(pa.float32()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def write_faces_parquet(path: Path) -> None:
    """Train: 20 images per class with 10, 5, 0, 15, 2, 0 of them with faces; val: the
    images of class 3 (French horn) have one face each."""
    with_faces = [10, 5, 0, 15, 2, 0]
    rows = []
    for label in range(K):
        for j in range(20):
            has = j < with_faces[label]
            rows.append({"key": f"train/{CLASSES[label][0]}/{j}.JPEG", "split": "train",
                         "label": label, "n_faces": (1 + j % 3) if has else 0,
                         "face_area": 0.05 * (label + 1) if has else 0.0,
                         "width": 64, "height": 64})
    for i in range(N_VAL):
        has = i % K == 3
        rows.append({"key": f"val/img_{i:03d}.JPEG", "split": "val", "label": i % K,
                     "n_faces": int(has), "face_area": 0.2 if has else 0.0,
                     "width": 64, "height": 64})
    pd.DataFrame(rows).to_parquet(path)


def make_run(root: Path, *, probs: bool = True, models: bool = False,
             faces: bool = True, archs: tuple[str, ...] = (ARCH,), seeds: int = 2,
             cutoffs: dict[tuple[str, str], tuple[int, ...]] | None = None,
             logits: bool = False, face_matching: dict[str, Any] | None = None) -> Path:
    data = root / "data"
    (data / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(N_VAL):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "val" / f"img_{i:03d}.JPEG", quality=90)
    faces_file = root / "faces.json"
    write_faces({f"val/img_{i:03d}.JPEG": [Box(*FACE_BOX)] if i % K == 3 else []
                 for i in range(N_VAL)}, faces_file)
    run = root / "run"
    run.mkdir()
    study = {"veil_version": "test", "created": "2024-01-01T00:00:00Z", "data": str(data),
             "faces": f"faces file {faces_file}",  # veil study records the description
             "methods": ["blur"], "archs": list(archs),
             "seeds": list(range(seeds)),
             "profile": "quick", "hyper": {"img_size": 64},
             "classes": [{"index": i, "wnid": w, "name": n} for i, (w, n) in enumerate(CLASSES)],
             "conditions": [], "status": "done"}
    if face_matching is not None:
        study["face_matching"] = face_matching
    (run / "study.json").write_text(json.dumps(study))
    if faces:
        write_faces_parquet(run / "faces.parquet")
    for arch in archs:
        for (train, evaluated), per_seed in (cutoffs or CUTOFFS).items():
            for seed, cutoff in enumerate(per_seed[:seeds]):
                folder = run / "runs" / arch / f"seed{seed}" / f"train-{train}"
                write_predictions(folder / "predictions" / f"eval-{evaluated}.parquet",
                                  cutoff, probs=probs, logits=logits)
    if models:
        import torch
        import torchvision

        for train in ("original", "blur"):
            torch.manual_seed(len(train))
            model = torchvision.models.get_model(ARCH, num_classes=K)
            torch.save(model.state_dict(), run / "runs" / ARCH / "seed0" / f"train-{train}"
                       / "model.pt")
    return run


def _overall(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "analysis" / "overall.csv")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One analysed run shared by the tests that only read its outputs."""
    run = make_run(tmp_path_factory.mktemp("analysed"))
    analyze(run, options=AnalyzeOptions(gradcam=False, resamples=500))
    return run


# -- veil analyze -----------------------------------------------------------------------------


def test_analyze_writes_table_3_with_known_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    result = CliRunner().invoke(main, ["analyze", str(run), "--no-gradcam"])
    assert result.exit_code == 0, result.output
    frame = _overall(run)
    row = frame[(frame["arch"] == ARCH) & (frame["comparison"] == "obfuscated")].iloc[0]
    assert row["top1_original"] == pytest.approx(77.5)
    assert row["top1_original_sem"] == pytest.approx(2.5)
    assert row["top1_obfuscated"] == pytest.approx(72.5)
    assert row["top1_obfuscated_sem"] == pytest.approx(2.5)
    assert row["top1_drop"] == pytest.approx(5.0)
    # both seeds drop exactly 5 points; the shared image part is clipped at 0
    assert (row["top1_drop_ci_low"], row["top1_drop_ci_high"]) == pytest.approx((5.0, 5.0))
    assert row["top1_verdict"] == "drop"
    assert row["top1_mcnemar_p_max"] == pytest.approx(0.25)
    assert row["top5_drop"] == pytest.approx(0.0)
    assert row["top5_verdict"] == "within noise"
    # train blur / eval original: identical answers, a drop of exactly 0, within noise
    other = frame[frame["comparison"] == "train-obfuscated"].iloc[0]
    assert other["top1_drop"] == 0.0
    assert (other["top1_drop_ci_low"], other["top1_drop_ci_high"]) == (0.0, 0.0)
    assert other["top1_verdict"] == "within noise"
    assert other["top1_mcnemar_p_max"] == 1.0
    assert "top-1 dropped 5.00 points (95% CI [5.00, 5.00] over seeds and images" \
        in result.output
    assert "top-1 drop +0.00 points" in result.output and "within noise" in result.output
    markdown = (run / "analysis" / "overall.md").read_text()
    assert "the paper's Table 3" in markdown
    assert "77.500 ± 2.500" in markdown and "72.500 ± 2.500" in markdown


def test_average_row_and_a_single_seed(tmp_path: Path) -> None:
    run = make_run(tmp_path, archs=("resnet18", "alexnet"), seeds=1)
    result = CliRunner().invoke(main, ["analyze", str(run), "--no-gradcam",
                                       "--bootstrap", "300"])
    assert result.exit_code == 0, result.output
    frame = _overall(run)
    table = frame[frame["comparison"] == "obfuscated"].set_index("arch")
    assert list(table.index) == ["resnet18", "alexnet", "average"]  # study.json's order
    # seed 0 only: 75 % vs 70 %, and one seed has no SEM
    assert table.at["alexnet", "top1_original"] == pytest.approx(75.0)
    assert math.isnan(table.at["alexnet", "top1_original_sem"])
    assert table.at["average", "top1_drop"] == pytest.approx(5.0)
    # one seed: training randomness is unmeasured, so no interval and no verdict
    assert math.isnan(table.at["average", "top1_drop_ci_low"])
    assert set(table["top1_verdict"]) == {"one seed: training randomness unmeasured"}
    assert "no verdict (one seed: training randomness unmeasured)" in result.output
    markdown = (run / "analysis" / "overall.md").read_text()
    assert "| alexnet | 1 | 75.000 | 70.000 | 5.000 | [n/a, n/a] | n/a | one seed" in markdown


def test_a_drop_that_seed_variation_explains_is_not_called_a_drop(tmp_path: Path) -> None:
    # 3 seeds: original 80 % each time; blur 66.7, 83.3, 73.3 %: per-seed drops of 13.3,
    # -3.3 and 6.7 points. Mean 5.6, SE 4.8 over seeds, t(2): the 95% CI spans 0.
    cutoffs = {("original", "original"): (48, 48, 48), ("blur", "blur"): (40, 50, 44),
               ("blur", "original"): (48, 48, 48)}
    run = make_run(tmp_path, seeds=3, cutoffs=cutoffs)
    analyze(run, options=AnalyzeOptions(gradcam=False))
    row = _overall(run).set_index("comparison").loc["obfuscated"]
    drops = 100 * (np.array([48, 48, 48]) - np.array([40, 50, 44])) / N_VAL
    assert row["top1_drop"] == pytest.approx(drops.mean())
    assert row["top1_seed_se"] == pytest.approx(drops.std(ddof=1) / math.sqrt(3))
    assert row["top1_drop_ci_low"] < 0 < row["top1_drop_ci_high"]
    assert row["top1_verdict"] == "within noise"
    # the image-only paired bootstrap veil used before calls the same data a drop
    idx = np.arange(N_VAL)
    original = np.mean([idx < c for c in cutoffs[("original", "original")]], axis=0)
    blurred = np.mean([idx < c for c in cutoffs[("blur", "blur")]], axis=0)
    old = paired_bootstrap(original, blurred, resamples=4000, seed=0)[0]
    assert old.low > 0


def test_summary_json_has_the_key_numbers_and_is_reproducible(analysed: Path,
                                                              tmp_path: Path) -> None:
    run = analysed
    saved = json.loads((run / "analysis" / "summary.json").read_text())
    first = saved
    again = analyze(run, tmp_path / "again", AnalyzeOptions(gradcam=False, resamples=500)
                    ).summary
    row = next(r for r in saved["overall"] if r["comparison"] == "obfuscated")
    assert row["top1"]["drop"] == pytest.approx(5.0)
    assert [m["pvalue"] for m in row["mcnemar"]] == pytest.approx([0.25, 0.25])
    assert {m["method"] for m in row["mcnemar"]} == {"exact-binomial"}
    assert [r["top1"]["ci_low"] for r in first["overall"]] == \
        [r["top1"]["ci_low"] for r in again["overall"]]
    for name in ("overall_drops.png", "faces_per_category.png", "faces_per_image.png",
                 "affected_blur.png", "correlation_blur.png"):
        assert (run / "analysis" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_category_top1_ap_and_lookalikes(analysed: Path) -> None:
    run = analysed
    frame = pd.read_csv(run / "analysis" / "per_category_blur.csv")
    rows = frame[frame["arch"] == "all"].set_index("class_index")

    def top1(cutoff: int, label: int) -> float:
        images = [i for i in range(N_VAL) if i % K == label]
        return 100 * sum(i < cutoff for i in images) / len(images)

    for label in range(K):
        original = np.mean([top1(c, label) for c in CUTOFFS[("original", "original")]])
        blurred = np.mean([top1(c, label) for c in CUTOFFS[("blur", "blur")]])
        assert rows.at[label, "top1_original"] == pytest.approx(original)
        assert rows.at[label, "top1_drop"] == pytest.approx(original - blurred)
        assert rows.at[label, "val_images"] == 10
    assert rows["ap_original"].between(0, 100).all()
    assert rows["ap_drop"].notna().all()
    # Eskimo dog and Siberian husky are each other's most frequent confusion
    lookalikes = pd.read_csv(run / "analysis" / "lookalikes_blur.csv")
    flagged = lookalikes[lookalikes["flagged"]]
    assert [(r.name_a, r.name_b, r.reason) for r in flagged.itertuples()] == [
        ("Eskimo dog", "Siberian husky", "mutual confusion")]
    assert rows.at[0, "lookalike_of"] == "Siberian husky"
    # face columns joined in
    assert rows.at[3, "share_with_faces"] == pytest.approx(0.75)
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    per = summary["per_category"]["blur"]
    assert per["ranked_by"] == "ap_drop"
    drops = [r["ap_drop"] for r in per["most_affected"]]
    assert drops == sorted(drops, reverse=True)


def test_without_probabilities_categories_are_ranked_by_top1(tmp_path: Path) -> None:
    run = make_run(tmp_path, probs=False)
    result = analyze(run, options=AnalyzeOptions(gradcam=False, resamples=200))
    per = result.summary["per_category"]["blur"]
    assert per["ap_available"] is False
    assert per["ranked_by"] == "top1_drop"
    assert "AP is not available" in (run / "analysis" / "per_category_blur.md").read_text()


def test_face_statistics_and_supercategories(analysed: Path) -> None:
    run = analysed
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    faces = summary["faces"]
    assert faces["split"] == "train"
    assert (faces["images"], faces["with_faces"]) == (120, 32)
    # faces per image cycle 1, 2, 3 within each class's images with faces
    # (10 -> 4,3,3; 5 -> 2,2,1; 15 -> 5,5,5; 2 -> 1,1,0)
    assert faces["faces_per_image_histogram"] == {"1": 12, "2": 11, "3": 9, "4": 0, "5": 0,
                                                  "6": 0, "7": 0, "8": 0, "9": 0, "10+": 0}
    assert faces["categories_over_50pct"] == 2  # 50% and 75%
    assert faces["categories_over_25pct"] == 3  # and exactly 25%
    per_class = pd.read_csv(run / "analysis" / "faces_per_category.csv").set_index("name")
    assert per_class.at["Eskimo dog", "share_with_faces"] == pytest.approx(0.5)
    assert per_class.at["French horn", "mean_face_area"] == pytest.approx(0.2)
    assert math.isnan(per_class.at["tench", "mean_face_area"])  # no faces at all
    supers = {s["supercategory"]: s for s in faces["supercategories"]}
    assert list(supers) == ["clothing.n.01", "wheeled_vehicle.n.01", "musical_instrument.n.01",
                            "bird.n.01", "insect.n.01"]
    assert (supers["musical_instrument.n.01"]["categories"],
            supers["musical_instrument.n.01"]["images"],
            supers["musical_instrument.n.01"]["with_faces_pct"]) == (1, 20, 75.0)
    assert supers["wheeled_vehicle.n.01"]["with_faces_pct"] == pytest.approx(10.0)
    assert supers["bird.n.01"]["with_faces_pct"] == 0.0
    assert supers["clothing.n.01"]["categories"] == 0


def sps_fdr(pvalues: list[float]) -> list[float]:
    """scipy's Benjamini-Hochberg, the reference for veil's."""
    from scipy import stats

    return list(stats.false_discovery_control(pvalues, method="bh"))


def test_correlation_of_drop_with_faces(analysed: Path) -> None:
    from scipy import stats

    run = analysed
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    records = summary["correlation"]
    # the drop is measured on val, so val's face statistics come first; train's beside them
    assert [r["face_split"] for r in records][:1] == ["val"]
    assert {r["face_split"] for r in records} == {"val", "train"}
    per = pd.read_csv(run / "analysis" / "per_category_blur.csv")
    rows = per[per["arch"] == "all"]
    for split, column in (("val", "share_with_faces_val"), ("train", "share_with_faces")):
        record = next(r for r in records if r["drop"] == "ap_drop" and r["face_split"] == split
                      and r["face_variable"] == "share_with_faces")
        expected = stats.spearmanr(rows[column], rows["ap_drop"])
        assert record["n"] == K
        assert record["spearman"] == pytest.approx(expected.statistic)
        assert record["spearman_p"] == pytest.approx(expected.pvalue)
        pearson = stats.pearsonr(rows[column], rows["ap_drop"])
        assert record["pearson"] == pytest.approx(pearson.statistic)
    # Benjamini-Hochberg across every correlation of the table
    raw = [r["spearman_p"] for r in records]
    defined = [p for p in raw if p is not None]
    adjusted = sps_fdr(defined)
    assert [r["spearman_p_bh"] for r in records if r["spearman_p"] is not None] == \
        pytest.approx(adjusted)
    area = next(r for r in records if r["face_variable"] == "mean_face_area"
                and r["face_split"] == "train")
    assert area["n"] == 4  # two classes have no faces, so no face area
    markdown = (run / "analysis" / "correlation.md").read_text()
    assert "measured on the val split" in markdown
    assert "Benjamini-Hochberg-adjusted across all correlations" in markdown
    # every class drops top-1 by exactly 5 points: no correlation can be claimed
    flat = next(r for r in summary["correlation"] if r["drop"] == "top1_drop")
    assert flat["spearman"] is None and flat["pearson"] is None


def test_gradcam_grid_from_the_runs_models(tmp_path: Path) -> None:
    run = make_run(tmp_path, models=True)
    summary = analyze(run, options=AnalyzeOptions(resamples=200, gradcam_images=2)).summary
    assert summary["gradcam"]["status"] == "done", summary["gradcam"]
    grid = run / "analysis" / f"gradcam_{ARCH}_blur.png"
    assert summary["gradcam"]["files"] == [grid.name]
    with Image.open(grid) as image:
        assert image.width > 400 and image.height > 200


def test_gradcam_skips_with_a_note_without_model_weights(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    summary = analyze(run, options=AnalyzeOptions(resamples=200)).summary
    assert summary["gradcam"]["status"] == "skipped"
    assert "model.pt" in summary["gradcam"]["note"]
    assert any("Grad-CAM skipped" in n or "model.pt" in n for n in summary["notes"])


@pytest.mark.parametrize(("arch", "attribute"), [
    ("resnet18", "layer4"), ("shufflenet_v2_x0_5", "conv5"), ("mobilenet_v3_small", "features"),
])
def test_gradcam_target_layer_per_family(arch: str, attribute: str) -> None:
    import torchvision

    from veil.analysis.gradcam import target_layer

    model = torchvision.models.get_model(arch, num_classes=3)
    layer = target_layer(model, arch)
    container = getattr(model, attribute)
    assert layer is container or layer is container[-1]


def test_gradcam_target_layer_falls_back_to_the_last_convolution() -> None:
    import torch.nn as nn

    from veil.analysis.gradcam import target_layer

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.Flatten())
    assert target_layer(model, "mynet") is model[2]


def test_analyze_refuses_a_folder_that_is_no_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["analyze", str(tmp_path)])
    assert result.exit_code != 0
    assert "no study.json" in result.output
    assert "Traceback" not in result.output
    both = CliRunner().invoke(main, ["analyze", str(tmp_path), "--paper-pickles",
                                     str(tmp_path)])
    assert both.exit_code != 0 and "not both" in both.output


def test_conditions_on_different_images_are_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = run / "runs" / ARCH / "seed0" / "train-blur" / "predictions" / "eval-blur.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, N_VAL - 1), path)
    result = CliRunner().invoke(main, ["analyze", str(run), "--no-gradcam"])
    assert result.exit_code != 0
    assert "different images" in result.output


def test_run_reader_sorts_by_key_and_finds_conditions(analysed: Path) -> None:
    run = load_run(analysed)
    assert run.archs == [ARCH] and run.methods == ["blur"]
    assert {str(c) for *_, c in run.found} == {"train-original/eval-original",
                                                "train-blur/eval-blur",
                                                "train-blur/eval-original"}
    predictions = run.predictions(ARCH, 0, next(iter(run.found))[2])
    assert list(predictions.keys) == sorted(predictions.keys)
    assert list(predictions.labels[:7]) == [0, 1, 2, 3, 4, 5, 0]


# -- look-alike pairs (the rule itself) -------------------------------------------------------


def test_lookalike_rule() -> None:
    # 0 <-> 1: a swing (+12 / -14 top-1, AP within 1): 1 is 0's top confusion, not mutual
    # 2 <-> 3: opposite swings but AP moves 5 points: not flagged
    # 4 <-> 5: each other's top confusion: flagged as mutual
    counts = np.zeros((6, 6), dtype=int)
    counts[0, 1], counts[1, 2] = 5, 4
    counts[2, 3], counts[3, 4] = 6, 2
    counts[4, 5], counts[5, 4] = 3, 3
    rows = pd.DataFrame({
        "name": list("abcdef"),
        "top1_drop": [12.0, -14.0, 10.0, -9.0, 0.5, 0.2],
        "ap_drop": [0.5, -0.9, 5.0, 0.1, 0.0, 0.1],
    })
    pairs = lookalike_pairs(rows, counts, swing=5, ap_tolerance=2)
    by = {(r.class_a, r.class_b): r for r in pairs.itertuples()}
    assert by[(0, 1)].flagged and by[(0, 1)].reason == "swing"
    assert not by[(2, 3)].flagged
    assert by[(4, 5)].flagged and by[(4, 5)].reason == "mutual confusion"
    assert list(pairs["flagged"]) == sorted(pairs["flagged"], reverse=True)
    # without AP no swing can be claimed
    no_ap = lookalike_pairs(rows, counts, ap_available=False)
    assert not no_ap.set_index(["class_a", "class_b"]).at[(0, 1), "flagged"]


def test_most_confused_ignores_classes_never_confused() -> None:
    counts = np.array([[0, 2, 2], [0, 0, 0], [1, 0, 0]])
    assert list(most_confused(counts)) == [1, -1, 0]  # ties: the lower index


# -- veil report ------------------------------------------------------------------------------


def test_report_runs_analyze_first_and_is_self_contained(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    result = CliRunner().invoke(main, ["report", str(run), "--examples", "2"])
    assert result.exit_code == 0, result.output
    assert (run / "analysis" / "summary.json").is_file()
    html = (run / "report.html").read_text()
    assert "top-1 dropped 5.00 points (95% CI [5.00, 5.00] over seeds and images" in html
    assert "within noise" in html
    assert html.count("data:image/png;base64,") >= 4  # plots inline
    assert html.count("data:image/jpeg;base64,") >= 4  # 2 examples, original + blur
    assert "Eskimo dog / Siberian husky" in html
    assert "musical_instrument.n.01" in html
    assert 'src="http' not in html and "href=\"http" not in html


def test_report_of_an_analysed_run_reuses_the_analysis(analysed: Path, tmp_path: Path
                                                       ) -> None:
    run = analysed
    summary = run / "analysis" / "summary.json"
    before = summary.stat().st_mtime_ns
    out = tmp_path / "elsewhere.html"
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(out),
                                       "--examples", "0"])
    assert result.exit_code == 0, result.output
    assert summary.stat().st_mtime_ns == before
    assert out.is_file() and "Grad-CAM not requested" in out.read_text()


def test_report_takes_the_faces_when_study_json_cannot_name_them(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    study = json.loads((run / "study.json").read_text())
    study["faces"] = "face store postgresql+psycopg://veil:***@db/faces"
    (run / "study.json").write_text(json.dumps(study))
    runner = CliRunner()
    result = runner.invoke(main, ["report", str(run), "--examples", "1"])
    assert result.exit_code == 0, result.output
    assert "example images skipped" in (run / "report.html").read_text()
    result = runner.invoke(main, ["report", str(run), "--examples", "1", "--faces",
                                  str(tmp_path / "faces.json")])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    assert "example images skipped" not in html
    assert html.count("data:image/jpeg;base64,") == 2


# -- AP on logits, the paper's categories, face shares, face matching ------------------------


THREE_SEEDS = {("original", "original"): (45, 48, 50), ("blur", "blur"): (42, 45, 44),
               ("blur", "original"): (45, 48, 50)}


def test_ap_is_taken_on_logits_when_the_predictions_have_them(tmp_path: Path) -> None:
    from sklearn.metrics import average_precision_score

    from veil.analysis.run import read_scores

    run = make_run(tmp_path, logits=True)
    analyze(run, options=AnalyzeOptions(gradcam=False))
    path = run / "runs" / ARCH / "seed0" / "train-original" / "predictions" / \
        "eval-original.parquet"
    scores, source = read_scores(path, K)
    assert source == "logits"
    labels = np.arange(N_VAL) % K
    by_logits = [average_precision_score(labels == k, scores[:, k]) for k in range(K)]
    assert float(load_run(run).class_ap(ARCH, 0, _baseline())[0]) == \
        pytest.approx(by_logits[0])
    # the softmax ranks the images differently: a different AP, so the choice matters
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    assert average_precision_score(labels == 0, probs[:, 0]) != pytest.approx(by_logits[0])
    markdown = (run / "analysis" / "per_category_blur.md").read_text()
    assert "AP: one-vs-rest average precision on the logits" in markdown
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    assert summary["per_category"]["blur"]["ap_source"] == "logits"


def test_without_logits_the_table_says_ap_is_on_probabilities(analysed: Path) -> None:
    markdown = (analysed / "analysis" / "per_category_blur.md").read_text()
    assert "AP: on the stored probs" in markdown
    assert "not the paper's" in markdown


def _baseline() -> Any:
    from veil.analysis.run import TrainEval

    return TrainEval("original", "original")


def test_the_papers_categories_get_their_own_table_with_sem_ddof_2(tmp_path: Path) -> None:
    run = make_run(tmp_path, seeds=3, cutoffs=THREE_SEEDS)
    analyze(run, options=AnalyzeOptions(gradcam=False))
    markdown = (run / "analysis" / "per_category_blur.md").read_text()
    section = markdown[markdown.index("## The paper's eight categories"):
                       markdown.index("## Look-alike pairs")]
    assert "top-1 original (± SEM, ddof=2)" in section
    # Eskimo dog = class 0: images 0, 6, ..., 54; right when i < cutoff
    images = np.arange(0, N_VAL, K)
    original = [100 * np.mean(images < c) for c in THREE_SEEDS[("original", "original")]]
    blurred = [100 * np.mean(images < c) for c in THREE_SEEDS[("blur", "blur")]]
    from scipy import stats

    cell = (f"{np.mean(original):.3f} ± {stats.sem(original, ddof=2):.3f} | "
            f"{np.mean(blurred):.3f} ± {stats.sem(blurred, ddof=2):.3f} | "
            f"{np.mean(original) - np.mean(blurred):.3f}")
    assert f"| eskimo_dog.n.01 | {cell} |" in section
    assert "siberian_husky.n.01" in section and "tub.n.02" not in section
    assert "## Look-alike pairs (veil's rule)" in markdown
    # ddof=1 everywhere else, and said so
    assert "top-1 original (± SEM, ddof=1)" in markdown


def test_most_and_least_affected_show_face_shares_and_bh(analysed: Path) -> None:
    from scipy import stats

    markdown = (analysed / "analysis" / "per_category_blur.md").read_text()
    most = markdown[markdown.index("## Most affected"):]
    assert "faces train (%) | faces val (%) | p AP (BH) | reading" in most
    # French horn (class 3): 15 of 20 train images and every val image have faces
    assert re.search(r"\| French horn \|.*\| 75\.0 \| 100\.0 \|", most)
    assert "Benjamini-Hochberg-adjusted across all categories" in most
    per = pd.read_csv(analysed / "analysis" / "per_category_blur.csv")
    rows = per[per["arch"] == "all"]
    assert list(rows["ap_p_bh"]) == pytest.approx(
        list(stats.false_discovery_control(rows["ap_p"], method="bh")))


def test_face_matching_is_shown_per_split_or_not_recorded(tmp_path: Path) -> None:
    matching = {"train": {"images": 120, "with_faces": 32, "face_records": 40, "matched": 40},
                "val": {"images": 60, "with_faces": 10, "face_records": 10, "matched": 9}}
    run = make_run(tmp_path / "with", face_matching=matching)
    result = CliRunner().invoke(main, ["analyze", str(run), "--no-gradcam"])
    assert result.exit_code == 0, result.output
    assert "face matching, val: 60 images, 10 with faces, 9 of 10 face records matched" \
        in result.output
    html = build_report_path(run)
    assert "face matching, train: 120 images, 32 with faces, 40 of 40 face records" in html
    old = make_run(tmp_path / "without")
    result = CliRunner().invoke(main, ["analyze", str(old), "--no-gradcam"])
    assert "face matching: not recorded" in result.output
    assert "face matching: not recorded" in build_report_path(old)


def build_report_path(run: Path) -> str:
    from veil.report.study import build_report

    return build_report(run, examples=0).read_text()


def test_the_demo_report_says_it_shows_mechanics_not_a_finding(tmp_path: Path) -> None:
    from veil.report.study import build_report

    run = make_run(tmp_path, seeds=1)
    html = build_report(run, examples=0, demo=True).read_text()
    assert "It shows the mechanics of a study" in html
    assert "not a finding about obfuscation" in html
    assert "One seed:" in html and "no drop below gets" in html
    assert "It shows the mechanics" not in build_report(run, tmp_path / "r.html",
                                                        examples=0).read_text()


def test_overall_readings_are_holm_adjusted_across_archs(tmp_path: Path) -> None:
    from statsmodels.stats.multitest import multipletests

    run = make_run(tmp_path, archs=(ARCH, "alexnet"), seeds=3, cutoffs=THREE_SEEDS)
    analyze(run, options=AnalyzeOptions(gradcam=False))
    frame = _overall(run)
    table = frame[(frame["comparison"] == "obfuscated") & (frame["arch"] != "average")]
    assert list(table["top1_p_holm"]) == pytest.approx(
        list(multipletests(table["top1_p"], method="holm")[1]))
    markdown = (run / "analysis" / "overall.md").read_text()
    assert "Holm-adjusted across the archs of the table" in markdown
    assert "SEM = std with ddof=1" in markdown


def test_category_top1_tests_carry_the_image_part(tmp_path: Path) -> None:
    from scipy import stats

    from veil.analysis.stats import shared_image_variance

    run = make_run(tmp_path, seeds=3, cutoffs=THREE_SEEDS)
    analyze(run, options=AnalyzeOptions(gradcam=False))
    per = pd.read_csv(run / "analysis" / "per_category_blur.csv")
    row = per[(per["arch"] == "all") & (per["class_index"] == 0)].iloc[0]
    images = np.arange(0, N_VAL, K)  # class 0
    d = np.stack([100 * ((images < o).astype(float) - (images < b))
                  for o, b in zip(THREE_SEEDS[("original", "original")],
                                  THREE_SEEDS[("blur", "blur")], strict=True)])
    seed_drops = d.mean(axis=1)
    se = math.sqrt(seed_drops.var(ddof=1) / 3 + max(shared_image_variance(d), 0) / d.shape[1])
    expected = 2 * stats.t.sf(abs(seed_drops.mean()) / se, 2) if se > 0 else 0.0
    assert row["top1_p"] == pytest.approx(expected)
