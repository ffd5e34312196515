"""`veil transfer`: the feature cache, determinism, resumption, backbone surgery, the
comparison statistics, and the transfer table in `veil analyze` / `veil report`.

The study runs here are written directly in the run-folder contract with randomly
initialised backbones (``make_run``); the data sets are tiny fixtures in their official
formats (``test_transfer_formats``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from click.testing import CliRunner
from scipy import stats as sps
from test_transfer_formats import (
    FAST_LINEAR,
    hand_case,
    make_run,
    write_celeba,
    write_cifar_batches,
)

from veil.analysis import AnalyzeOptions, analyze
from veil.analysis.transfer import compare, load_transfer
from veil.cli import main
from veil.errors import VeilError
from veil.report.study import build_report
from veil.transfer import metrics as M
from veil.transfer.backbone import (
    feature_dim,
    final_layer,
    find_backbones,
    replace_head,
    strip_head,
)
from veil.transfer.features import FeatureStats, Preprocess, cached_features
from veil.transfer.finetune import FinetuneOptions
from veil.transfer.results import detection_table
from veil.transfer.run import TransferConfig, run_transfer
from veil.transfer.tasks import open_task


def quiet(**kwargs: object) -> TransferConfig:
    defaults: dict[str, object] = {"linear": FAST_LINEAR, "workers": 1, "threads": 1,
                                   "log": lambda m: None}
    return TransferConfig(**{**defaults, **kwargs})  # type: ignore[arg-type]


def retrain(model_file: Path, seed: int) -> None:
    """Replace a backbone's weights, as a re-run study would."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=3)
    torch.save(model.state_dict(), model_file)


# --------------------------------------------------------------------------- feature cache


def test_feature_cache_is_computed_once_reused_and_invalidated(tmp_path: Path) -> None:
    data = write_cifar_batches(tmp_path / "data")
    run = make_run(tmp_path / "run")
    backbone = find_backbones(run)[0][0]
    task = open_task("cifar10", data)
    pre = Preprocess.for_backbone(backbone)
    calls = {"model": 0, "pixels": 0}

    def features(split_task: object = task) -> np.ndarray:
        def model() -> torch.nn.Module:
            calls["model"] += 1
            return strip_head(backbone.load()).eval()

        def pixels() -> np.ndarray:
            calls["pixels"] += 1
            from veil.transfer.features import load_pixels

            return load_pixels(tmp_path / "cache", "cifar10", split_task.test, pre.resize)

        return cached_features(tmp_path / "cache", "cifar10", split_task.test, backbone, pre,
                               pixels, model=model, device=torch.device("cpu"), stats=stats)

    stats = FeatureStats()
    first = features()
    assert calls == {"model": 1, "pixels": 1} and first.shape == (12, 1024)
    again = features()
    assert calls == {"model": 1, "pixels": 1}  # neither the network nor the pixels again
    assert np.array_equal(first, again) and (stats.computed, stats.reused) == (1, 1)

    retrain(backbone.path, seed=99)  # the backbone changes: its entry is stale
    changed = features()
    assert calls["model"] == 2 and not np.array_equal(changed, first)
    assert stats.removed == 1
    assert len(list((tmp_path / "cache" / "features").glob("cifar10-test-*"))) == 1

    batch = data / "test_batch"  # the data changes: one pixel of one image
    with open(batch, "rb") as f:
        import pickle

        content = pickle.load(f)
    content[b"data"][3, 0] ^= 0xFF
    with open(batch, "wb") as f:
        pickle.dump(content, f)
    features(open_task("cifar10", data))
    assert calls["model"] == 3


def test_a_second_run_on_the_same_cache_extracts_nothing(tmp_path: Path) -> None:
    data = write_cifar_batches(tmp_path / "data")
    run = make_run(tmp_path / "run")
    first = run_transfer(quiet(run=run, task="cifar10", data=data, out=tmp_path / "a",
                               cache_dir=tmp_path / "cache"))
    assert (first.features.computed, first.features.reused) == (4, 0)  # 2 backbones x 2 splits
    second = run_transfer(quiet(run=run, task="cifar10", data=data, out=tmp_path / "b",
                                cache_dir=tmp_path / "cache"))
    assert (second.features.computed, second.features.reused) == (0, 4)
    assert [r.metrics for r in second.results] == [r.metrics for r in first.results]


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_the_same_seed_twice_gives_identical_numbers(tmp_path: Path, mode: str) -> None:
    data = write_celeba(tmp_path / "data")
    run = make_run(tmp_path / "run")
    tune = FinetuneOptions(epochs=2, batch_size=4)
    outs = []
    for name in ("a", "b"):
        run_transfer(quiet(run=run, task="celeba", data=data, mode=mode, out=tmp_path / name,
                           finetune=tune))
        outs.append(tmp_path / name)
    rows = [json.loads((o / "results.json").read_text()) for o in outs]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows[0]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in rows[1]]
    for cond in ("original", "blur"):
        tables = [pq.read_table(o / "models" / "mobilenet_v3_small" / "seed0" / f"train-{cond}"
                                / "predictions.parquet") for o in outs]
        assert tables[0].equals(tables[1])  # every probability, bit for bit
    if mode == "finetune":
        histories = [json.loads((o / "models" / "mobilenet_v3_small" / "seed0" / "train-blur"
                                 / "result.json").read_text())["details"]["history"]
                     for o in outs]
        assert [h["train_loss"] for h in histories[0]] == [h["train_loss"] for h in histories[1]]
        assert len(histories[0]) == 2


def test_rerun_reuses_finished_backbones_and_redoes_a_retrained_one(tmp_path: Path) -> None:
    data = write_cifar_batches(tmp_path / "data")
    run = make_run(tmp_path / "run")
    config = quiet(run=run, task="cifar10", data=data, out=tmp_path / "out")
    first = run_transfer(config)
    assert not any(r.reused for r in first.results)
    assert all(r.reused for r in run_transfer(config).results)
    retrain(run / "runs" / "mobilenet_v3_small" / "seed0" / "train-blur" / "model.pt", 7)
    third = run_transfer(config)
    assert [(r.condition, r.reused) for r in third.results] == [("original", True),
                                                                 ("blur", False)]
    manifest = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert manifest["status"] == "done" and manifest["task"]["name"] == "cifar10"
    assert all(b["done"] for b in manifest["backbones"])


# --------------------------------------------------------------------------- backbones


def test_backbones_are_selected_by_seed_arch_and_condition(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", seeds=(0, 1, 2), methods=("blur", "overlay"))
    every, notes = find_backbones(run)
    assert len(every) == 9 and not notes
    assert [b.label for b in every[:3]] == ["mobilenet_v3_small/seed0/train-original",
                                            "mobilenet_v3_small/seed0/train-blur",
                                            "mobilenet_v3_small/seed0/train-overlay"]
    assert {b.seed for b in find_backbones(run, seeds=2)[0]} == {0, 1}
    assert {b.seed for b in find_backbones(run, seeds=[2])[0]} == {2}
    only = find_backbones(run, conditions=["original", "overlay"])[0]
    assert {b.condition for b in only} == {"original", "overlay"}
    assert every[0].img_size == 32 and every[0].eval_resize == 36
    (run / "runs" / "mobilenet_v3_small" / "seed1" / "train-overlay" / "model.pt").unlink()
    assert "mobilenet_v3_small/seed1/train-overlay: no model.pt yet" in find_backbones(run)[1]
    with pytest.raises(VeilError, match="no seed 5"):
        find_backbones(run, seeds=[5])
    with pytest.raises(VeilError, match="no backbones of resnet50"):
        find_backbones(run, archs=["resnet50"])
    with pytest.raises(VeilError, match=r"no train condition mosaic \(it has original, "):
        find_backbones(run, conditions=["overlay", "mosaic"])
    with pytest.raises(VeilError, match="not a study run folder"):
        find_backbones(tmp_path)


@pytest.mark.parametrize("arch", ["resnet18", "squeezenet1_0", "mobilenet_v2",
                                  "shufflenet_v2_x1_0"])
def test_head_surgery_keeps_the_trunk(arch: str) -> None:
    """Stripped: the output is exactly what the old last layer read (SqueezeNet's 1x1
    convolution reads a map: its stripped output is that map pooled). Replaced: a new
    layer of the asked width, initialised by the generator alone."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=7).eval()
    seen: list[torch.Tensor] = []
    final_layer(model)[2].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
    stripped = strip_head(model)
    with torch.no_grad():
        features = stripped(x)
    read = seen[0] if seen[0].ndim == 2 else seen[0].relu().mean(dim=(2, 3))
    assert torch.allclose(features.reshape(2, -1), read, rtol=0, atol=1e-6)
    assert feature_dim(stripped, 64) == features.reshape(2, -1).shape[1]
    heads = []
    for _ in range(2):
        fresh = torchvision.models.get_model(arch, weights=None, num_classes=7).eval()
        replace_head(fresh, 4, torch.Generator().manual_seed(3))
        with torch.no_grad():
            assert fresh(x).shape == (2, 4)
        heads.append(final_layer(fresh)[2].weight)
    assert torch.equal(heads[0], heads[1])


# --------------------------------------------------------------------------- statistics

N_TEST = 40
#: image i is right when i < cutoff: original 75 %, 80 %; blur 65 %, 70 %
CUTOFFS = {("original", 0): 30, ("original", 1): 32, ("blur", 0): 26, ("blur", 1): 28}


def write_transfer_output(root: Path) -> Path:
    """A `veil transfer` folder with known per-image correctness, keys stored unsorted."""
    manifest = {"task": {"name": "cifar10", "kind": "multiclass", "primary_metric": "top1",
                         "classes": ["a", "b"]},
                "mode": "linear", "metrics": ["top1"], "status": "done"}
    root.mkdir(parents=True)
    (root / "transfer.json").write_text(json.dumps(manifest))
    rows = []
    for (cond, seed), cutoff in CUTOFFS.items():
        correct = (np.arange(N_TEST) < cutoff).astype(np.float32)
        order = np.random.default_rng(seed).permutation(N_TEST)
        folder = root / "models" / "resnet18" / f"seed{seed}" / f"train-{cond}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"key": [f"test/{i:03d}.png" for i in order],
                                 "correct": correct[order]}), folder / "predictions.parquet")
        rows.append({"task": "cifar10", "mode": "linear", "arch": "resnet18", "seed": seed,
                     "condition": cond, "top1": cutoff / N_TEST, "n_test": N_TEST})
    (root / "results.json").write_text(json.dumps(rows))
    return root


def test_comparison_by_hand(tmp_path: Path) -> None:
    """77.5 ± 2.5 vs 67.5 ± 2.5: a drop of 10 points in each seed (seed part 0). The image
    part: the two seeds' per-image drops (1 on images 26-29 and 28-31) have covariance
    c over the 40 images, SE = sqrt(c / 40), and two seeds give t(1): the interval
    10 ± 12.706 SE reaches below 0, so the drop is within noise."""
    rows, notes = compare(load_transfer(write_transfer_output(tmp_path / "t")), resamples=4000)
    assert not notes and len(rows) == 1
    row = rows[0]
    assert (row.arch, row.method, row.seeds, row.paired) == ("resnet18", "blur", [0, 1], True)
    assert row.original == pytest.approx(77.5) and row.original_sem == pytest.approx(2.5)
    assert row.obfuscated == pytest.approx(67.5) and row.obfuscated_sem == pytest.approx(2.5)
    assert row.drop == pytest.approx(10.0)
    d = np.zeros((2, N_TEST))
    for seed in (0, 1):
        d[seed] = ((np.arange(N_TEST) < CUTOFFS[("original", seed)]).astype(float)
                   - (np.arange(N_TEST) < CUTOFFS[("blur", seed)]))
    se = 100 * math.sqrt(np.cov(d[0], d[1])[0, 1] / N_TEST)
    half = sps.t.ppf(0.975, 1) * se
    assert (row.ci_low, row.ci_high) == pytest.approx((10.0 - half, 10.0 + half))
    assert row.ci_low < 0 and row.verdict == "within noise"
    assert row.pvalue == pytest.approx(2 * sps.t.sf(10.0 / se, 1))


def test_detection_comparison_recomputes_map_per_resample(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    manifest = {"task": {"name": "voc", "kind": "detection", "primary_metric": "map50",
                         "classes": ["a", "b", "c"], "ap_method": "area"},
                "mode": "finetune", "metrics": ["map50"], "status": "done"}
    root.mkdir()
    (root / "transfer.json").write_text(json.dumps(manifest))
    a, b = hand_case()
    worse = M.ImageDetections(a.boxes[2:], a.scores[2:], a.labels[2:], a.gt_boxes, a.gt_labels,
                              a.gt_difficult)  # misses g1: only the false positive d5 is left
    rows = []
    for cond, images in (("original", [a, b]), ("blur", [worse, b])):
        folder = root / "models" / "resnet18" / "seed0" / f"train-{cond}"
        folder.mkdir(parents=True)
        pq.write_table(detection_table(["A.jpg", "B.jpg"], images),
                       folder / "predictions.parquet")
        rows.append({"arch": "resnet18", "seed": 0, "condition": cond, "n_test": 2,
                     "map50": M.mean_ap(M.match_detections(images, 3), "area")})
    (root / "results.json").write_text(json.dumps(rows))
    (row,), _ = compare(load_transfer(root), resamples=200)
    expected = 100 * (rows[0]["map50"] - rows[1]["map50"])
    assert expected > 0 and row.drop == pytest.approx(expected)
    assert row.paired
    # one seed: no spread to report and no verdict
    assert math.isnan(row.original_sem) and math.isnan(row.ci_low)
    assert row.verdict == "one seed: training randomness unmeasured"


# --------------------------------------------------------------------------- analyze, report


def write_study_predictions(run: Path) -> None:
    """Minimal predictions of the study's own conditions, so `veil analyze` runs."""
    labels = np.arange(12) % 3
    for train, evaluated, cutoff in (("original", "original", 10), ("blur", "blur", 9),
                                     ("blur", "original", 10)):
        pred = np.where(np.arange(12) < cutoff, labels, (labels + 1) % 3)
        top = np.stack([pred, (pred + 1) % 3, (pred + 2) % 3], axis=1)
        path = (run / "runs" / "mobilenet_v3_small" / "seed0" / f"train-{train}"
                / "predictions" / f"eval-{evaluated}.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "key": [f"val/{i:03d}.JPEG" for i in range(12)], "label": labels.astype(np.int64),
            "pred": pred.astype(np.int64), "top5": [list(map(int, t)) for t in top],
            "correct1": pred == labels, "correct5": np.ones(12, bool)}), path)


def test_analyze_and_report_show_the_transfer_table(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    write_study_predictions(run)
    write_transfer_output(run / "transfer" / "cifar10-linear")
    result = analyze(run, options=AnalyzeOptions(gradcam=False, resamples=500))
    section = result.summary["transfer"]
    assert [(r["task"], r["arch"], r["method"]) for r in section["rows"]] == [
        ("cifar10", "resnet18", "blur")]
    assert section["rows"][0]["drop"] == pytest.approx(10.0)
    assert {"transfer.md", "transfer.csv", "transfer.png"} <= set(result.files)
    assert "| resnet18 | blur | top-1 accuracy | 2 | 77.50 ± 2.50 | 67.50 ± 2.50 | 10.00 |" in (
        result.out_dir / "transfer.md").read_text()
    html = build_report(run).read_text()
    assert "Transfer: do features learned on obfuscated images transfer as well?" in html
    assert "77.50 ± 2.50" in html and "data:image/png;base64" in html


def test_analyze_without_transfer_outputs_has_no_transfer_section(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    write_study_predictions(run)
    result = analyze(run, options=AnalyzeOptions(gradcam=False, resamples=200))
    assert result.summary["transfer"] is None
    assert "Transfer: do features" not in build_report(run).read_text()


# --------------------------------------------------------------------------- CLI


def test_cli_runs_a_task_into_the_run_folder_and_prints_the_comparison(tmp_path: Path) -> None:
    data = write_cifar_batches(tmp_path / "data")
    run = make_run(tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(main, ["transfer", "--run", str(run), "--task", "CIFAR-10", "--data",
                                  str(data), "--l2", "1e-2,1e-4", "--max-iter", "40",
                                  "--threads", "1", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "transfer cifar10 (linear) done" in result.output
    assert "original" in result.output and "drop" in result.output
    out = run / "transfer" / "cifar10-linear"
    assert (out / "results.csv").read_text().startswith(
        "task,mode,arch,seed,condition,top1,n_test,seconds\n")
    bad = runner.invoke(main, ["transfer", "--run", str(run), "--task", "imagenet", "--data",
                               str(data)])
    assert bad.exit_code != 0 and "unknown task 'imagenet'" in bad.output
    empty = runner.invoke(main, ["transfer", "--run", str(tmp_path), "--task", "cifar10",
                                 "--data", str(data)])
    assert empty.exit_code != 0 and "not a study run folder" in empty.output
