"""veil study and the authors' key layout: ``val/<file>`` faces on an ImageFolder tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from study_data import make_dataset

from veil.boxes import Box
from veil.cli import main
from veil.errors import VeilError
from veil.faces import FacesSnapshot, match_faces
from veil.interchange import KeyResolver
from veil.study.ddp import DistEnv
from veil.study.run import Study, StudyConfig

TINY = {"epochs": 1, "img_size": 24, "batch_size": 8, "lr": 0.4}


def paper_keys(root: Path) -> Path:
    """The dataset's faces file rewritten as the authors release it: val flat."""
    records = json.loads((root / "faces.json").read_text(encoding="utf-8"))
    for record in records:
        if record["url"].startswith("val/"):
            record["url"] = "val/" + record["url"].rsplit("/", 1)[1]
    path = root / "faces_paper_keys.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_flat_val_faces_are_applied_to_an_imagefolder_val_split(dataset: Path,
                                                                tmp_path: Path) -> None:
    faces = paper_keys(dataset)
    study = Study(StudyConfig(data=dataset, faces=faces, out=tmp_path / "run",
                              methods=["blur"], archs=["resnet18"], overrides=TINY,
                              workers=1, log=lambda m: None), DistEnv())
    val = study.data.val
    with_faces = [i for i, k in enumerate(val.keys) if study.boxes.get(k)]
    assert len(with_faces) == 6, "every third val image of 15 has a face: 2 per class"
    # The evaluation data really differ where the faces are, and only for those images.
    original = np.asarray(study._cache(val, study.conditions["original"]))
    blurred = np.asarray(study._cache(val, study.conditions["blur"]))
    changed = {i for i in range(len(val)) if not np.array_equal(original[i], blurred[i])}
    assert changed == set(with_faces)
    assert study.face_matching["val"] == {"images": 15, "with_faces": 6, "face_records": 15,
                                          "matched": 15}
    assert study.face_matching["train"] == {"images": 24, "with_faces": 9,
                                            "face_records": 24, "matched": 24}


def test_study_json_records_face_matching_per_split(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "study", "--data", str(dataset), "--faces", str(paper_keys(dataset)),
        "--out", str(out), "--archs", "resnet18", "--epochs", "1", "--img-size", "24",
        "--batch-size", "8", "--workers", "1", "--threads", "1", "--methods", "blur"])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert document["face_matching"]["val"]["matched"] == 15
    assert document["face_matching"]["val"]["with_faces"] == 6


def test_a_split_whose_records_match_too_few_images_is_an_error(dataset: Path,
                                                                tmp_path: Path) -> None:
    records = json.loads((dataset / "faces.json").read_text(encoding="utf-8"))
    for record in records:  # val keyed under another root: nothing matches
        if record["url"].startswith("val/"):
            record["url"] = "elsewhere/" + record["url"]
    records = [r for r in records if not r["url"].startswith("elsewhere/")] + [
        {"url": "val/n001/n001_0.png", "bboxes": []}]  # 1 of 15 val images
    bad = tmp_path / "few.json"
    bad.write_text(json.dumps(records), encoding="utf-8")
    message = "val: 1 of 15 images matched one of the split's 1 face records"
    with pytest.raises(VeilError, match=message):
        Study(StudyConfig(data=dataset, faces=bad, out=tmp_path / "r", archs=["resnet18"],
                          overrides=TINY, log=lambda m: None), DistEnv())
    result = CliRunner().invoke(main, [
        "study", "--data", str(dataset), "--faces", str(bad), "--out", str(tmp_path / "r"),
        "--archs", "resnet18", "--epochs", "1", "--img-size", "24", "--plan"])
    assert result.exit_code != 0 and message in result.output  # VeilError: exit 2
    assert not (tmp_path / "r").exists()


def test_ambiguous_file_names_are_refused_with_the_candidates() -> None:
    snapshot = FacesSnapshot({"val/x.JPEG": [Box(0, 0, 4, 4)]}, "test faces")
    with pytest.raises(VeilError, match=r"val/x.JPEG.*could be any of 2 images.*val/a/x.JPEG"):
        match_faces(snapshot, ["val/a/x.JPEG", "val/b/x.JPEG"])


def test_two_records_for_one_image_are_refused() -> None:
    snapshot = FacesSnapshot({"val/x.JPEG": [], "val/a/x.JPEG": []}, "test faces")
    with pytest.raises(VeilError, match=r"both name the image val/a/x\.JPEG"):
        match_faces(snapshot, ["val/a/x.JPEG"])


def test_resolver_matches_by_split_and_file_name_then_stem() -> None:
    resolve = KeyResolver(["train/n01/a.JPEG", "val/n02/b.jpg"])
    assert resolve("train/a.JPEG") == "train/n01/a.JPEG"
    assert resolve("val/b.JPEG") == "val/n02/b.jpg", "the authors' .jpg on disk vs .JPEG keys"
    assert resolve("val/a.JPEG") is None, "another split's file does not match"


def test_a_split_with_records_that_match_no_image_is_an_error() -> None:
    snapshot = FacesSnapshot({"train/a/1.JPEG": [], "val/zzz.JPEG": []}, "test faces")
    with pytest.raises(VeilError, match=r"val: 0 of 1 images matched one of the split's 1"):
        match_faces(snapshot, ["train/a/1.JPEG", "val/b/2.JPEG"])
    ok = match_faces(snapshot, ["train/a/1.JPEG", "val/b/2.JPEG"], min_share=0.0,
                     splits=["train"])
    assert ok.to_json() == {"train": {"images": 1, "with_faces": 0, "face_records": 1,
                                      "matched": 1}}


def test_obfuscate_applies_flat_val_faces_to_an_imagefolder_tree(dataset: Path,
                                                                 tmp_path: Path) -> None:
    """The same resolver as the study: obfuscate's output blurs the val faces too."""
    out = tmp_path / "blurred"
    result = CliRunner().invoke(main, [
        "obfuscate", str(dataset), "--faces", str(paper_keys(dataset)), "--out",
        str(out), "--workers", "1", "--no-progress", "--format", "png"])
    assert result.exit_code == 0, result.output
    face, faceless = "val/n001/n001_0.png", "val/n001/n001_1.png"
    assert not np.array_equal(np.asarray(Image.open(out / face)),
                              np.asarray(Image.open(dataset / face)))
    assert np.array_equal(np.asarray(Image.open(out / faceless)),
                          np.asarray(Image.open(dataset / faceless)))


def test_the_torch_transform_finds_flat_val_faces_for_imagefolder_keys() -> None:
    from veil.transforms import Obfuscate

    transform = Obfuscate({"val/x.JPEG": [Box(2, 2, 14, 14)]}, "overlay")
    image = np.full((16, 16, 3), 200, np.uint8)
    assert not np.array_equal(transform(image, "val/n01/x.JPEG"), image)
    assert np.array_equal(transform(image, "val/n01/y.JPEG"), image)
    ambiguous = Obfuscate({"val/a/x.JPEG": [Box(2, 2, 14, 14)],
                           "val/b/x.JPEG": [Box(2, 2, 14, 14)]}, "overlay")
    with pytest.raises(VeilError, match=r"could be those of val/a/x\.JPEG"):
        ambiguous(image, "val/x.JPEG")
