"""The one dataset reader every stage uses: layouts, keys and labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from veil.datasets import open_dataset, read_labels_file
from veil.errors import DatasetError


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def test_ilsvrc_layout_with_class_folders(tmp_path: Path) -> None:
    _img(tmp_path / "train/n01440764/n01440764_1.JPEG")
    _img(tmp_path / "train/n02102040/n02102040_7.JPEG")
    _img(tmp_path / "val/n01440764/ILSVRC2012_val_00000293.JPEG")
    (tmp_path / "train/n01440764/notes.txt").write_text("not an image")
    _img(tmp_path / ".veil/ledger.png")  # hidden folders are never part of a dataset
    ds = open_dataset(tmp_path)
    assert ds.layout == "imagefolder"
    assert ds.keys() == [
        "train/n01440764/n01440764_1.JPEG",
        "train/n02102040/n02102040_7.JPEG",
        "val/n01440764/ILSVRC2012_val_00000293.JPEG",
    ]
    assert ds["train/n02102040/n02102040_7.JPEG"].label == "n02102040"
    assert ds.splits == ["train", "val"]
    assert ds.classes == ["n01440764", "n02102040"]
    val = ds.subset(split="val")
    assert val.keys() == ["val/n01440764/ILSVRC2012_val_00000293.JPEG"]
    with pytest.raises(DatasetError, match="no images in split 'test'"):
        ds.subset(split="test")


def test_flat_val_takes_labels_from_a_labels_file(tmp_path: Path) -> None:
    _img(tmp_path / "train/n01440764/a.JPEG")
    _img(tmp_path / "val/ILSVRC2012_val_00000001.JPEG")
    _img(tmp_path / "val/ILSVRC2012_val_00000002.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n01751748 111 222 333 444 n01751748 1 2 3 4\n"
        "ILSVRC2012_val_00000002,n09193705 5 6 7 8\n"
    )
    ds = open_dataset(tmp_path)
    assert ds["val/ILSVRC2012_val_00000001.JPEG"].label == "n01751748"
    assert ds["val/ILSVRC2012_val_00000002.JPEG"].label == "n09193705"
    plain = tmp_path / "labels.txt"
    plain.write_text("ILSVRC2012_val_00000001.JPEG n1\n# comment\nILSVRC2012_val_00000002 n2\n")
    relabelled = open_dataset(tmp_path, labels_file=plain)
    assert relabelled["val/ILSVRC2012_val_00000002.JPEG"].label == "n2"


def test_plain_folder_is_unlabelled_and_recursive(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    _img(tmp_path / "sub/deeper/b.jpg")
    _img(tmp_path / "café_ñ_日本.jpg")
    ds = open_dataset(tmp_path)
    assert ds.layout == "folder"
    assert ds.keys() == ["a.png", "café_ñ_日本.jpg", "sub/deeper/b.jpg"]
    assert all(e.label is None for e in ds)


def test_file_list_with_labels_and_root(tmp_path: Path) -> None:
    _img(tmp_path / "imgs/x.jpg")
    _img(tmp_path / "imgs/y.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text("imgs/x.jpg\tcat\n\nimgs/y.jpg\n")
    ds = open_dataset(listing)
    assert ds.layout == "list"
    assert [(e.key, e.label) for e in ds] == [("imgs/x.jpg", "cat"), ("imgs/y.jpg", None)]
    assert ds["imgs/x.jpg"].path == tmp_path / "imgs/x.jpg"
    outside = tmp_path / "lists" / "outside.txt"
    outside.parent.mkdir()
    outside.write_text("../imgs/x.jpg\n")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        open_dataset(outside)
    rooted = tmp_path / "lists" / "rooted.txt"
    rooted.write_text("imgs/x.jpg\n")  # with --root, paths are relative to the root
    assert open_dataset(rooted, root=tmp_path).keys() == ["imgs/x.jpg"]


def test_limit_spreads_over_classes(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        for i in range(5):
            _img(tmp_path / f"val/{cls}/{i}.jpg")
    ds = open_dataset(tmp_path).subset(limit=4)
    assert [e.label for e in ds] == ["a", "a", "b", "b"]


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset not found"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        open_dataset(tmp_path / "empty")
    bad = tmp_path / "labels.txt"
    bad.write_text("only-one-column\n")
    with pytest.raises(DatasetError, match=r"labels\.txt:1"):
        read_labels_file(bad)


def test_shared_imagenette_keys(shared: Path) -> None:
    ds = open_dataset(shared / "data" / "imagenette").subset(split="val")
    assert len(ds) == 3925
    assert len(ds.classes) == 10
    assert all(k.startswith("val/n") for k in ds.keys())
