"""The study's data path: labelled splits, face obfuscation, and batches for training.

Every image a model sees goes through one function, :func:`load_condition_image`:
veil's loader (RGB, EXIF orientation applied, so boxes line up), then, for an
obfuscated condition, the method applied at *full resolution* through
:func:`veil.obfuscation.obfuscate`. The original and obfuscated inputs therefore
differ only inside the method's affected region of each face.

Two ways to feed a model (``Recipe.loader``):

- ``"cache"``: every image is decoded once into a uint8 square of side
  ``eval_resize`` (torchvision's ``Resize`` + ``CenterCrop``), one array per split and
  condition, saved as ``.npy`` so a resumed study does not decode again. Training
  takes whole batches out of it and does RandomResizedCrop + flip as one
  ``affine_grid``/``grid_sample`` call on the batch (:func:`random_resized_crop_flip`);
  evaluation is a center crop. No per-sample Python runs in the hot loop, and the
  same code runs on the GPU. An obfuscated cache copies the original's faceless
  images and decodes only the images with faces.
- ``"stream"``: the paper's recipe, a ``DataLoader`` whose workers decode each image
  and apply torchvision's PIL transforms every epoch (for datasets too big to cache).

Arrays are NHWC uint8, which viewed as NCHW is exactly the ``channels_last`` layout.

On a CUDA device a :class:`CacheSource` keeps the accelerator fed without the host in
the loop: a cache that fits in :data:`RESIDENT_FRACTION` of the free device memory
is uploaded once and batches are gathered on the device (``index_select``); a larger
one is gathered by a background thread into pinned buffers and copied on a side
stream, :data:`PREFETCH_DEPTH` batches ahead. Either way batches cross as uint8 and
the crop, flip and normalisation run on the device.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2 as T

from veil.boxes import Box, usable_boxes
from veil.datasets import SHARDED, Dataset, ImageReader, open_dataset
from veil.errors import DatasetError, VeilError
from veil.faces import FacesSnapshot
from veil.files import atomic_path
from veil.images import load_image, probe
from veil.obfuscation import obfuscate
from veil.obfuscation.jpeg import pillow_default_jpeg
from veil.processes import loader_context, process_pool
from veil.study.conditions import JPEG_CONDITIONS, STUDY_CONDITIONS
from veil.study.layout import ORIGINAL

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "classes.txt")

# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """One split in key order: keys, files and integer labels. Images inside shard files
    (a WebDataset, a Hugging Face dataset) are read by key through ``reader``; ``paths``
    are then the shard files."""

    name: str
    keys: list[str]
    paths: list[Path]
    labels: np.ndarray  # int64, one per key
    reader: ImageReader | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def source(self, index: int) -> Path | bytes:
        """What :func:`veil.images.load_image` decodes for image ``index``."""
        if self.reader is None:
            return self.paths[index]
        return read_source(self.reader, self.keys[index])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key, label in zip(self.keys, self.labels.tolist(), strict=True):
            digest.update(f"{key}\t{label}\n".encode())
        return digest.hexdigest()


@dataclass
class StudyData:
    """A labelled dataset with a train and a val split, classes indexed in sorted order
    (ILSVRC's order for wnids)."""

    root: Path
    classes: list[str]
    train: Split
    val: Split
    names: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val}[name]

    def class_records(self) -> list[dict[str, Any]]:
        return [{"index": i, "wnid": c, "name": self.names.get(c, c)}
                for i, c in enumerate(self.classes)]


def read_source(reader: ImageReader, key: str) -> bytes:
    """An image's bytes from a shard file, or the VeilError a study stops on."""
    try:
        return reader.read(key)
    except OSError as exc:
        raise VeilError(f"{key}: cannot read it: {exc} (a study needs every image; remove or"
                        " replace it)") from None


VAL_SPLITS = ("val", "validation")
"""Names of the split a study evaluates on (Hugging Face datasets call it validation)."""


def open_study_data(
    source: str | os.PathLike[str], *, layout: str = "auto",
    labels_file: str | os.PathLike[str] | None = None, limit: int | None = None,
    image_column: str | None = None, label_column: str | None = None,
) -> StudyData:
    """Read a labelled dataset with ``train/`` and ``val/`` splits (a Hugging Face
    dataset: ``train`` and ``validation``, labels from its ClassLabel column).

    ``limit`` keeps the first ``limit`` images of each split, spread over the classes.
    """
    dataset = open_dataset(source, layout=layout, labels_file=labels_file,
                           image_column=image_column, label_column=label_column)
    where = dataset.source or str(dataset.root)
    val_name = next((s for s in VAL_SPLITS if s in dataset.splits), "val")
    missing = [s for s in ("train", val_name) if s not in dataset.splits]
    if missing:
        raise DatasetError(
            f"{where}: a study needs a train/ and a val/ split (ImageFolder layout:"
            f" train/<class>/<image>, val/<class>/<image>; a Hugging Face dataset: train and"
            f" validation); missing: {', '.join(missing)}"
        )
    unlabelled = [e.key for e in dataset if e.label is None
                  and e.key.split("/", 1)[0] in ("train", val_name)]
    if unlabelled:
        raise DatasetError(
            f"{where}: {len(unlabelled)} image(s) have no label (e.g. {unlabelled[0]});"
            " a study needs a class for every train and val image (class folders,"
            " --labels for a flat val/ folder, or a Hugging Face dataset's --label-column)"
        )
    train = dataset.subset(split="train", limit=limit)
    val = dataset.subset(split=val_name, limit=limit)
    classes = sorted(set(train.classes) | set(val.classes))
    if len(classes) < 2:
        raise DatasetError(f"{where}: a study needs at least 2 classes, found {len(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    return StudyData(
        root=Path(dataset.root), classes=classes,
        train=_split("train", train, index), val=_split("val", val, index),
        names=class_names(Path(dataset.root), classes),
    )


def _split(name: str, dataset: Dataset, index: Mapping[str, int]) -> Split:
    entries = list(dataset)
    return Split(
        name=name, keys=[e.key for e in entries], paths=[e.path for e in entries],
        labels=np.array([index[e.label] for e in entries if e.label is not None],
                        dtype=np.int64),
        reader=dataset.reader() if dataset.layout in SHARDED else None,
    )


def class_names(root: Path, classes: Sequence[str]) -> dict[str, str]:
    """Readable class names: from a synset file in the dataset root (ILSVRC's
    ``LOC_synset_mapping.txt``: ``<wnid> <name>, <synonym>...``), else torchvision's
    Imagenette table, else none (the label is its own name)."""
    names: dict[str, str] = {}
    for file_name in SYNSET_FILES:
        path = root / file_name
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                wnid, _, rest = line.strip().partition(" ")
                if wnid and rest:
                    names[wnid] = rest.split(",")[0].strip()
            break
    try:
        from torchvision.datasets import Imagenette

        table = getattr(Imagenette, "_WNID_TO_CLASS", {})
        for wnid, synonyms in table.items():
            names.setdefault(wnid, synonyms[0])
    except ImportError:  # pragma: no cover - torchvision is a study dependency
        pass
    return {c: names[c] for c in classes if c in names}


# --------------------------------------------------------------------------- faces




@dataclass(frozen=True)
class Condition:
    """What the model sees: the original images, one obfuscation method, or one of
    :data:`JPEG_CONDITIONS`."""

    name: str  # "original", a method name or a JPEG condition's name
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def method(self) -> str | None:
        """The obfuscation applied to faces (None: the pixels stay the original's)."""
        if self.name in JPEG_CONDITIONS:
            return JPEG_CONDITIONS[self.name]
        return None if self.name == ORIGINAL else self.name

    @property
    def resave_jpeg(self) -> bool:
        """Whether every image goes through Pillow's default JPEG save afterwards."""
        return self.name in JPEG_CONDITIONS

    @property
    def only_faces_change(self) -> bool:
        """Whether images without faces are the original's (their cache can be copied)."""
        return self.method is not None and not self.resave_jpeg

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "options": {k: _jsonable(v) for k, v in self.options}}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def make_condition(name: str, options: Mapping[str, Any] | None = None) -> Condition:
    if name != ORIGINAL and name not in STUDY_CONDITIONS:
        raise VeilError(f"unknown obfuscation method {name!r}; choose from"
                        f" {', '.join(STUDY_CONDITIONS)}")
    if name in JPEG_CONDITIONS and options:
        raise VeilError(f"{name} reproduces the authors' files exactly; it takes no options")
    return Condition(name, tuple(sorted((options or {}).items())))


def face_boxes(snapshot: FacesSnapshot) -> dict[str, list[Box]]:
    """Key -> usable boxes (degenerate boxes dropped, as every method does)."""
    return {key: usable_boxes(boxes)[0] for key, boxes in snapshot.boxes.items()}


def load_condition_image(path: str | os.PathLike[str] | bytes, key: str,
                         boxes: Mapping[str, Sequence[Box]], condition: Condition
                         ) -> Image.Image:
    """The image as the model's input starts: decoded (from its file, or its bytes),
    faces obfuscated at full size (and re-saved as JPEG for a JPEG condition)."""
    try:
        image = load_image(path).image
    except VeilError as exc:
        raise VeilError(f"{key}: {exc} (a study needs every image; remove or replace it)"
                        ) from None
    return condition_image(image, boxes.get(key) or [], condition)


def condition_image(image: Image.Image, boxes: Sequence[Box], condition: Condition
                    ) -> Image.Image:
    """A decoded image as ``condition`` shows it: faces obfuscated by its method, then,
    for a JPEG condition, re-saved the authors' way. (What a report's example images
    should call for any study condition, ``blur_q75`` and ``recompress_q75`` included.)"""
    if condition.method is not None and boxes:
        result = obfuscate(image, list(boxes), condition.method, **dict(condition.options))
        assert isinstance(result, Image.Image)
        image = result
    if condition.resave_jpeg:
        image = pillow_default_jpeg(image)
    return image


def union_area(boxes: Sequence[Box], width: int, height: int) -> float:
    """Area covered by the union of the boxes, clipped to the image (exact, by
    coordinate compression)."""
    rects = [b.clipped(width, height) for b in boxes]
    rects = [r for r in rects if r.x1 > r.x0 and r.y1 > r.y0]
    if not rects:
        return 0.0
    xs = sorted({v for r in rects for v in (r.x0, r.x1)})
    total = 0.0
    for left, right in itertools.pairwise(xs):
        spans = sorted((r.y0, r.y1) for r in rects if r.x0 <= left and r.x1 >= right)
        covered, end = 0.0, -math.inf
        for y0, y1 in spans:
            if y1 > end:
                covered += y1 - max(y0, end)
                end = y1
        total += covered * (right - left)
    return total


def _probe_size(path: Path, key: str | None = None, reader: ImageReader | None = None
                ) -> tuple[int, int]:
    try:
        info = probe(path if reader is None or key is None else read_source(reader, key))
        return info.width, info.height
    except VeilError:
        return 0, 0


def face_rows(data: StudyData, boxes: Mapping[str, Sequence[Box]], workers: int = 1
              ) -> list[dict[str, Any]]:
    """One row per train and val image for ``faces.parquet`` (sizes from the headers)."""
    rows: list[dict[str, Any]] = []
    for split in (data.train, data.val):
        size_of = partial(_probe_size, reader=split.reader)
        if workers > 1:
            with process_pool(workers) as pool:
                sizes = list(pool.map(size_of, split.paths, split.keys, chunksize=256))
        else:
            sizes = [size_of(p, k) for p, k in zip(split.paths, split.keys, strict=True)]
        for key, label, (width, height) in zip(split.keys, split.labels.tolist(), sizes,
                                               strict=True):
            found = list(boxes.get(key, ()))
            area = width * height
            rows.append({
                "key": key, "split": split.name, "label": int(label), "n_faces": len(found),
                "face_area": union_area(found, width, height) / area if area else 0.0,
                "width": width, "height": height,
            })
    return rows


# --------------------------------------------------------------------------- cache


def _cache_one(path: str | bytes, key: str, boxes: Mapping[str, Sequence[Box]],
               condition: Condition, size: int) -> np.ndarray:
    image = load_condition_image(path, key, boxes, condition)
    image = T.functional.center_crop(T.functional.resize(image, size), [size, size])
    return np.asarray(image, dtype=np.uint8)


def _cache_chunk(args: tuple[list[str], list[str], dict[str, list[Box]], Condition, int,
                              ImageReader | None]) -> np.ndarray:
    paths, keys, boxes, condition, size, reader = args
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, (path, key) in enumerate(zip(paths, keys, strict=True)):
        source: str | bytes = path if reader is None else read_source(reader, key)
        out[i] = _cache_one(source, key, boxes, condition, size)
    return out


def fill_in_order(out: np.ndarray, jobs: Sequence[Any],
                  work: Callable[[Any], np.ndarray], workers: int, bar: Any) -> None:
    """Write ``work(job)`` for each job into consecutive rows of ``out``, advancing ``bar``.

    Decoding is the slow part of building a pixel cache: with ``workers`` > 1 the jobs
    run in that many processes, their results still written in job order.
    """
    position = 0

    def write(parts: Iterable[np.ndarray]) -> None:
        nonlocal position
        for part in parts:
            out[position:position + len(part)] = part
            position += len(part)
            bar.update(len(part))

    if workers > 1 and len(jobs) > 1:
        with process_pool(workers) as pool:
            write(pool.map(work, jobs))
    else:
        write(map(work, jobs))


def decode_images(split: Split, indices: Sequence[int], boxes: Mapping[str, Sequence[Box]],
                  condition: Condition, size: int, *, workers: int = 1,
                  progress: bool = False) -> np.ndarray:
    """Images ``indices`` of ``split`` as uint8 NHWC squares of side ``size``."""
    from tqdm import tqdm

    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    chunk = 64
    jobs = []
    for start in range(0, len(indices), chunk):
        part = indices[start:start + chunk]
        keys = [split.keys[i] for i in part]
        jobs.append(([str(split.paths[i]) for i in part], keys,
                     {k: list(boxes[k]) for k in keys if boxes.get(k)}, condition, size,
                     split.reader))
    bar = tqdm(total=len(indices), desc=f"decode {split.name}/{condition.name}", unit="img",
               disable=not progress, dynamic_ncols=True, leave=False)
    with bar:
        fill_in_order(out, jobs, _cache_chunk, workers, bar)
    return out


def cache_path(cache_dir: Path, split: Split, condition: Condition, size: int,
               faces_fingerprint: str) -> Path:
    """A file name that changes whenever the cached pixels would."""
    ident = json.dumps([split.fingerprint(), condition.describe(), size,
                        faces_fingerprint if condition.method else ""], sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return cache_dir / f"{split.name}-{condition.name}-{size}px-{digest}.npy"


def load_or_build_cache(
    cache_dir: Path, split: Split, condition: Condition, size: int,
    boxes: Mapping[str, Sequence[Box]], faces_fingerprint: str, *,
    base: np.ndarray | None = None, workers: int = 1, progress: bool = False,
) -> np.ndarray:
    """The split's cache for ``condition``, from disk when it is there.

    ``base`` (the original condition's cache) lets an obfuscated cache decode only the
    images with faces and copy the rest. The file is written atomically; the result
    is a read-only memory map (ranks of one machine share its pages).
    """
    path = cache_path(cache_dir, split, condition, size, faces_fingerprint)
    if not path.exists():
        if base is not None and condition.only_faces_change:
            images = np.array(base, copy=True)
            todo = [i for i, key in enumerate(split.keys) if boxes.get(key)]
            if todo:
                images[todo] = decode_images(split, todo, boxes, condition, size,
                                             workers=workers, progress=progress)
        else:
            images = decode_images(split, list(range(len(split))), boxes, condition, size,
                                   workers=workers, progress=progress)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, images)
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- batches


_STATS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std x 255, made once per device (a fresh host-to-device copy
    every step would make the host wait for the GPU)."""
    if device not in _STATS:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        _STATS[device] = (mean.to(device), std.to(device))
    return _STATS[device]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or float 0..255 NCHW -> float32 normalised with ImageNet's mean and std."""
    mean, std = _mean_std(x.device)
    return (x.float() - mean) / std


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: pinned, non-blocking."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def crop_params(n: int, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float], generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomResizedCrop's (top, left, h, w) for ``n`` images at once.

    The same distribution as ``torchvision.transforms.RandomResizedCrop.get_params``:
    ten tries per image of an area share in ``scale`` and a log-uniform aspect ratio
    in ``ratio``, the first that fits wins, else the center crop of clamped ratio.
    """
    tries = 10
    area = height * width
    target = area * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                               generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.int(), dim=1)
    any_fit = fits.any(dim=1)
    rows = torch.arange(n)
    w, h = w[rows, first], h[rows, first]
    # Fallback: the whole image at a ratio clamped into range, centered.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    w = torch.where(any_fit, w, torch.full_like(w, fw))
    h = torch.where(any_fit, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, generator=generator)
    top = torch.where(any_fit, torch.floor(u[:, 0] * (height - h + 1)), (height - h) // 2)
    left = torch.where(any_fit, torch.floor(u[:, 1] * (width - w + 1)), (width - w) // 2)
    return top, left, h, w


def random_resized_crop_flip(x: torch.Tensor, size: int, *, scale: tuple[float, float],
                             generator: torch.Generator,
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop(size) + RandomHorizontalFlip on a whole NCHW batch, bilinear,
    as one ``grid_sample``; returns float32 0..255 (normalise afterwards)."""
    n, _, height, width = x.shape
    top, left, h, w = crop_params(n, height, width, scale, ratio, generator)
    flip = torch.rand(n, generator=generator) < 0.5
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = (w / width) * torch.where(flip, -1.0, 1.0)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    theta = to_device(theta, x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's CenterCrop offsets on an NCHW batch."""
    _, _, height, width = x.shape
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return x[:, :, top:top + size, left:left + size]


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # indices, uint8 NCHW, labels


#: Share of the device's free memory a cache may take to be uploaded whole.
RESIDENT_FRACTION = 0.4
#: Batches a loader thread prepares ahead of the training step.
PREFETCH_DEPTH = 3


def prefetch(produce: Callable[[], Iterator[Any]], depth: int = PREFETCH_DEPTH
             ) -> Iterator[Any]:
    """The items of ``produce()``, made by a background thread up to ``depth`` ahead, in
    order. An error in the thread is raised here; closing this iterator stops it."""
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        made = produce()
        try:
            for item in made:
                if not offer(item):
                    return
            offer(done)
        except BaseException as error:  # handed to the consumer, raised there
            offer(error)
        finally:
            close = getattr(made, "close", None)
            if close is not None:
                close()  # here, in the thread whose CUDA stream context it entered

    thread = threading.Thread(target=work, name="veil-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class CacheSource:
    """Batches gathered from a uint8 NHWC cache; augmentation runs on the device.

    ``device`` is where batches are wanted. On a CUDA device the batches arrive there
    (see the module docstring); ``resident`` forces (True) or forbids (False) the
    upload of the whole cache, None decides by :data:`RESIDENT_FRACTION`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, img_size: int,
                 min_crop_scale: float, *, device: torch.device | str | None = None,
                 resident: bool | None = None) -> None:
        self.images = images
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.img_size = img_size
        self.scale = (min_crop_scale, 1.0)
        self.device = torch.device(device or "cpu")
        self.resident = resident
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batches: Sequence[Sequence[int]], *, train: bool, seed: int
                ) -> Iterator[Batch]:
        if self.device.type == "cuda":
            yield from self._device_batches(batches)
            return
        for batch in batches:
            index = np.asarray(batch, dtype=np.int64)
            pixels = torch.from_numpy(np.ascontiguousarray(self.images[index]))
            yield torch.from_numpy(index), pixels.permute(0, 3, 1, 2), self.labels[index]

    @property
    def on_device(self) -> bool:
        """Whether the whole cache has been uploaded to the device."""
        return self._on_device is not None

    def fits_on_device(self) -> bool:
        """Whether the whole cache lives on the device (decided once, at first use)."""
        if self.resident is not None:
            return self.resident
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.images.nbytes <= RESIDENT_FRACTION * free

    def _device_batches(self, batches: Sequence[Sequence[int]]) -> Iterator[Batch]:
        if self._on_device is None and self.fits_on_device():
            self._on_device = (self._upload(), self.labels.to(self.device))
        if self._on_device is not None:
            images, labels = self._on_device
            for batch in batches:
                index = torch.as_tensor(batch, dtype=torch.int64)
                where = to_device(index, self.device)
                yield (index, images.index_select(0, where).permute(0, 3, 1, 2),
                       labels.index_select(0, where))
            return
        stream = torch.cuda.current_stream(self.device)
        for index, pixels, labels, ready in prefetch(lambda: self._copied(batches)):
            stream.wait_event(ready)  # the side stream's copy precedes this step's use
            pixels.record_stream(stream)
            labels.record_stream(stream)
            yield index, pixels.permute(0, 3, 1, 2), labels

    def _upload(self, chunk_bytes: int = 1 << 28) -> torch.Tensor:
        """The whole cache as a uint8 NHWC tensor on the device, copied in chunks."""
        out = torch.empty(self.images.shape, dtype=torch.uint8, device=self.device)
        per_chunk = max(1, chunk_bytes // max(1, int(np.prod(self.images.shape[1:]))))
        for start in range(0, len(self.images), per_chunk):
            part = torch.from_numpy(np.ascontiguousarray(self.images[start:start + per_chunk]))
            out[start:start + len(part)].copy_(part.pin_memory(), non_blocking=True)
        torch.cuda.synchronize(self.device)
        return out

    def _copied(self, batches: Sequence[Sequence[int]]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.cuda.Event]]:
        """(Loader thread.) Gather each batch into a pinned buffer, copy it to the device
        on a side stream; a buffer is reused only after its last copy finished."""
        side = torch.cuda.Stream(self.device)
        ring: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        with torch.cuda.device(self.device), torch.cuda.stream(side):
            for step, batch in enumerate(batches):
                index = np.asarray(batch, dtype=np.int64)
                shape = (len(index), *self.images.shape[1:])
                slot = step % (PREFETCH_DEPTH + 2)
                if slot == len(ring):
                    ring.append((torch.empty(shape, dtype=torch.uint8).pin_memory(), None))
                buffer, last_copy = ring[slot]
                if last_copy is not None:
                    last_copy.synchronize()
                if buffer.shape != shape:
                    buffer = torch.empty(shape, dtype=torch.uint8).pin_memory()
                np.take(self.images, index, axis=0, out=buffer.numpy(), mode="clip")  # unbuffered
                labels = self.labels[torch.from_numpy(index)].pin_memory()
                pixels = buffer.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(side)
                ring[slot] = (buffer, ready)
                yield torch.from_numpy(index), pixels, labels, ready

    def to_model_input(self, x: torch.Tensor, *, train: bool,
                       generator: torch.Generator | None) -> torch.Tensor:
        if train:
            assert generator is not None
            x = random_resized_crop_flip(x, self.img_size, scale=self.scale,
                                         generator=generator)
        else:
            x = center_crop(x, self.img_size)
        return normalize(x).contiguous(memory_format=torch.channels_last)


class _StreamDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, boxes: dict[str, list[Box]], condition: Condition,
                 transform: Any) -> None:
        self.split = split
        self.boxes = boxes
        self.condition = condition
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, int]:
        image = load_condition_image(self.split.source(index), self.split.keys[index],
                                     self.boxes, self.condition)
        return index, self.transform(image), int(self.split.labels[index])


class StreamSource:
    """The paper's data path: a DataLoader decodes and transforms every image each epoch
    (RandomResizedCrop + flip for training, Resize + CenterCrop for evaluation)."""

    def __init__(self, split: Split, boxes: Mapping[str, Sequence[Box]], condition: Condition,
                 *, img_size: int, eval_resize: int, min_crop_scale: float,
                 workers: int) -> None:
        keys = set(split.keys)
        faces = {k: list(v) for k, v in boxes.items() if v and k in keys}
        train_tf = T.Compose([
            T.RandomResizedCrop(img_size, scale=(min_crop_scale, 1.0), antialias=True),
            T.RandomHorizontalFlip(), T.PILToTensor(),
        ])
        eval_tf = T.Compose([T.Resize(eval_resize, antialias=True), T.CenterCrop(img_size),
                             T.PILToTensor()])
        self.train_set = _StreamDataset(split, faces, condition, train_tf)
        self.eval_set = _StreamDataset(split, faces, condition, eval_tf)
        self.labels = torch.from_numpy(split.labels)
        self.workers = workers

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batches: Sequence[Sequence[int]], *, train: bool, seed: int
                ) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            self.train_set if train else self.eval_set, batch_sampler=[list(b) for b in batches],
            num_workers=self.workers, generator=generator, pin_memory=torch.cuda.is_available(),
            multiprocessing_context=loader_context(self.workers),
        )
        yield from loader

    def to_model_input(self, x: torch.Tensor, *, train: bool,
                       generator: torch.Generator | None) -> torch.Tensor:
        return normalize(x).contiguous(memory_format=torch.channels_last)


Source = CacheSource | StreamSource
