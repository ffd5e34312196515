"""The run-folder contract (:mod:`veil.study.layout`, :mod:`veil.transfer.results`): what the
study and transfer write is what analysis reads, and reading needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from veil.analysis.run import TrainEval, read_predictions, read_scores
from veil.study import layout
from veil.study.data import Split
from veil.study.evaluate import Predictions, predictions_table
from veil.study.run import condition_plan


def test_the_study_writes_predictions_in_the_contracts_schema(tmp_path: Path) -> None:
    keys = ["val/a.jpg", "val/b.jpg", "val/c.jpg"]
    split = Split("val", keys, [Path(k) for k in keys], np.array([0, 2, 1]))
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [2.0, 0.5, 0.0]], np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    table = predictions_table(split, Predictions(np.arange(3), probs, 0.0, logits))
    assert table.schema.equals(layout.predictions_schema(3))
    without = predictions_table(split, Predictions(np.arange(3), probs))
    assert without.schema.equals(layout.predictions_schema(3, logits=False))

    path = tmp_path / layout.predictions_path("resnet18", 0, "blur", "original")
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    read = read_predictions(path)
    assert read.keys.tolist() == split.keys and read.correct1.tolist() == [True, True, False]
    scores, column = read_scores(path, 3)  # type: ignore[misc]
    assert column == "logits" and np.array_equal(scores, logits)


def test_the_plan_and_the_reader_agree_on_every_path(tmp_path: Path) -> None:
    plan = condition_plan(["alexnet"], [0, 3], ["blur", "mask"])
    for item in plan:
        (tmp_path / item.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / item.path).touch()
    found = {(a, s, t, e) for a, s, t, e, _ in layout.find_predictions(tmp_path)}
    assert found == {(p.arch, p.seed, p.train, p.eval) for p in plan}
    assert ("alexnet", 3, "blur", "original") in found and len(found) == 2 * 5
    files = layout.RunFiles.of(tmp_path, "alexnet", 3, "blur")
    (item,) = [p for p in plan if (p.seed, p.train, p.eval) == (3, "blur", "original")]
    assert files.predictions("original") == tmp_path / item.path


def test_reading_a_study_and_a_transfer_imports_no_torch(tmp_path: Path) -> None:
    """Analysis reads a study's and a transfer's results with torch made unimportable."""
    script = textwrap.dedent(f"""
        import json, sys

        class NoTorch:  # any `import torch` now raises ImportError
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError(f"torch is blocked ({{name}})")

        sys.meta_path.insert(0, NoTorch())
        from pathlib import Path
        import numpy as np, pyarrow as pa, pyarrow.parquet as pq
        import veil.analysis.run
        from veil.analysis.run import TrainEval, load_run
        from veil.analysis.transfer import compare
        from veil.study import layout
        from veil.transfer import metrics as M
        from veil.transfer import results

        root = Path({str(tmp_path)!r})
        run = root / "run"
        run.mkdir()
        (run / layout.STUDY_FILE).write_text(json.dumps(
            {{"classes": [{{"index": 0}}, {{"index": 1}}], "archs": ["resnet18"],
              "methods": ["blur"], "seeds": [0]}}))
        table = pa.table({{
            "key": ["val/a", "val/b"], "label": [0, 1], "pred": [0, 0],
            "top5": [[0, 1], [0, 1]], "probs": [[0.9, 0.1], [0.6, 0.4]],
            "correct1": [True, False], "correct5": [True, True],
            "logits": [[2.0, 0.0], [0.4, 0.0]]}}, schema=layout.predictions_schema(2))
        path = run / layout.predictions_path("resnet18", 0, "original", "original")
        path.parent.mkdir(parents=True)
        pq.write_table(table, path)
        study = load_run(run)
        cond = TrainEval("original", "original")
        assert study.predictions("resnet18", 0, cond).correct1.tolist() == [True, False]
        assert study.class_ap("resnet18", 0, cond) is not None
        assert study.ap_source("resnet18", 0, cond) == "logits"

        out = run / results.RUN_TRANSFER_DIR / "voc-finetune"
        manifest = {{"task": {{"name": "voc", "kind": "detection", "primary_metric": "map50",
                              "classes": ["a"], "ap_method": "area"}},
                    "mode": "finetune", "metrics": ["map50"], "status": "done"}}
        out.mkdir(parents=True)
        (out / results.MANIFEST).write_text(json.dumps(manifest))
        box = np.array([[0, 0, 10, 10]], np.float32)
        hit = M.ImageDetections(box, np.array([0.9], np.float32), np.array([0]), box,
                                np.array([0]), np.array([False]))
        miss = M.ImageDetections(box + 50, np.array([0.9], np.float32), np.array([0]), box,
                                 np.array([0]), np.array([False]))
        rows = []
        for cond_name, image in (("original", hit), ("blur", miss)):
            folder = results.backbone_folder(out, "resnet18", 0, cond_name)
            folder.mkdir(parents=True)
            pq.write_table(results.detection_table(["A.jpg"], [image]),
                           folder / results.PREDICTIONS)
            rows.append({{"arch": "resnet18", "seed": 0, "condition": cond_name,
                         "n_test": 1, "map50": 1.0 if image is hit else 0.0}})
        (out / results.RESULTS).write_text(json.dumps(rows))
        assert results.find_transfer_dirs(run) == [out]
        (row,), _ = compare(results.load_transfer(out), resamples=20)
        assert row.drop == 100.0, row
        assert not [name for name in sys.modules if name.split(".")[0] == "torch"]
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_one_name_one_meaning() -> None:
    """analysis's (train, eval) pair is no obfuscation condition of the data."""
    import veil.analysis
    import veil.study.data

    assert veil.analysis.TrainEval is TrainEval
    assert not hasattr(veil.analysis, "Condition")
    assert str(TrainEval("blur", "original")) == "train-blur/eval-original"
    assert veil.study.data.Condition("blur").method == "blur"
    assert json.dumps(veil.study.data.make_condition("blur").describe())
