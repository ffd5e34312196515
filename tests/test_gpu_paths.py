"""The GPU paths, checked on the CPU: CenterFace's torch port gives the reference's boxes,
the detector engine follows ``engine``/``device``, the cached training path learns what
the paper's recipe learns, and the device feeding keeps batches in order.

Tests marked ``cuda`` run the same checks on a GPU (benchmarks/gpu_check.sh runs them);
without one they are skipped.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from veil.boxes import Box
from veil.detection import create_detector, detector_settings
from veil.detection.centerface_onnx import CenterFaceDetector
from veil.detection.centerface_torch import CenterFaceNet, TorchCenterFaceDetector
from veil.errors import VeilError
from veil.study.data import (
    CacheSource,
    StreamSource,
    decode_images,
    make_condition,
    open_study_data,
    prefetch,
)
from veil.study.ddp import DistEnv
from veil.study.evaluate import predict
from veil.study.profiles import resolve_recipe
from veil.study.train import RunFiles, train_model

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")


# --------------------------------------------------------------------------- detector


@pytest.fixture(scope="module")
def wider_images(wider: Path) -> list[np.ndarray]:
    # Every 9th image: crowds and single faces, several aspect ratios.
    paths = sorted((wider / "images").glob("*.jpg"))[::9][:10]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _assert_same_boxes(ours: list[list[Box]], reference: list[list[Box]]) -> int:
    """One-to-one within 1 px and 1e-3 in score; returns how many boxes were compared."""
    total = 0
    for mine, theirs in zip(ours, reference, strict=True):
        assert len(mine) == len(theirs)
        if not mine:
            continue
        a = np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in mine])
        b = np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in theirs])
        distance = np.abs(a[:, None, :4] - b[None, :, :4]).max(axis=2)
        match = distance.argmin(axis=1)
        assert len(set(match.tolist())) == len(mine)
        assert distance.min(axis=1).max() <= 1.0
        assert np.abs(a[:, 4] - b[match, 4]).max() <= 1e-3
        assert {box.source for box in mine} == {"centerface"}
        total += len(mine)
    return total


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_torch_port_finds_the_onnxruntime_boxes(wider_images, device):
    reference = create_detector("centerface", engine="onnxruntime", device="cpu", threads=1)
    port = create_detector("centerface", engine="torch", device=device, threads=1,
                           batch_size=4)
    assert isinstance(port, TorchCenterFaceDetector)
    # Odd sizes too: a resize to the 32 px grid happens on both paths.
    images = [*wider_images, np.ascontiguousarray(wider_images[0][:301, :250])]
    compared = _assert_same_boxes(port.detect(images), reference.detect(images))
    assert compared > 50  # crowded images: parity on empty lists would prove nothing


def test_torch_network_matches_onnxruntime_outputs():
    from veil.detection.centerface_model import INPUT_NAME, OUTPUT_NAMES
    from veil.detection.centerface_onnx import load_session

    x = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 96)).astype(np.float32)
    expected = load_session(1, "cpu").run(OUTPUT_NAMES, {INPUT_NAME: x})
    with torch.inference_mode():
        got = CenterFaceNet()(torch.from_numpy(x))
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape
        np.testing.assert_allclose(have.numpy(), want, atol=1e-4)


def test_torch_port_refuses_an_operator_it_does_not_implement():
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["input.1"], ["537"], kernel_shape=[2, 2])], "g",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("537", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    with pytest.raises(VeilError, match="MaxPool"):
        CenterFaceNet(helper.make_model(graph))


def test_engine_follows_engine_and_device():
    assert type(create_detector("centerface")) is CenterFaceDetector
    assert type(create_detector("centerface", device="cpu")) is CenterFaceDetector
    torch_cpu = create_detector("centerface", engine="torch", device="cpu")
    assert isinstance(torch_cpu, TorchCenterFaceDetector) and torch_cpu.device == "cpu"
    assert torch_cpu.options["engine"] == "torch"
    # The multi-scale profiles hand the device to their base detector.
    fast = create_detector("fast", base_options={"engine": "torch", "device": "cpu"})
    assert isinstance(fast.base, TorchCenterFaceDetector)
    with pytest.raises(VeilError, match="engine"):
        create_detector("centerface", engine="tensorrt")
    with pytest.raises(VeilError, match="precision"):
        create_detector("centerface", engine="onnxruntime", precision="fp16")
    with pytest.raises(VeilError, match="fp16"):
        create_detector("centerface", engine="torch", device="cpu", precision="fp16")
    with pytest.raises(VeilError, match="device"):
        create_detector("centerface", engine="onnxruntime", device="gpu0")


@pytest.mark.skipif(CUDA, reason="checks the message shown where there is no GPU")
def test_asking_for_cuda_without_a_gpu_says_what_is_missing():
    import onnxruntime

    with pytest.raises(VeilError, match="no CUDA GPU"):
        create_detector("centerface", device="cuda")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(VeilError, match="onnxruntime-gpu"):
            create_detector("centerface", engine="onnxruntime", device="cuda")


def test_cli_device_reaches_the_detector_that_runs_the_network():
    assert detector_settings("centerface", device="cuda") == ("centerface", {"device": "cuda"})
    assert detector_settings("fast", device="cuda") == (
        "fast", {"base_options": {"device": "cuda"}})
    name, options = detector_settings("centerface", profile="thorough", device="cuda:1")
    assert name == "multiscale" and options["base_options"] == {"device": "cuda:1"}
    assert detector_settings("centerface", threshold=0.3) == (
        "centerface", {"threshold": 0.3})  # no --device: the run config is as before


# --------------------------------------------------------------------------- feeding


def test_prefetch_keeps_order_raises_errors_and_stops_when_closed():
    assert list(prefetch(lambda: iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad shard")

    items = prefetch(failing)
    assert next(items) == 1
    with pytest.raises(ValueError, match="bad shard"):
        next(items)

    made: list[int] = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    before = threading.active_count()
    items = prefetch(endless, depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert threading.active_count() == before  # the loader thread has ended
    assert len(made) <= 3 + 2 + 1  # it stopped instead of running on


@cuda
@pytest.mark.parametrize("resident", [True, False])
def test_cuda_batches_equal_the_cpu_batches(resident):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 20, 20, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 40)
    order = [list(rng.permutation(40)[:8]) for _ in range(7)]
    host = CacheSource(images, labels, 16, 0.35)
    device = CacheSource(images, labels, 16, 0.35, device="cuda", resident=resident)
    for (i0, p0, l0), (i1, p1, l1) in zip(host.batches(order, train=True, seed=0),
                                          device.batches(order, train=True, seed=0),
                                          strict=True):
        assert p1.device.type == "cuda" and p1.dtype == torch.uint8
        assert torch.equal(i0, i1) and torch.equal(p0, p1.cpu()) and torch.equal(l0, l1.cpu())
        g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        x0 = host.to_model_input(p0, train=True, generator=g0)
        x1 = device.to_model_input(p1, train=True, generator=g1)
        assert x1.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(x1.cpu(), x0, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- accuracy


def _colour_dataset(root: Path, seed: int = 1) -> Path:
    """3 classes told apart by which colour channel is raised over a random colour
    (an argmax that is right ~90% of the time), noisy and non-square."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", 40), ("val", 40)):
        for c in range(3):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = (40, 48) if i % 2 else (48, 40)
                base = rng.uniform(0, 200, 3)
                base[c] += 170
                pixels = base + rng.normal(0, 30, (height, width, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_cached_bf16_path_learns_what_the_papers_recipe_learns(tmp_path):
    """A short CPU run of each: the paper's data path (PIL transforms per image, fp32)
    and veil's (uint8 cache, batched crop + flip, bf16, channels_last)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test shares the machine; one thread is enough
    try:
        data = open_study_data(_colour_dataset(tmp_path / "data"))
        env = DistEnv()
        original = make_condition("original")
        accuracy = {}
        for name, loader, precision, channels_last in (("paper", "stream", "fp32", False),
                                                       ("veil", "cache", "bf16", True)):
            recipe = resolve_recipe("quick", img_size=32, eval_resize=36, epochs=10,
                                    batch_size=16, lr=0.3, loader=loader,
                                    precision=precision, channels_last=channels_last)
            if loader == "cache":
                train, val = (
                    CacheSource(decode_images(split, range(len(split)), {}, original, 36),
                                split.labels, 32, recipe.min_crop_scale)
                    for split in (data.train, data.val))
            else:
                train, val = (
                    StreamSource(split, {}, original, img_size=32, eval_resize=36,
                                 min_crop_scale=recipe.min_crop_scale, workers=0)
                    for split in (data.train, data.val))
            folder = tmp_path / name
            folder.mkdir()
            result = train_model(arch="resnet18", seed=0, recipe=recipe, num_classes=3,
                                 train_source=train, val_source=val, files=RunFiles(folder),
                                 env=env)
            predictions = predict(result.model, val, env, batch_size=64,
                                  precision=recipe.precision)
            assert predictions is not None
            accuracy[name] = predictions.top1(data.val.labels)
    finally:
        torch.set_num_threads(threads)
    # Chance is 1/3; on 120 val images one standard error of a difference is ~0.03.
    assert accuracy["paper"] >= 0.85 and accuracy["veil"] >= 0.85, accuracy
    assert abs(accuracy["paper"] - accuracy["veil"]) <= 0.1, accuracy
