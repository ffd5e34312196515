"""veil study: data path, recipes, the run folder contract, resumption after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from study_data import CLASSES, make_dataset
from torchvision.transforms import v2 as T

from veil.boxes import Box
from veil.cli import main
from veil.errors import VeilError
from veil.faces import load_faces
from veil.obfuscation import affected_region
from veil.study.data import (
    CacheSource,
    center_crop,
    crop_params,
    decode_images,
    face_boxes,
    load_condition_image,
    make_condition,
    open_study_data,
    random_resized_crop_flip,
    union_area,
)
from veil.study.profiles import PAPER, resolve_recipe
from veil.study.run import StudyConfig, condition_plan, run_study, seeds_from
from veil.study.train import build_model, check_arch, list_archs

PAPER_ARCHS = (
    "alexnet", "squeezenet1_0", "shufflenet_v2_x1_0", "vgg11", "vgg13", "vgg16", "vgg19",
    "mobilenet_v2", "densenet121", "densenet201", "resnet18", "resnet34", "resnet50",
    "resnet101", "resnet152",
)
TINY = {"epochs": 2, "img_size": 24, "batch_size": 8, "lr": 0.4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny blur + overlay study, shared by the tests of the run folder."""
    out = tmp_path_factory.mktemp("run") / "study"
    summary = run_study(StudyConfig(
        data=dataset, faces=dataset / "faces.json", out=out, methods=["blur", "overlay"],
        archs=["resnet18"], seeds=[0], overrides=TINY, workers=1, threads=1, log=lambda m: None,
    ))  # 3 trainings, 2 at a time on 2 cores
    assert summary.done
    return out


# --------------------------------------------------------------------------- data path


def test_obfuscated_inputs_differ_from_originals_only_inside_face_regions(dataset: Path) -> None:
    data = open_study_data(dataset)
    boxes = face_boxes(load_faces(dataset / "faces.json"))
    original, blur = make_condition("original"), make_condition("blur")
    with_faces = [i for i, k in enumerate(data.train.keys) if boxes[k]][:3]
    assert with_faces
    for i in with_faces:
        key, path = data.train.keys[i], data.train.paths[i]
        a = np.asarray(load_condition_image(path, key, boxes, original), dtype=np.int16)
        b = np.asarray(load_condition_image(path, key, boxes, blur), dtype=np.int16)
        inside = np.zeros(a.shape[:2], bool)
        for x0, y0, x1, y1 in affected_region((a.shape[1], a.shape[0]), boxes[key], "blur"):
            inside[y0:y1, x0:x1] = True
        changed = (a != b).any(axis=2)
        assert changed.any(), "blur changed nothing in a face region"
        assert not changed[~inside].any()
    # The cache (downscaled after obfuscating) differs only near the scaled regions.
    size = 20
    a = decode_images(data.train, with_faces, boxes, original, size)
    b = decode_images(data.train, with_faces, boxes, blur, size)
    for row, i in enumerate(with_faces):
        key = data.train.keys[i]
        width, height = Image.open(data.train.paths[i]).size
        scale = size / min(width, height)
        left = round((width * scale - size) / 2)
        top = round((height * scale - size) / 2)
        near = np.zeros((size, size), bool)
        for x0, y0, x1, y1 in affected_region((width, height), boxes[key], "blur"):
            near[max(0, int(y0 * scale) - top - 2):int(y1 * scale) - top + 3,
                 max(0, int(x0 * scale) - left - 2):int(x1 * scale) - left + 3] = True
        changed = (a[row] != b[row]).any(axis=2)
        assert changed.any() and not changed[~near].any()
    faceless = [i for i, k in enumerate(data.train.keys) if not boxes[k]][:2]
    assert np.array_equal(decode_images(data.train, faceless, boxes, original, size),
                          decode_images(data.train, faceless, boxes, blur, size))


def test_cache_matches_torchvision_resize_and_center_crop(dataset: Path) -> None:
    data = open_study_data(dataset)
    cached = decode_images(data.val, [0, 1], {}, make_condition("original"), 30)
    for row, path in enumerate(data.val.paths[:2]):
        image = Image.open(path).convert("RGB")
        expected = T.CenterCrop(30)(T.Resize(30)(image))
        assert np.array_equal(cached[row], np.asarray(expected))
    # Evaluation on the cache: center crop of the cached square, as CenterCrop does it.
    batch = torch.from_numpy(cached).permute(0, 3, 1, 2)
    assert torch.equal(center_crop(batch, 24), T.CenterCrop(24)(batch))


def test_batched_random_resized_crop_follows_torchvision_bounds() -> None:
    generator = torch.Generator().manual_seed(0)
    top, left, h, w = crop_params(4000, 60, 80, (0.2, 1.0), (3 / 4, 4 / 3), generator)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 60).all() and (left + w <= 80).all()
    area = h * w / (60 * 80)
    assert area.min() >= 0.19 and area.max() <= 1.0
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.4
    assert 0.5 < float(area.mean()) < 0.7  # uniform in [0.2, 1] before rejections
    # Nothing fits a ratio range far from the image's: every crop falls back to the center.
    top, left, h, w = crop_params(10, 20, 100, (0.9, 1.0), (3.0, 3.0), generator)
    assert torch.equal(h, torch.full((10,), 20.0)) and torch.equal(w, torch.full((10,), 60.0))
    assert torch.equal(left, torch.full((10,), 20.0))


def test_whole_image_crop_is_the_image_or_its_mirror() -> None:
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(1)
    out = random_resized_crop_flip(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                   generator=generator)
    same = ((out - x.float()).abs() < 1e-3).flatten(1).all(1)  # exact but for float error
    mirrored = ((out - x.flip(-1).float()).abs() < 1e-3).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54  # flips about half


def test_union_area_matches_a_raster() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        boxes = []
        for _ in range(rng.integers(1, 5)):
            x0, y0 = rng.integers(-5, 30, 2)
            boxes.append(Box(float(x0), float(y0), float(x0 + rng.integers(1, 15)),
                             float(y0 + rng.integers(1, 15))))
        raster = np.zeros((32, 40), bool)
        for b in boxes:
            raster[max(0, int(b.y0)):max(0, int(b.y1)), max(0, int(b.x0)):max(0, int(b.x1))] = 1
        assert union_area(boxes, 40, 32) == raster.sum()


def test_cache_source_yields_channels_last_batches(dataset: Path) -> None:
    data = open_study_data(dataset)
    images = decode_images(data.train, list(range(6)), {}, make_condition("original"), 28)
    source = CacheSource(images, data.train.labels[:6], 24, 0.35)
    index, pixels, labels = next(source.batches([[4, 1, 2]], train=True, seed=0))
    assert index.tolist() == [4, 1, 2] and labels.tolist() == data.train.labels[[4, 1, 2]].tolist()
    x = source.to_model_input(pixels, train=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 3, 24, 24) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert source.to_model_input(pixels, train=False, generator=None).shape == (3, 3, 24, 24)


# --------------------------------------------------------------------------- recipes, models


def test_paper_profile_is_the_papers_recipe() -> None:
    paper = resolve_recipe("paper")
    assert paper == PAPER
    assert (paper.epochs, paper.batch_size, paper.lr, paper.effective_lr) == (90, 256, 0.1, 0.1)
    assert (paper.momentum, paper.weight_decay, paper.schedule) == (0.9, 1e-4, "step")
    assert (paper.step_epochs, paper.gamma) == (30, 0.1)
    assert (paper.img_size, paper.eval_resize, paper.min_crop_scale) == (224, 256, 0.08)
    assert paper.loader == "stream" and paper.precision == "fp32"
    assert set(paper.archs) == set(PAPER_ARCHS)
    assert resolve_recipe("paper", batch_size=512).effective_lr == pytest.approx(0.2)


def test_img_size_override_keeps_the_eval_ratio() -> None:
    recipe = resolve_recipe("paper", img_size=112)
    assert recipe.eval_resize == 128
    with pytest.raises(VeilError, match="unknown profile"):
        resolve_recipe("fast")
    with pytest.raises(VeilError, match="eval resize"):
        resolve_recipe("quick", img_size=64, eval_resize=32)


def test_seeds_accept_a_count_or_a_list() -> None:
    assert seeds_from("3") == [0, 1, 2]
    assert seeds_from("4,1") == [1, 4]
    with pytest.raises(VeilError):
        seeds_from("two")


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_every_paper_arch_trains_a_step_at_the_quick_size(arch: str) -> None:
    size = resolve_recipe("quick").img_size
    torch.manual_seed(0)
    model = build_model(arch, 10, size)
    x = torch.randn(2, 3, size, size)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss)


def test_unknown_arch_and_too_small_inputs_are_refused_clearly() -> None:
    with pytest.raises(VeilError, match="resnet18") as info:
        check_arch("resnet-18", 64)
    assert "unknown architecture" in str(info.value)
    assert "resnet50" in list_archs()
    with pytest.raises(VeilError, match="alexnet needs inputs of at least 63 px"):
        check_arch("alexnet", 32)


# --------------------------------------------------------------------------- run folder


def test_run_folder_follows_the_contract(finished: Path, dataset: Path) -> None:
    study = json.loads((finished / "study.json").read_text())
    for key in ("veil_version", "created", "data", "faces", "methods", "archs", "seeds",
                "profile", "hyper", "classes", "conditions", "status"):
        assert key in study
    assert study["status"] == "done" and study["methods"] == ["blur", "overlay"]
    assert study["classes"][0] == {"index": 0, "wnid": "n001", "name": "n001"}
    assert study["hyper"]["epochs"] == 2 and study["seeds"] == [0]
    plan = {(c["train"], c["eval"]) for c in study["conditions"]}
    assert plan == {("original", "original"), ("blur", "blur"), ("blur", "original"),
                    ("overlay", "overlay"), ("overlay", "original")}
    assert all(c["status"] == "done" and 0 <= c["top1"] <= 1 for c in study["conditions"])
    assert not (finished / "cache").exists()  # removed once the study is done

    faces = pq.read_table(finished / "faces.parquet").to_pylist()
    assert len(faces) == 3 * (8 + 5)
    row = next(r for r in faces if r["key"] == "train/n001/n001_0.png")
    assert row == {"key": "train/n001/n001_0.png", "split": "train", "label": 0, "n_faces": 1,
                   "face_area": pytest.approx(16 * 18 / (40 * 52)), "width": 40, "height": 52}
    assert sum(r["n_faces"] for r in faces) == 3 * (3 + 2)

    val_keys = sorted(k for k in (r["key"] for r in faces) if k.startswith("val/"))
    for item in study["conditions"]:
        table = pq.read_table(finished / item["predictions"])
        assert table.column_names == ["key", "label", "pred", "top5", "probs", "correct1",
                                      "correct5", "logits"]
        assert table.schema.field("probs").type == pa.list_(pa.float32(), 3)
        assert table.schema.field("logits").type == pa.list_(pa.float32())
        logits = np.array(table.column("logits").to_pylist(), dtype=np.float32)
        assert logits.shape == (len(val_keys), 3)  # one per class, in class-index order
        softmax = np.exp(logits - logits.max(1, keepdims=True))
        softmax /= softmax.sum(1, keepdims=True)
        np.testing.assert_allclose(softmax, np.array(table.column("probs").to_pylist()),
                                   atol=1e-5)
        assert (logits.argmax(1) == table.column("pred").to_numpy()).all()
        assert table.schema.field("top5").type == pa.list_(pa.int32())
        rows = table.to_pylist()
        assert [r["key"] for r in rows] == val_keys  # each val image once, in key order
        for r in rows:
            assert r["pred"] == r["top5"][0] and r["correct1"] == (r["pred"] == r["label"])
            assert abs(sum(r["probs"]) - 1) < 1e-4
            assert r["label"] == CLASSES.index(r["key"].split("/")[1])

    run = finished / "runs" / "resnet18" / "seed0" / "train-blur"
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["train_condition"] == "blur"
    assert config["dataset"]["train"] == 24 and config["dataset"]["classes"] == 3
    timings = json.loads((run / "timings.json").read_text())
    assert len(timings["epochs"]) == 2 and timings["total_seconds"] > 0
    assert set(timings["evaluations"]) == {"blur", "original"}
    history = (run / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,lr,train_loss,train_top1,val_top1" and len(history) == 3
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng"} <= set(
        checkpoint)
    assert set(torch.load(run / "model.pt", weights_only=True)) == set(checkpoint["model"])


def test_rerun_of_a_finished_study_does_no_work_and_refuses_other_settings(
        finished: Path, dataset: Path) -> None:
    before = (finished / "runs/resnet18/seed0/train-blur/model.pt").stat().st_mtime_ns
    summary = run_study(StudyConfig(
        data=dataset, faces=dataset / "faces.json", out=finished, methods=["blur"],
        archs=["resnet18"], seeds=[0], overrides=TINY, workers=1, log=lambda m: None))
    assert summary.done and summary.seconds < 30
    assert (finished / "runs/resnet18/seed0/train-blur/model.pt").stat().st_mtime_ns == before
    assert json.loads((finished / "study.json").read_text())["methods"] == ["blur", "overlay"]
    with pytest.raises(VeilError, match="other settings"):
        run_study(StudyConfig(data=dataset, faces=dataset / "faces.json", out=finished,
                              methods=["blur"], overrides={**TINY, "epochs": 3},
                              log=lambda m: None))


def test_condition_plan_shares_train_original() -> None:
    plan = condition_plan(["a"], [0, 1], ["blur", "overlay"])
    assert len(plan) == 2 * 5
    assert sum(p.train == "original" for p in plan) == 2


def test_clear_errors_for_unusable_inputs(tmp_path: Path, dataset: Path) -> None:
    flat = tmp_path / "flat"
    (flat / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(flat / "train" / "a" / "x.png")
    with pytest.raises(VeilError, match="needs a train/ and a val/ split"):
        open_study_data(flat)
    unlabelled = tmp_path / "unlabelled"
    for split in ("train", "val"):
        (unlabelled / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(unlabelled / split / "x.png")
    with pytest.raises(VeilError, match="no label"):
        open_study_data(unlabelled)
    broken = make_dataset(tmp_path / "broken", n_train=1, n_val=1)
    (broken / "val" / "n002" / "n002_0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = open_study_data(broken)
    with pytest.raises(VeilError, match=r"val/n002/n002_0\.png: .*remove or replace it"):
        decode_images(data.val, [0, 1, 2], {}, make_condition("original"), 16)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"url": "elsewhere/x.jpg", "bboxes": []}]))
    with pytest.raises(VeilError, match="knows none of the dataset's images"):
        run_study(StudyConfig(data=dataset, faces=other, out=tmp_path / "o", methods=["blur"],
                              overrides=TINY, log=lambda m: None))
    with pytest.raises(VeilError, match="unknown architecture"):
        run_study(StudyConfig(data=dataset, faces=dataset / "faces.json", out=tmp_path / "o",
                              archs=["resnet-18"], overrides=TINY, log=lambda m: None))


def test_stream_loader_runs_the_papers_data_path(dataset: Path, tmp_path: Path) -> None:
    summary = run_study(StudyConfig(
        data=dataset, faces=dataset / "faces.json", out=tmp_path / "s", methods=["blur"],
        profile="paper", archs=["resnet18"], seeds=[0],  # paper's default: seeds 1-3
        overrides={"epochs": 1, "img_size": 24, "batch_size": 8, "precision": "bf16"},
        workers=1, threads=1, parallel=1, log=lambda m: None))
    assert summary.done and len(summary.conditions) == 3
    study = json.loads((tmp_path / "s" / "study.json").read_text())
    assert study["hyper"]["loader"] == "stream" and study["hyper"]["eval_resize"] == 27


def test_cli_reports_the_conditions(dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "study", "--data", str(dataset), "--faces", str(dataset / "faces.json"),
        "--methods", "overlay", "-o", "overlay.color=0,0,0", "--archs", "resnet18",
        "--epochs", "1", "--img-size", "24", "--batch-size", "8", "--out", str(tmp_path / "c"),
        "--workers", "1", "--threads", "1", "--parallel", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "train-overlay" in result.output and "eval-original" in result.output
    study = json.loads((tmp_path / "c" / "study.json").read_text())
    assert study["method_options"] == {"overlay": {"color": [0, 0, 0]}}
    bad = CliRunner().invoke(main, [
        "study", "--data", str(dataset), "--faces", str(dataset / "faces.json"),
        "--archs", "nonet", "--out", str(tmp_path / "d")])
    assert bad.exit_code != 0 and "unknown architecture 'nonet'" in bad.output


# --------------------------------------------------------------------------- resumption


EPOCHS = 5


def _study_command(dataset: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "veil", "study", "--data", str(dataset), "--faces",
            str(dataset / "faces.json"), "--methods", "blur", "--archs", "resnet18",
            "--epochs", str(EPOCHS), "--img-size", "24", "--batch-size", "8", "--workers", "1",
            "--threads", "1", "--parallel", "2", "--no-progress", "--out", str(out)]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_mid_training_then_rerun_gives_the_uninterrupted_predictions(
        tmp_path: Path) -> None:
    """Killed while two trainings run in worker processes; the rerun resumes from the
    checkpoints and ends with the predictions of a straight, one-at-a-time run."""
    data = make_dataset(tmp_path / "data", n_train=16, n_val=4, seed=5)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run_study(StudyConfig(data=data, faces=data / "faces.json", out=reference,
                          methods=["blur"], archs=["resnet18"], workers=1, threads=1, parallel=1,
                          overrides={"epochs": EPOCHS, "img_size": 24, "batch_size": 8},
                          log=lambda m: None))

    process = subprocess.Popen(_study_command(data, resumed), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = resumed / "runs/resnet18/seed0"
    checkpoint = runs / "train-original" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    workers = _children(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the run never wrote its first checkpoint"
    assert not (runs / "train-original" / "model.pt").exists(), \
        "the kill came after training had finished"
    assert torch.load(checkpoint, weights_only=False)["epoch"] < EPOCHS
    assert workers, "no training worker processes were seen"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "training workers outlived the killed study"

    rerun = subprocess.run(_study_command(data, resumed), capture_output=True, text=True,
                           env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed after epoch" in rerun.stderr
    for item in json.loads((reference / "study.json").read_text())["conditions"]:
        expected = pq.read_table(reference / item["predictions"])
        assert pq.read_table(resumed / item["predictions"]).equals(expected), item
