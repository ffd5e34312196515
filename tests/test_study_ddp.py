"""veil study under torchrun: 2 CPU processes (gloo) train one model with DDP and shard
the evaluation; every val image is predicted once, as a 1-process evaluation would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from study_data import make_dataset

from veil.study.data import CacheSource, decode_images, make_condition, open_study_data
from veil.study.ddp import DistEnv, shard_range
from veil.study.evaluate import predict, predictions_table
from veil.study.profiles import resolve_recipe
from veil.study.train import build_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shards_cover_every_item_once() -> None:
    for n in (0, 1, 7, 15, 100):
        for world in (1, 2, 3, 8):
            items = [i for r in range(world) for i in shard_range(n, r, world)]
            assert items == list(range(n))


@pytest.mark.timeout(300)
def test_torchrun_two_cpu_processes_predict_each_val_image_once(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_train=8, n_val=5)  # 15 val images: 7 + 8
    out = tmp_path / "run"
    overrides = {"epochs": 2, "img_size": 24, "batch_size": 8, "precision": "fp32"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
        "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "veil",
        "study", "--data", str(data), "--faces", str(data / "faces.json"), "--methods", "",
        "--archs", "resnet18", "--epochs", "2", "--img-size", "24", "--batch-size", "8",
        "--precision", "fp32", "--workers", "1", "--no-progress", "--out", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]

    run = out / "runs" / "resnet18" / "seed0" / "train-original"
    config = json.loads((run / "config.json").read_text())
    assert config["environment"]["world_size"] == 2
    timings = json.loads((run / "timings.json").read_text())
    assert [e["images"] for e in timings["epochs"]] == [24, 24]  # 2 ranks x 3 batches of 4

    table = pq.read_table(run / "predictions" / "eval-original.parquet")
    study = open_study_data(data)
    assert table.column("key").to_pylist() == study.val.keys  # each image once, in order
    assert len(set(table.column("key").to_pylist())) == 15

    # The same checkpoint evaluated by one process gives the same predictions.
    recipe = resolve_recipe("quick", **overrides)
    model = build_model("resnet18", 3, recipe.img_size)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    model = model.to(memory_format=torch.channels_last)
    images = decode_images(study.val, list(range(len(study.val))), {},
                           make_condition("original"), recipe.eval_resize)
    source = CacheSource(images, study.val.labels, recipe.img_size, recipe.min_crop_scale)
    single = predict(model, source, DistEnv(), batch_size=5, precision="fp32")
    assert single is not None
    expected = predictions_table(study.val, single)
    assert table.column("pred").to_pylist() == expected.column("pred").to_pylist()
    assert table.column("correct1").to_pylist() == expected.column("correct1").to_pylist()
    assert table.column("correct5").to_pylist() == expected.column("correct5").to_pylist()
    np.testing.assert_allclose(np.stack(table.column("probs").to_numpy(zero_copy_only=False)),
                               single.probs, atol=1e-5)
    summary = json.loads((out / "study.json").read_text())
    [condition] = summary["conditions"]
    assert condition["top1"] == pytest.approx(float(np.mean(
        expected.column("correct1").to_numpy())))
