"""Faces files: the paper's JSON, COCO and Parquet, to and from the face store and the CLI."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from veil.boxes import Box
from veil.cli.faces import dataset_keys
from veil.cli.faces import export_faces as export_cmd
from veil.cli.faces import import_faces as import_cmd
from veil.errors import FacesFileError, VeilError
from veil.interchange import (
    KeyResolver,
    export_faces,
    flat_val_key,
    import_faces,
    read_faces,
    write_faces,
)
from veil.store import ImageRecord, RunItem

# x0 + (x1 - x0) != x1 in floating point: COCO's [x, y, w, h] alone would lose the last bit.
INEXACT = (34.99966834278422, 746.4253574209)


def sample_faces(seed: int = 0) -> dict[str, list[Box]]:
    """ImageNet-like keys, floats with all their digits, a few faceless images."""
    rng = random.Random(seed)
    faces: dict[str, list[Box]] = {}
    for i in range(40):
        key = (f"train/n0144{i % 4:04d}/n0144{i % 4:04d}_{i}.JPEG" if i % 3
               else f"val/n0153{i % 5:04d}/ILSVRC2012_val_{i:08d}.JPEG")
        boxes = []
        for _ in range(i % 4):
            x0, y0 = rng.uniform(0, 300), rng.uniform(0, 300)
            boxes.append(Box(x0, y0, x0 + rng.uniform(1, 200), y0 + rng.uniform(1, 200)))
        faces[key] = boxes
    faces["train/n01440000/inexact.JPEG"] = [Box(INEXACT[0], 1 / 3, INEXACT[1], 2 / 3 + 5)]
    return faces


def with_flat_val(faces: dict[str, list[Box]]) -> dict[str, list[Box]]:
    return {flat_val_key(k): v for k, v in faces.items()}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


# -- paper format --------------------------------------------------------------------------------


def test_paper_round_trip_is_byte_identical(tmp_path):
    faces = sample_faces()
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert write_faces(faces, first, "paper") == len(faces)
    back = read_faces(first)
    assert back.format == "paper" and back.warnings == []
    assert dict(back) == with_flat_val(faces)
    assert any(v == [] for v in back.values()), "faceless images are kept"
    write_faces(back, second, "paper")
    assert first.read_bytes() == second.read_bytes()


def test_paper_layout_matches_the_released_file(tmp_path):
    path = tmp_path / "faces.json"
    write_faces({"val/n01/ILSVRC2012_val_00000002.JPEG": [Box(1, 2, 3.5, 4, 0.9, "x")],
                 "train/n01/b.JPEG": []}, path)
    text = path.read_text()
    assert text == (
        '[\n{"url": "train/n01/b.JPEG", "bboxes": []},\n'
        '{"url": "val/ILSVRC2012_val_00000002.JPEG", "bboxes": '
        '[{"x0": 1.0, "y0": 2.0, "x1": 3.5, "y1": 4.0}]}\n]\n'
    )
    assert json.loads(text)[1]["bboxes"][0] == {"x0": 1.0, "y0": 2.0, "x1": 3.5, "y1": 4.0}


def test_val_folders_flatten_by_default_and_can_be_kept(tmp_path):
    faces = {"val/n02/ILSVRC2012_val_00000001.JPEG": [Box(1, 1, 2, 2)],
             "val/ILSVRC2012_val_00000003.JPEG": []}
    write_faces(faces, tmp_path / "flat.json")
    assert set(read_faces(tmp_path / "flat.json")) == {"val/ILSVRC2012_val_00000001.JPEG",
                                                       "val/ILSVRC2012_val_00000003.JPEG"}
    write_faces(faces, tmp_path / "kept.json", flatten_val=False)
    assert set(read_faces(tmp_path / "kept.json")) == set(faces)
    clash = {"val/a/x.JPEG": [], "val/b/x.JPEG": []}
    with pytest.raises(FacesFileError, match="keep the folders"):
        write_faces(clash, tmp_path / "clash.json")
    assert not (tmp_path / "clash.json").exists()


def test_degenerate_and_nan_boxes_are_skipped_with_warnings(tmp_path):
    path = tmp_path / "faces.json"
    path.write_text(
        '[{"url": "a.jpg", "bboxes": [{"x0": 1, "y0": 1, "x1": 5, "y1": 5},'
        ' {"x0": 5, "y0": 1, "x1": 5, "y1": 9}, {"x0": NaN, "y0": 1, "x1": 5, "y1": 9}]},'
        ' {"url": "b.jpg", "bboxes": [{"x0": 1, "y0": 9, "x1": 5, "y1": 2}]}]'
    )
    faces = read_faces(path)
    assert faces["a.jpg"] == [Box(1.0, 1.0, 5.0, 5.0)]
    assert faces["b.jpg"] == [], "an image whose only box is degenerate stays, faceless"
    assert len(faces.warnings) == 3
    assert sum(w.startswith("a.jpg:") for w in faces.warnings) == 2
    assert any(w.startswith("b.jpg:") and "degenerate" in w for w in faces.warnings)
    assert any("non-finite" in w for w in faces.warnings)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"url": "a.jpg", "bboxes": []},\n {"url": "b.jpg" "bboxes": []}]',
         "not valid JSON at line 2 column"),
        ("", "not valid JSON at line 1 column 1"),
        ('{"url": "a.jpg"}', "expected a COCO object"),
        ('[{"url": "a.jpg", "bboxes": []}, 7]', "entry 1: expected an object"),
        ('[{"bboxes": []}]', 'entry 0: missing or empty "url"'),
        ('[{"url": "a.jpg", "bboxes": {}}]', 'entry 0 \\(a.jpg\\): "bboxes" must be a list'),
        ('[{"url": "a.jpg", "bboxes": []}, {"url": "b.jpg", "bboxes": [{"x0": 1, "y0": 1}]}]',
         "entry 1 \\(b.jpg\\) box 0: missing x1, y1"),
        ('[{"url": "a.jpg", "bboxes": [{"x0": "1", "y0": 1, "x1": 2, "y1": 2}]}]',
         "entry 0 \\(a.jpg\\) box 0 x0: expected a number, found '1'"),
        ('[{"url": "a.jpg", "bboxes": [{"x0": true, "y0": 1, "x1": 2, "y1": 2}]}]',
         "expected a number"),
    ],
)
def test_malformed_files_say_where(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FacesFileError, match=message) as info:
        read_faces(path)
    assert str(path) in str(info.value)


def test_explicit_format_mismatch_is_an_error(tmp_path):
    path = write_json(tmp_path / "f.json", [{"url": "a.jpg", "bboxes": []}])
    with pytest.raises(FacesFileError, match="COCO"):
        read_faces(path, "coco")
    with pytest.raises(FacesFileError, match="Parquet"):
        read_faces(path, "parquet")


def test_wider_faces_json_keeps_its_extra_flags(wider):
    faces = read_faces(wider / "faces.json")
    assert len(faces) == 97 and sum(len(b) for b in faces.values()) == 2042
    key = "images/0_Parade_Parade_0_102.jpg"
    extras = faces.extras(key)
    assert len(extras) == len(faces[key])
    assert set(extras[0]) == {"blur", "occlusion", "pose", "invalid"}
    assert faces.image_extras[key] == {"event": "0--Parade"}
    invalid = sum(e["invalid"] for k in faces for e in faces.extras(k))
    assert 0 < invalid < 2042


def test_duplicate_urls_merge_boxes_with_a_warning(tmp_path):
    path = write_json(tmp_path / "f.json", [
        {"url": "a.jpg", "bboxes": [{"x0": 1, "y0": 1, "x1": 2, "y1": 2}]},
        {"url": "a.jpg", "bboxes": [{"x0": 3, "y0": 3, "x1": 4, "y1": 4}]},
    ])
    faces = read_faces(path)
    assert len(faces["a.jpg"]) == 2
    assert any("more than once" in w for w in faces.warnings)


# -- COCO ----------------------------------------------------------------------------------------


def test_coco_round_trip_is_exact(tmp_path):
    faces = sample_faces(1)
    faces["train/n01440000/scored.JPEG"] = [Box(1.25, 2.5, 3.75, 5.0, 0.875, "centerface")]
    images = {k: ImageRecord(k, 500, 375) for k in list(faces)[::2]}
    path = tmp_path / "faces.coco.json"
    assert write_faces(faces, path, "coco", images=images, flatten_val=True) == len(faces)
    back = read_faces(path)
    assert back.format == "coco" and back.warnings == []
    assert dict(back) == faces, "coco keeps keys exactly and loses no bit"
    assert back.images[list(faces)[1]].width is None, "unknown sizes stay unknown"
    first = next(iter(images))
    assert (back.images[first].width, back.images[first].height) == (500, 375)

    doc = json.loads(path.read_text())
    inexact = next(a for a in doc["annotations"] if a["xyxy"][0] == INEXACT[0])
    assert inexact["bbox"][0] + inexact["bbox"][2] != INEXACT[1], "the case xyxy exists for"
    assert doc["categories"] == [{"id": 1, "name": "face", "supercategory": "face"}]
    ann = next(a for a in doc["annotations"] if a.get("score") == 0.875)
    assert ann["bbox"] == [1.25, 2.5, 2.5, 2.5] and ann["area"] == 6.25
    assert ann["iscrowd"] == 0 and ann["source"] == "centerface"


def test_foreign_coco_file_converts_and_ignores_other_categories(tmp_path):
    path = write_json(tmp_path / "c.json", {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80, "flickr": "u"},
                   {"id": 8, "file_name": "b.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "Face"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 20, 30, 40], "iscrowd": 1,
             "attributes": {"occluded": True}},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50]},
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [5, 5, 0, 3]},
        ],
    })
    faces = read_faces(path)
    assert faces["a.jpg"] == [Box(10.0, 20.0, 40.0, 60.0)]
    assert faces["b.jpg"] == []
    assert faces.extras("a.jpg") == [{"iscrowd": 1, "attributes": {"occluded": True}}]
    assert faces.image_extras["a.jpg"] == {"flickr": "u"}
    assert any("1 annotations of other categories" in w for w in faces.warnings)
    assert any(w.startswith("a.jpg:") and "degenerate" in w for w in faces.warnings)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"images": [{"id": 1, "file_name": "a.jpg"}],
          "annotations": [{"id": 5, "image_id": 2, "bbox": [1, 1, 1, 1]}]},
         "annotations\\[0\\] \\(id 5\\): unknown image_id 2"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}],
          "annotations": [{"image_id": 1, "bbox": [1, 1, 1]}]},
         "annotations\\[0\\] of a.jpg: \"bbox\" must be"),
        ({"images": [{"id": 1}]}, 'images\\[0\\]: missing or empty "file_name"'),
        ({"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}]},
         "duplicate image id"),
        ({"images": [], "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]},
         "no category named"),
    ],
)
def test_malformed_coco_says_where(tmp_path, doc, message):
    with pytest.raises(FacesFileError, match=message):
        read_faces(write_json(tmp_path / "c.json", doc))


# -- Parquet -------------------------------------------------------------------------------------


def test_parquet_round_trip_is_lossless(tmp_path):
    faces = sample_faces(2)
    faces["train/n01440000/scored.JPEG"] = [Box(1.25, 2.5, 3.75, 5.0, 0.1 + 0.2, "human:ann")]
    images = {k: ImageRecord(k, 640, 480, label=k.split("/")[1]) for k in faces}
    path = tmp_path / "faces.parquet"
    assert write_faces(faces, path, images=images) == len(faces)  # auto: by suffix
    back = read_faces(path)
    assert back.format == "parquet" and back.warnings == []
    assert dict(back) == faces
    assert back.images == images
    table = pq.read_table(path)
    assert table.column_names == ["key", "width", "height", "label", "boxes"]
    assert table.num_rows == len(faces)
    again = tmp_path / "again.parquet"
    write_faces(back, again, "parquet", images=back.images)
    assert pq.read_table(again).equals(table)


def test_parquet_from_other_tools_keeps_extras_and_checks_schema(tmp_path):
    box_type = pa.struct([("x0", pa.float64()), ("y0", pa.float64()), ("x1", pa.float64()),
                          ("y1", pa.float64()), ("invalid", pa.bool_())])
    table = pa.table({
        "key": ["a.jpg", "b.jpg"],
        "boxes": pa.array([[{"x0": 1, "y0": 1, "x1": 3, "y1": 3, "invalid": True},
                            {"x0": None, "y0": 1, "x1": 3, "y1": 3, "invalid": False}], []],
                          type=pa.list_(box_type)),
        "event": ["parade", None],
    })
    path = tmp_path / "other.pq"
    pq.write_table(table, path)
    faces = read_faces(path)
    assert faces["a.jpg"] == [Box(1.0, 1.0, 3.0, 3.0)] and faces["b.jpg"] == []
    assert faces.extras("a.jpg") == [{"invalid": True}]
    assert faces.image_extras == {"a.jpg": {"event": "parade"}}
    assert len(faces.warnings) == 1 and "a.jpg" in faces.warnings[0]

    pq.write_table(pa.table({"key": ["a"], "faces": [1]}), tmp_path / "wrong.parquet")
    with pytest.raises(FacesFileError, match='columns "key" and "boxes"'):
        read_faces(tmp_path / "wrong.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(FacesFileError, match="not a readable Parquet file"):
        read_faces(tmp_path / "junk.parquet")


# -- key resolution ------------------------------------------------------------------------------


def test_key_resolver_matches_val_by_file_name():
    known = ["train/n01/a.JPEG", "val/n02/ILSVRC2012_val_00000001.JPEG",
             "val/n03/dup.JPEG", "val/n04/dup.JPEG", "val/ILSVRC2012_val_00000009.JPEG"]
    resolve = KeyResolver(known)
    assert resolve("train/n01/a.JPEG") == "train/n01/a.JPEG"
    assert resolve("val/ILSVRC2012_val_00000001.JPEG") == "val/n02/ILSVRC2012_val_00000001.JPEG"
    assert resolve("val/n99/ILSVRC2012_val_00000009.JPEG") == "val/ILSVRC2012_val_00000009.JPEG"
    assert resolve("val/dup.JPEG") is None, "ambiguous file names do not resolve"
    assert resolve("train/a.JPEG") == "train/n01/a.JPEG", "train matches by file name too"
    assert resolve("train/val/a.JPEG") == "train/n01/a.JPEG"
    assert resolve("test/a.JPEG") is None, "only within the same split"
    assert resolve("val/missing.JPEG") is None


# -- store import / export -----------------------------------------------------------------------


def test_import_creates_reviews_and_export_round_trips(store, tmp_path):
    faces = sample_faces(3)
    source = tmp_path / "in.json"
    write_faces(faces, source, flatten_val=False)
    report = import_faces(store, source)
    assert report.images == len(faces) and report.unknown == 0
    assert report.boxes == sum(len(b) for b in faces.values())
    assert report.faceless == sum(not b for b in faces.values())

    run = store.run(report.run_id)
    assert run.kind == "import" and run.status == "done"
    assert run.config["file"] == "in.json"
    assert run.config["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    (review,) = store.reviews("train/n01440000/inexact.JPEG")
    assert review.kind == "import" and review.annotator == "import:in.json"
    assert review.run_id == report.run_id

    out1, out2 = tmp_path / "out1.json", tmp_path / "out2.json"
    assert export_faces(store, out1, "paper", flatten_val=False) == len(faces)
    assert out1.read_bytes() == source.read_bytes()
    import_faces(store, out1, annotator="again")
    export_faces(store, out2, "paper", flatten_val=False)
    assert out2.read_bytes() == out1.read_bytes()


def test_import_resolves_val_keys_and_reports_unknown_ones(store, tmp_path):
    known = ["train/n01/a.JPEG", "val/n02/ILSVRC2012_val_00000001.JPEG"]
    path = write_json(tmp_path / "f.json", [
        {"url": "train/n01/a.JPEG", "bboxes": [{"x0": 1, "y0": 1, "x1": 2, "y1": 2}]},
        {"url": "val/ILSVRC2012_val_00000001.JPEG", "bboxes": []},
        {"url": "train/n01/ghost.JPEG", "bboxes": []},
    ])
    report = import_faces(store, path, known_keys=known, annotator="paper")
    assert (report.images, report.remapped, report.unknown) == (2, 1, 1)
    assert report.unknown_examples == ["train/n01/ghost.JPEG"]
    assert store.current_boxes() == {
        "train/n01/a.JPEG": [Box(1.0, 1.0, 2.0, 2.0, None, "human:paper")],
        "val/n02/ILSVRC2012_val_00000001.JPEG": [],
    }
    assert "ghost" in " ".join(report.lines())
    with pytest.raises(VeilError, match="none of the 3 keys"):
        import_faces(store, path, known_keys=["elsewhere/x.jpg"])


def test_import_as_detections_is_a_detection_run_that_reviews_override(store, tmp_path):
    store.register_images([ImageRecord("a.jpg", 50, 40)])
    coco = write_json(tmp_path / "pred.json", {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40},
                   {"id": 2, "file_name": "b.jpg", "width": 60, "height": 30}],
        "categories": [{"id": 1, "name": "face"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4],
                         "score": 0.75}],
    })
    report = import_faces(store, coco, as_detections=True)
    run = store.run(report.run_id)
    assert run.kind == "detect" and run.status == "done" and run.config["as_detections"]
    assert store.detections(report.run_id) == {
        "a.jpg": [Box(1.0, 2.0, 4.0, 6.0, 0.75, "import:pred.json")], "b.jpg": [],
    }
    assert store.run_items(report.run_id) == [RunItem("a.jpg"), RunItem("b.jpg")]
    assert store.image("b.jpg") == ImageRecord("b.jpg", 60, 30)
    assert store.reviews("a.jpg") == []

    human = write_json(tmp_path / "human.json", [{"url": "a.jpg", "bboxes": []}])
    import_faces(store, human)
    assert store.current_boxes()["a.jpg"] == []


def test_export_leaves_out_images_never_processed(store, tmp_path):
    store.register_images([ImageRecord("seen.jpg", 10, 10, label="n1"),
                           ImageRecord("unseen.jpg", 10, 10)])
    run_id = store.start_run("detect", {}, [["seen.jpg"]])
    store.complete_shard(run_id, 0, items=[RunItem("seen.jpg")])
    store.finish_run(run_id)
    for fmt in ("paper", "coco", "parquet"):
        path = tmp_path / f"out.{fmt}"
        assert export_faces(store, path, fmt) == 1
        assert dict(read_faces(path)) == {"seen.jpg": []}
    assert read_faces(tmp_path / "out.parquet").images["seen.jpg"].label == "n1"
    assert export_faces(store, tmp_path / "k.json", "paper", keys=["unseen.jpg"]) == 0


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_help_describes_every_option():
    runner = CliRunner()
    text = runner.invoke(import_cmd, ["--help"]).output
    for flag in ("--store", "--format", "--dataset", "--annotator", "--as-detections"):
        assert flag in text
    text = runner.invoke(export_cmd, ["--help"]).output
    for flag in ("--store", "--format", "--out", "--keep-val-folders"):
        assert flag in text
    assert import_cmd.name == "import-faces" and export_cmd.name == "export-faces"


def test_cli_import_then_export(store_url, tmp_path):
    dataset = tmp_path / "data"
    for key in ("train/n01/a.JPEG", "val/n02/ILSVRC2012_val_00000001.JPEG", ".hidden/x.jpg",
                "train/n01/notes.txt"):
        (dataset / key).parent.mkdir(parents=True, exist_ok=True)
        (dataset / key).write_bytes(b"")
    assert dataset_keys(dataset) == ["train/n01/a.JPEG", "val/n02/ILSVRC2012_val_00000001.JPEG"]
    source = write_json(tmp_path / "faces.json", [
        {"url": "train/n01/a.JPEG", "bboxes": [{"x0": 1, "y0": 1, "x1": 2, "y1": 2}]},
        {"url": "val/ILSVRC2012_val_00000001.JPEG", "bboxes": []},
        {"url": "train/n01/ghost.JPEG", "bboxes": [{"x0": 5, "y0": 1, "x1": 2, "y1": 2}]},
    ])
    runner = CliRunner()
    result = runner.invoke(import_cmd, [str(source), "--store", store_url,
                                        "--dataset", str(dataset)])
    assert result.exit_code == 0, result.output
    assert "imported 2 images" in result.output
    assert "1 keys are not in the dataset" in result.output
    assert "1 warnings" in result.output and "ghost" in result.output

    out = tmp_path / "out.json"
    result = runner.invoke(export_cmd, ["--store", store_url, "--format", "paper", "--out",
                                        str(out), "--keep-val-folders"])
    assert result.exit_code == 0, result.output
    assert [e["url"] for e in json.loads(out.read_text())] == [
        "train/n01/a.JPEG", "val/n02/ILSVRC2012_val_00000001.JPEG",
    ]
    result = runner.invoke(export_cmd, ["--store", store_url, "--format", "parquet", "--out",
                                        str(tmp_path / "out.parquet")])
    assert result.exit_code == 0, result.output
    assert len(read_faces(tmp_path / "out.parquet")) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "{bad", "--store", "{store}"], "not valid JSON at line 1"),
        (["import", '[{"url": "a", "bboxes": 3}]', "--store", "{store}"], '"bboxes" must be'),
        (["import", "[]", "--store", "{store}", "--as-detections", "--annotator", "x"],
         "does not apply"),
        (["export", "--store", "{missing}", "--format", "paper", "--out", "{out}"],
         "no face store"),
        (["export", "--store", "postgresql+psycopg://u:pw@127.0.0.1:1/x", "--format", "coco",
          "--out", "{out}"], "cannot open face store"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    values = {"{store}": str(tmp_path / "s.sqlite"), "{missing}": str(tmp_path / "no.sqlite"),
              "{out}": str(tmp_path / "o.json")}
    command, *rest = args
    if command == "import":
        (tmp_path / "in.json").write_text(rest[0])
        rest[0] = str(tmp_path / "in.json")
    rest = [values.get(a, a) for a in rest]
    result = CliRunner().invoke(import_cmd if command == "import" else export_cmd, rest)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, KeyError)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1
    assert ":pw@" not in result.output
