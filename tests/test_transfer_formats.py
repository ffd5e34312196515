"""The downstream tasks in their published formats, written here as tiny fixtures, and
each task run end to end through ``veil transfer`` on a tiny study run.

Fixture images are coloured by class (plus noise), so even a randomly initialised
backbone's features separate the classes: a linear probe that reaches high accuracy
proves that images, labels and predictions stayed aligned through every format.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image

from veil.analysis.transfer import write_comparison
from veil.errors import DatasetError
from veil.transfer import metrics as M
from veil.transfer.detection import DetectionOptions
from veil.transfer.finetune import FinetuneOptions
from veil.transfer.linear import LinearOptions
from veil.transfer.run import TransferConfig, run_transfer
from veil.transfer.tasks import open_task
from veil.transfer.tasks.cifar10 import read_batch
from veil.transfer.tasks.voc import read_annotation

PALETTE = [(230, 30, 30), (30, 200, 40), (30, 60, 230), (240, 220, 20), (200, 40, 220),
           (20, 220, 220), (250, 140, 0), (120, 120, 120), (255, 255, 255), (10, 10, 10)]
FAST_LINEAR = LinearOptions(l2_grid=(1e-2, 1e-4), max_iter=60)
FAST_TUNE = FinetuneOptions(epochs=1, batch_size=4, max_steps=3)


def coloured(label: int, size: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array(PALETTE[label % len(PALETTE)], dtype=np.int16)
    noise = rng.integers(-25, 26, size=(size[1], size[0], 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def save_jpeg(path: Path, pixels: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels, "RGB")
    (image.convert("L") if mode == "L" else image).save(path, quality=95)


# --------------------------------------------------------------------------- fixtures


def write_cifar_batches(root: Path, per_batch: int = 4, test: int = 12, classes: int = 4
                        ) -> Path:
    """cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta, written
    with pickle in the official dict layout (uint8 N x 3072, channel planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    counter = 0

    def batch(name: str, n: int) -> None:
        nonlocal counter
        labels = [(counter + i) % classes for i in range(n)]
        images = np.stack([coloured(lab, (32, 32), counter + i) for i, lab in enumerate(labels)])
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane
        counter += n
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}, f)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", test)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f)
    return folder


def write_imagefolder(root: Path, splits: dict[str, int], classes: list[str],
                      size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Path:
    for split, per_class in splits.items():
        for c, name in enumerate(classes):
            for i in range(per_class):
                save_jpeg(root / split / name / f"{i:03d}.jpg",
                          coloured(c, size, hash((split, c, i)) % 10_000), mode)
    return root


def write_sun397(root: Path) -> Path:
    """SUN397's layout: <letter>/<class>[/<sub>]/sun_*.jpg and Partitions/ listings."""
    classes = ["a/abbey", "b/bakery/shop", "c/canyon"]
    train_lines, test_lines = [], []
    for c, name in enumerate(classes):
        for i in range(6):
            key = f"{name}/sun_{c}{i:02d}.jpg"
            save_jpeg(root / key, coloured(c, (48, 36), c * 10 + i))
            (train_lines if i < 4 else test_lines).append(f"/{key}")
    (root / "Partitions").mkdir()
    (root / "Partitions" / "Training_01.txt").write_text("\n".join(train_lines) + "\n")
    (root / "Partitions" / "Testing_01.txt").write_text("\n".join(test_lines) + "\n")
    (root / "Partitions" / "Training_02.txt").write_text("\n".join(test_lines) + "\n")
    (root / "Partitions" / "Testing_02.txt").write_text("\n".join(train_lines) + "\n")
    return root


ATTRIBUTES = ["5_o_Clock_Shadow", "Bald", "Eyeglasses", "Smiling"]


def write_celeba(root: Path, official_folders: bool = False) -> Path:
    """list_attr_celeba.txt, list_eval_partition.txt and img_align_celeba/: 12 images,
    8 train, 2 val, 2 test; attribute a is on when image i has bit a set."""
    anno = root / "Anno" if official_folders else root
    evald = root / "Eval" if official_folders else root
    images = (root / "Img" if official_folders else root) / "img_align_celeba"
    rows, parts = [], []
    for i in range(12):
        name = f"{i + 1:06d}.jpg"
        bits = [(i >> a) & 1 for a in range(len(ATTRIBUTES))]
        colour = (np.array(bits[:3]) * 200 + 30).astype(np.uint8)
        pixels = np.broadcast_to(colour, (218, 178, 3)).copy()
        save_jpeg(images / name, pixels)
        rows.append(name + "  " + " ".join("1" if b else "-1" for b in bits))
        parts.append(f"{name} {0 if i < 8 else 1 if i < 10 else 2}")
    anno.mkdir(parents=True, exist_ok=True)
    evald.mkdir(parents=True, exist_ok=True)
    (anno / "list_attr_celeba.txt").write_text(
        f"{len(rows)}\n" + " ".join(ATTRIBUTES) + "\n" + "\n".join(rows) + "\n")
    (evald / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return root


VOC_XML = """<annotation>
  <folder>VOC2007</folder><filename>{id}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""
VOC_OBJECT = """<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>
  <difficult>{difficult}</difficult>
  <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def write_voc(root: Path, year: int = 2007) -> Path:
    """VOCdevkit/VOC<year>: 3 images with XML annotations (one difficult object) and the
    train / val / trainval / test image sets."""
    base = root / "VOCdevkit" / f"VOC{year}"
    objects = {
        "000001": [("dog", 0, 5, 6, 30, 40), ("person", 0, 35, 4, 60, 44)],
        "000002": [("car", 0, 10, 10, 50, 30), ("car", 1, 2, 2, 8, 8)],
        "000003": [("dog", 0, 20, 5, 55, 45)],
    }
    for image_id, objs in objects.items():
        pixels = coloured(len(objs), (64, 48), int(image_id))
        for _, _, x0, y0, x1, y1 in objs:
            pixels[y0:y1, x0:x1] = 255 - pixels[y0:y1, x0:x1]
        save_jpeg(base / "JPEGImages" / f"{image_id}.jpg", pixels)
        xml = VOC_XML.format(id=image_id, w=64, h=48, objects="".join(
            VOC_OBJECT.format(name=n, difficult=d, x0=x0, y0=y0, x1=x1, y1=y1)
            for n, d, x0, y0, x1, y1 in objs))
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{image_id}.xml").write_text(xml)
    sets = base / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    for name, ids in {"train": ["000001", "000002"], "val": ["000003"],
                      "trainval": ["000001", "000002", "000003"],
                      "test": ["000001", "000002", "000003"]}.items():
        (sets / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


def make_run(root: Path, *, arch: str = "mobilenet_v3_small", seeds: tuple[int, ...] = (0,),
             methods: tuple[str, ...] = ("blur",), num_classes: int = 3, img_size: int = 32
             ) -> Path:
    """A study run folder as `veil study` leaves it, with randomly initialised
    backbones (a different init per seed and condition)."""
    hyper = {"profile": "quick", "img_size": img_size, "eval_resize": img_size + img_size // 8,
             "precision": "fp32", "channels_last": False}
    study = {"veil_version": "test", "archs": [arch], "seeds": list(seeds),
             "methods": list(methods), "profile": "quick", "hyper": hyper, "status": "done",
             "classes": [{"index": i, "wnid": f"n{i:08d}", "name": f"c{i}"}
                         for i in range(num_classes)]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.json").write_text(json.dumps(study))
    for seed in seeds:
        for k, cond in enumerate(("original", *methods)):
            folder = root / "runs" / arch / f"seed{seed}" / f"train-{cond}"
            folder.mkdir(parents=True)
            torch.manual_seed(100 * seed + k)
            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
            torch.save(model.state_dict(), folder / "model.pt")
            (folder / "config.json").write_text(json.dumps(
                {"arch": arch, "seed": seed, "train_condition": cond, "hyper": hyper}))
    return root


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_pickles_are_read_in_the_official_layout(tmp_path: Path) -> None:
    folder = write_cifar_batches(tmp_path)
    task = open_task("cifar10", tmp_path)  # the folder holding cifar-10-batches-py/
    assert task.source == "CIFAR-10 python batches"
    assert task.classes[:3] == ["airplane", "automobile", "bird"]
    assert len(task.train) == 20 and len(task.test) == 12
    assert task.train.keys[0] == "data_batch_1/00000"
    assert task.test.keys[-1] == "test_batch/00011"
    # pixel (row 0, col 1) of train image 5 is data[5][1], [1025], [2049] of batch 2
    raw = read_batch(folder / "data_batch_2")
    first = task.train.images.image(5)
    assert first.size == (32, 32)
    assert first.getpixel((1, 0)) == tuple(int(raw[b"data"][1][1 + 1024 * c]) for c in range(3))
    assert task.train.labels.tolist()[:6] == [0, 1, 2, 3, 0, 1]
    assert open_task("cifar10", folder).train.fingerprint() == task.train.fingerprint()


def test_cifar_pickles_that_would_run_code_are_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    folder = write_cifar_batches(tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DatasetError, match=r"refusing to load (posix|nt)\.system"):
        open_task("cifar10", folder)


def test_cifar_imagefolder_copy(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, {"train": 2, "test": 1}, ["cat", "airplane", "dog"])
    task = open_task("cifar10", tmp_path)
    assert task.source == "ImageFolder"
    assert task.classes == ["airplane", "cat", "dog"]
    assert task.train.keys[0] == "train/airplane/000.jpg"
    assert task.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DatasetError, match="needs train/<class>/ and nope/<class>/"):
        write_imagefolder(tmp_path / "x", {"train": 1, "other": 1}, ["a", "b"])
        open_task("cifar10", tmp_path / "x", test_split="nope")


# --------------------------------------------------------------------------- scenes


def test_sun397_partitions(tmp_path: Path) -> None:
    write_sun397(tmp_path)
    task = open_task("sun397", tmp_path)
    assert task.name == "scenes" and task.source == "SUN397 partition 01"
    assert task.classes == ["a/abbey", "b/bakery/shop", "c/canyon"]
    assert len(task.train) == 12 and len(task.test) == 6
    assert task.train.keys[0] == "a/abbey/sun_000.jpg"
    assert task.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    swapped = open_task("scenes", tmp_path, partition=2)
    assert set(swapped.train.keys) == set(task.test.keys)


def test_scene15_class_folders_and_split_folders(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "bare", {"": 5}, ["coast", "forest"], mode="L")
    task = open_task("scenes", tmp_path / "bare", train_per_class=3)
    assert len(task.train) == 6 and len(task.test) == 4
    assert not set(task.train.keys) & set(task.test.keys)
    assert np.bincount(task.train.labels).tolist() == [3, 3]
    again = open_task("scenes", tmp_path / "bare", train_per_class=3)
    assert again.train.keys == task.train.keys  # the protocol's random pick is fixed
    assert task.train.images.image(0).mode == "RGB"  # greyscale decoded as RGB
    with pytest.raises(DatasetError, match="trains on 5 per class"):
        open_task("scenes", tmp_path / "bare", train_per_class=5)
    write_imagefolder(tmp_path / "split", {"train": 2, "test": 3}, ["coast", "forest"])
    split = open_task("scenes", tmp_path / "split")
    assert (len(split.train), len(split.test), split.source) == (4, 6, "ImageFolder")


# --------------------------------------------------------------------------- CelebA


@pytest.mark.parametrize("official_folders", [False, True])
def test_celeba_attribute_and_partition_files(tmp_path: Path, official_folders: bool) -> None:
    write_celeba(tmp_path, official_folders)
    task = open_task("celeba", tmp_path)
    assert task.kind == "multilabel" and task.classes == ATTRIBUTES
    assert {n: len(s) for n, s in task.splits.items()} == {"train": 8, "val": 2, "test": 2}
    assert task.train.keys[3] == "img_align_celeba/000004.jpg"
    assert task.train.labels[3].tolist() == [1, 1, 0, 0]  # image 4: i=3, bits 0 and 1
    assert task.test.labels.tolist() == [[0, 1, 0, 1], [1, 1, 0, 1]]  # i = 10, 11


def test_celeba_errors_name_the_problem(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    attr = tmp_path / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join([*lines[:3], lines[3] + " 1", *lines[4:]]) + "\n")
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt:4: 5 values for 4"):
        open_task("celeba", tmp_path)
    attr.write_text("\n".join(lines) + "\n")
    (tmp_path / "img_align_celeba" / "000012.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 test image.*missing.*000012\.jpg"):
        open_task("celeba", tmp_path)


# --------------------------------------------------------------------------- VOC


def test_voc_annotations_and_image_sets(tmp_path: Path) -> None:
    devkit = write_voc(tmp_path)
    ann = read_annotation(devkit / "VOC2007" / "Annotations" / "000002.xml")
    assert (ann.width, ann.height) == (64, 48)
    assert ann.boxes.tolist() == [[9, 9, 50, 30], [1, 1, 8, 8]]  # 1-based inclusive -> x-1
    assert ann.labels.tolist() == [6, 6]  # car
    assert ann.difficult.tolist() == [False, True]
    task = open_task("voc", tmp_path)  # finds VOCdevkit/VOC2007
    assert task.year == 2007 and task.ap_method == "11point"
    assert task.train.keys == ["JPEGImages/000001.jpg", "JPEGImages/000002.jpg",
                               "JPEGImages/000003.jpg"]
    assert open_task("voc", devkit, train_split="train", test_split="val").test.keys == [
        "JPEGImages/000003.jpg"]
    write_voc(tmp_path / "two", 2012)
    write_voc(tmp_path / "two", 2007)
    with pytest.raises(DatasetError, match="holds VOC2007, VOC2012: pick one with --year"):
        open_task("voc", tmp_path / "two" / "VOCdevkit")
    assert open_task("voc", tmp_path / "two", year=2012).ap_method == "area"


def test_voc_unknown_class_is_refused(tmp_path: Path) -> None:
    devkit = write_voc(tmp_path)
    path = devkit / "VOC2007" / "Annotations" / "000003.xml"
    path.write_text(path.read_text().replace("<name>dog", "<name>dragon"))
    with pytest.raises(DatasetError, match="unknown class 'dragon'"):
        open_task("voc", devkit)


# --------------------------------------------------------------------------- mAP by hand


def hand_case() -> list[M.ImageDetections]:
    """Class 0: A has g1, g2; B has g3 (difficult) and g4. Detections by score: d1 hits g1
    (TP), d2 hits g1 again (FP), d3 hits difficult g3 (ignored), d4 hits g4 (TP), d5 hits
    nothing (FP). Class 1: one box in A, never detected. Class 2: no boxes at all."""
    a = M.ImageDetections(
        boxes=np.array([[0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110]], float),
        scores=np.array([0.9, 0.8, 0.5]), labels=np.array([0, 0, 0]),
        gt_boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float),
        gt_labels=np.array([0, 0, 1]), gt_difficult=np.array([False, False, False]))
    b = M.ImageDetections(
        boxes=np.array([[1, 0, 10, 10], [50, 50, 60, 61]], float),
        scores=np.array([0.7, 0.6]), labels=np.array([0, 0]),
        gt_boxes=np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float),
        gt_labels=np.array([0, 0]), gt_difficult=np.array([True, False]))
    return [a, b]


def test_box_iou_by_hand() -> None:
    iou = M.box_iou(np.array([[0, 0, 10, 10]], float), np.array([[5, 0, 15, 10], [20, 20, 30, 30]],
                                                                float))
    assert iou.tolist() == [[pytest.approx(1 / 3), 0.0]]


def test_voc_ap_by_hand() -> None:
    """Kept detections TP, FP, TP, FP over 3 positives: recall 1/3 1/3 2/3 2/3, precision
    1 1/2 2/3 1/2. Area: 1/3 * 1 + 1/3 * 2/3 = 5/9. 11-point: precision 1 at recall
    0-0.3 (4 points), 2/3 at 0.4-0.6 (3 points), 0 above: 6/11."""
    matched = M.match_detections(hand_case(), num_classes=3)
    assert matched.positives.tolist() == [[2, 1, 0], [1, 0, 0]]
    assert matched.tp.tolist() == [True, False, False, True]  # d3 dropped (difficult)
    area = M.class_ap(matched, "area")
    assert area[0] == pytest.approx(5 / 9)
    assert area[1] == 0.0 and math.isnan(area[2])
    assert M.class_ap(matched, "11point")[0] == pytest.approx(6 / 11)
    assert M.mean_ap(matched, "area") == pytest.approx((5 / 9 + 0) / 2)


def test_weighted_ap_equals_ap_with_the_image_drawn_twice() -> None:
    a, b = hand_case()
    twice = M.match_detections([a, a, b], num_classes=3)
    weighted = M.class_ap(M.match_detections([a, b], 3), "area", np.array([[2.0, 1.0]]))
    assert weighted[0] == pytest.approx(M.class_ap(twice, "area"), nan_ok=True)
    both = M.mean_ap(M.match_detections([a, b], 3), "11point", np.array([[1.0, 1.0],
                                                                          [0.0, 2.0]]))
    only_b = M.mean_ap(M.match_detections([b, b], 3), "11point")
    assert both[0] == pytest.approx(M.mean_ap(M.match_detections([a, b], 3), "11point"))
    assert both[1] == pytest.approx(only_b)


# --------------------------------------------------------------------------- end to end


def _results(out: Path) -> list[dict[str, object]]:
    return json.loads((out / "results.json").read_text())


def test_cifar10_pickles_end_to_end(tmp_path: Path) -> None:
    write_cifar_batches(tmp_path / "data", per_batch=8, test=16)
    run = make_run(tmp_path / "run")
    summary = run_transfer(TransferConfig(
        run=run, task="cifar10", data=tmp_path / "data", mode="linear", out=tmp_path / "out",
        linear=FAST_LINEAR, workers=1, threads=1, log=lambda m: None))
    rows = _results(tmp_path / "out")
    assert [(r["condition"], r["n_test"]) for r in rows] == [("original", 16), ("blur", 16)]
    assert all(r["top1"] >= 0.75 for r in rows), rows  # colour-coded: far above chance (.25)
    table = pq.read_table(tmp_path / "out" / "models" / "mobilenet_v3_small" / "seed0"
                          / "train-original" / "predictions.parquet")
    assert table.column("key").to_pylist()[0] == "test_batch/00000"
    assert np.mean(table.column("correct").to_numpy()) == pytest.approx(rows[0]["top1"])
    assert not (tmp_path / "out" / "comparison.md").exists()  # analysis writes it, after
    comparison = write_comparison(summary.out)
    assert comparison and comparison[0]["method"] == "blur"
    assert (tmp_path / "out" / "comparison.md").is_file()


def test_sun397_end_to_end(tmp_path: Path) -> None:
    write_sun397(tmp_path / "data")
    run = make_run(tmp_path / "run")
    run_transfer(TransferConfig(run=run, task="scenes", data=tmp_path / "data", mode="linear",
                                out=tmp_path / "out", linear=FAST_LINEAR, workers=1,
                                threads=1, log=lambda m: None))
    rows = _results(tmp_path / "out")
    assert len(rows) == 2 and all(r["n_test"] == 6 for r in rows)
    assert all(r["top1"] >= 2 / 3 for r in rows), rows


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_celeba_end_to_end(tmp_path: Path, mode: str) -> None:
    write_celeba(tmp_path / "data")
    run = make_run(tmp_path / "run")
    run_transfer(TransferConfig(run=run, task="celeba", data=tmp_path / "data", mode=mode,
                                out=tmp_path / "out", linear=FAST_LINEAR, finetune=FAST_TUNE,
                                workers=1, threads=1, log=lambda m: None))
    rows = _results(tmp_path / "out")
    assert {"mean_accuracy", "mean_ap"} <= set(rows[0])
    for row in rows:
        assert 0.0 <= row["mean_accuracy"] <= 1.0
    attributes = (tmp_path / "out" / "attributes.csv").read_text().splitlines()
    assert attributes[0].startswith("arch,seed,condition,attribute,accuracy,ap")
    assert len(attributes) == 1 + 2 * len(ATTRIBUTES)
    table = pq.read_table(tmp_path / "out" / "models" / "mobilenet_v3_small" / "seed0"
                          / "train-blur" / "predictions.parquet")
    assert table.column("labels").to_pylist() == [[0, 1, 0, 1], [1, 1, 0, 1]]
    right = np.array(table.column("scores").to_pylist()) >= 0.5
    expected = (right == np.array([[0, 1, 0, 1], [1, 1, 0, 1]], bool)).mean()
    assert rows[1]["mean_accuracy"] == pytest.approx(expected)
    if mode == "linear":  # colour encodes the first three attributes
        assert rows[0]["mean_accuracy"] >= 0.75


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_voc_detection_end_to_end(tmp_path: Path, mode: str) -> None:
    write_voc(tmp_path / "data")
    run = make_run(tmp_path / "run", arch="resnet18" if mode == "linear" else "mobilenet_v2")
    options = DetectionOptions(epochs=2, batch_size=2, min_size=64, max_size=96, max_steps=2,
                               workers=0)
    run_transfer(TransferConfig(run=run, task="voc", data=tmp_path / "data", mode=mode,
                                out=tmp_path / "out", detection=options, threads=1,
                                log=lambda m: None))
    rows = _results(tmp_path / "out")
    assert [r["condition"] for r in rows] == ["original", "blur"]
    assert all(0.0 <= r["map50"] <= 1.0 for r in rows)
    arch = rows[0]["arch"]
    result = json.loads((tmp_path / "out" / "models" / str(arch) / "seed0" / "train-original"
                         / "result.json").read_text())
    assert result["details"]["steps"] == 2 and result["details"]["ap_method"] == "11point"
    table = pq.read_table(tmp_path / "out" / "models" / str(arch) / "seed0"
                          / "train-original" / "predictions.parquet")
    assert table.num_rows == 3
    assert table.column("gt_difficult").to_pylist()[1] == [False, True]
    assert table.column("gt_boxes").to_pylist()[0] == [4, 5, 30, 40, 34, 3, 60, 44]
