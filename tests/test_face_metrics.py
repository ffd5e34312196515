"""Face metrics against hand-computed cases, and ``veil eval-faces`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from veil.boxes import Box
from veil.cli.eval_faces import eval_faces
from veil.evaluation import (
    average_precision,
    covered_fraction,
    evaluate_faces,
    invalid_flags,
    union_area,
)


def box(x0: float, y0: float, x1: float, y1: float, score: float | None = None) -> Box:
    return Box(x0, y0, x1, y1, score=score)


F1 = box(0, 0, 20, 20)  # 20 px tall: must-find
F2 = box(100, 0, 120, 20)


# --- one-to-one matching ----------------------------------------------------------------------

def test_a_duplicate_counts_for_precision_but_is_a_false_positive_for_ap():
    # Ranked: A on F1 (TP), B on F1 again (duplicate: FP), C on F2 (TP).
    # PR points: (R .5, P 1), (R .5, P .5), (R 1, P 2/3) -> AP = .5 * 1 + .5 * 2/3.
    pred = [box(0, 0, 20, 20, 0.9), box(1, 1, 21, 21, 0.8), box(100, 0, 120, 20, 0.7)]
    result = evaluate_faces({"a": [F1, F2]}, {"a": pred})
    m = result.overall
    assert (m.must_find, m.found, m.detections, m.precise) == (2, 2, 3, 3)
    assert m.recall == 1.0 and m.precision == 1.0
    assert m.ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_each_detection_takes_the_best_face_still_free():
    # det1 overlaps F2 most (IoU .905) and takes it; det2 sits exactly on F2, which is
    # taken, but overlaps F1 at IoU .667 and takes that one: both faces are found.
    f1, f2 = box(0, 0, 20, 20), box(4, 0, 24, 20)
    pred = [box(3, 0, 23, 20, 0.9), box(4, 0, 24, 20, 0.8)]
    m = evaluate_faces({"a": [f1, f2]}, {"a": pred}).overall
    assert (m.found, m.ap) == (2, 1.0)


def test_a_box_below_the_iou_threshold_is_a_miss_and_a_false_positive():
    # IoU of [5, 0, 25, 20] with F1 = 15 * 20 / (800 - 300) = 0.6; of [10, 0, 30, 20] = 1/3.
    assert evaluate_faces({"a": [F1]}, {"a": [box(5, 0, 25, 20, 0.9)]}).overall.found == 1
    m = evaluate_faces({"a": [F1]}, {"a": [box(10, 0, 30, 20, 0.9)]}).overall
    assert (m.found, m.precise, m.ap) == (0, 0, 0.0)
    assert evaluate_faces({"a": [F1]}, {"a": [box(10, 0, 30, 20, 0.9)]},
                          iou=0.3).overall.found == 1


# --- ignored faces ----------------------------------------------------------------------------

TINY = box(50, 50, 60, 60)  # 10 px tall: ignored at min_height 16
INVALID = box(200, 200, 230, 230)  # 30 px, flagged invalid


def test_matching_an_ignored_face_is_no_false_positive_and_missing_one_no_miss():
    gt = {"a": [F1, TINY, INVALID]}
    invalid = {"a": [False, False, True]}
    pred = [box(50, 50, 60, 60, 0.95), box(200, 200, 230, 230, 0.9),
            box(300, 300, 320, 320, 0.8), box(0, 0, 20, 20, 0.7)]
    m = evaluate_faces(gt, {"a": pred}, invalid=invalid).overall
    assert (m.must_find, m.found) == (1, 1)
    assert (m.detections, m.precise) == (4, 3)  # precision: ignored faces count as matches
    # AP ranks only the FP (.8) and the TP (.7): one point (R 1, P .5).
    assert m.ap == pytest.approx(0.5)
    unmatched = evaluate_faces(gt, {"a": [box(0, 0, 20, 20, 0.7)]}, invalid=invalid).overall
    assert (unmatched.recall, unmatched.precision, unmatched.ap) == (1.0, 1.0, 1.0)


def test_min_height_decides_what_must_be_found():
    gt = {"a": [F1, TINY]}
    pred = [box(50, 50, 60, 60, 0.95), box(300, 300, 320, 320, 0.8), box(0, 0, 20, 20, 0.7)]
    m = evaluate_faces(gt, {"a": pred}, min_height=5).overall
    # Ranked T (R .5 P 1), F (R .5 P 1/2), T (R 1 P 2/3) -> AP = .5 + .5 * 2/3.
    assert (m.must_find, m.found) == (2, 2)
    assert m.ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_invalid_flags_come_from_wider_extras():
    extras = {"a": [{"invalid": 1, "blur": 2}, {"invalid": 0}], "b": []}
    assert invalid_flags(extras) == {"a": [True, False], "b": []}
    assert invalid_flags({"a": [{"blur": 1}]}) is None
    with pytest.raises(ValueError, match="invalid flags"):
        evaluate_faces({"a": [F1]}, {}, invalid={"a": [True, False]})


# --- coverage ---------------------------------------------------------------------------------

def test_union_area_is_exact():
    rects = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [10, 10, 11, 11], [5, 5, 5, 9]], float)
    assert union_area(rects) == 4 + 4 - 1 + 1  # the empty one adds nothing
    assert union_area(np.empty((0, 4))) == 0.0
    # [0,0,6,10] and [4,0,10,5] cover 60 + 4 * 5 = 80 of the 10 x 10 face.
    assert covered_fraction(box(0, 0, 10, 10), [box(0, 0, 6, 10), box(4, 0, 10, 5)]) == 0.8


def test_union_area_matches_a_pixel_count_on_random_integer_rectangles():
    rng = np.random.default_rng(1)
    corners = rng.integers(0, 40, (25, 2))
    rects = np.hstack([corners, corners + rng.integers(1, 15, (25, 2))]).astype(float)
    grid = np.zeros((60, 60), bool)
    for x0, y0, x1, y1 in rects.astype(int):
        grid[y0:y1, x0:x1] = True
    assert union_area(rects) == grid.sum()


def test_two_half_boxes_cover_a_face_that_neither_matches():
    # Each box has IoU 200 / 500 = 0.4 with the face: no match, but together they cover it.
    halves = [box(-5, 0, 10, 20, 0.9), box(10, 0, 25, 20, 0.8)]
    result = evaluate_faces({"a": [F1]}, {"a": halves})
    assert result.overall.found == 0 and result.overall.covered == 1
    assert result.uncovered == []
    one = evaluate_faces({"a": [F1]}, {"a": halves[:1]})  # half the face: uncovered
    assert one.overall.covered == 0
    [image] = one.uncovered
    assert image.key == "a" and image.coverage == (0.5,) and image.uncovered == (F1,)


def test_coverage_threshold_is_inclusive():
    seventy = [box(0, 0, 14, 20)]  # 14 x 20 of 20 x 20 = exactly 0.7
    assert evaluate_faces({"a": [F1]}, {"a": seventy}).overall.covered == 1
    assert evaluate_faces({"a": [F1]}, {"a": seventy}, coverage=0.71).overall.covered == 0


# --- images -----------------------------------------------------------------------------------

def test_an_image_without_faces_turns_its_detections_into_false_positives():
    result = evaluate_faces({"a": [F1], "b": []},
                            {"a": [box(0, 0, 20, 20, 0.9)], "b": [box(5, 5, 30, 30, 0.8)]})
    m = result.overall
    assert (m.recall, m.precision) == (1.0, 0.5)
    assert m.ap == 1.0  # the FP ranks below the only TP
    assert result.uncovered == []


def test_a_gt_image_missing_from_pred_is_all_misses():
    gt = {"a": [F1], "b": [F1, F2]}
    result = evaluate_faces(gt, {"a": [box(0, 0, 20, 20, 0.9)], "z": [F1]})
    assert result.overall.recall == pytest.approx(1 / 3)
    assert result.overall.ap == pytest.approx(1 / 3)
    assert result.missing_predictions == ["b"] and result.unknown_predictions == 1
    assert [(u.key, len(u.uncovered)) for u in result.uncovered] == [("b", 2)]


def test_tied_scores_give_one_curve_point_whatever_the_order():
    # A TP in one image and an FP in another at the same score: one point (R .5, P .5).
    gt = {"a": [F1], "b": [F1]}
    pred = {"a": [box(0, 0, 20, 20, 0.5)], "b": [box(60, 60, 80, 80, 0.5)]}
    assert evaluate_faces(gt, pred).overall.ap == pytest.approx(0.25)
    reordered = {"b": pred["b"], "a": pred["a"]}
    assert evaluate_faces({"b": [F1], "a": [F1]}, reordered).overall.ap == pytest.approx(0.25)
    labels = np.array([1, 0, 1]), np.array([0, 1, 1])  # same scores, labels in either order
    scores = np.array([0.5, 0.5, 0.4])
    assert average_precision(scores, labels[0], 2) == average_precision(scores, labels[1], 2)


def test_min_score_and_unscored_boxes():
    pred = {"a": [box(0, 0, 20, 20, 0.3), box(100, 0, 120, 20)]}
    assert evaluate_faces({"a": [F1, F2]}, pred, min_score=0.5).overall.found == 1  # None kept
    assert evaluate_faces({"a": [F1, F2]}, pred).overall.found == 2


def test_height_bins_split_faces_and_keep_other_sizes_out():
    faces = [box(0, 0, 10, 10), box(50, 0, 70, 20), box(100, 0, 140, 40), box(200, 0, 280, 80)]
    pred = [box(0, 0, 10, 10, 0.9), box(100, 0, 140, 40, 0.8),
            box(300, 300, 340, 340, 0.7)]  # an unmatched 40 px box: a 32-64 false positive
    result = evaluate_faces({"a": faces}, {"a": pred})
    bins = result.bins
    assert [bins[k].must_find for k in ("<16", "16-32", "32-64", "64+")] == [1, 1, 1, 1]
    assert [bins[k].found for k in ("<16", "16-32", "32-64", "64+")] == [1, 0, 1, 0]
    assert bins["32-64"].detections == 2 and bins["32-64"].precision == 0.5
    assert bins["16-32"].detections == 0 and math.isnan(bins["16-32"].precision)
    assert bins["32-64"].ap == pytest.approx(1.0)
    overall = result.overall
    assert (overall.must_find, overall.found, overall.detections) == (3, 1, 3)


def test_json_output_is_standard_even_when_rates_are_undefined():
    result = evaluate_faces({"a": []}, {"a": []})
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["overall"]["recall"] is None and data["overall"]["ap"] is None


# --- coverage under an obfuscation method's region --------------------------------------------

def test_region_coverage_counts_a_face_the_blur_hides_but_the_box_does_not_cover():
    from veil.obfuscation import affected_region

    face = box(10, 10, 50, 50)
    short = box(10, 10, 50, 36, score=0.9)  # 65% of the face: not covered by the box
    result = evaluate_faces({"a": [face]}, {"a": [short]}, method="blur",
                            sizes={"a": (200, 200)})
    assert result.overall.coverage_recall == 0.0
    assert result.overall.region_coverage_recall == 1.0
    assert result.uncovered == []  # the list follows the method once one is given
    # The region is the obfuscation's own (no copy): the same rectangles give the same share.
    rects = affected_region((200, 200), [short], "blur")
    assert covered_fraction(face, [Box(*map(float, r)) for r in rects]) == 1.0
    # overlay without enlargement changes exactly the box's pixels: no more than the box.
    plain = evaluate_faces({"a": [face]}, {"a": [short]}, method="overlay",
                           sizes={"a": (200, 200)})
    assert plain.overall.region_coverage_recall == 0.0
    assert plain.uncovered[0].coverage == (pytest.approx(0.65),)


def test_region_coverage_is_clipped_to_the_image_and_needs_its_size():
    face = box(0, 0, 20, 20)
    with pytest.raises(ValueError, match="size of every image"):
        evaluate_faces({"a": [face]}, {"a": [face]}, method="blur")
    with pytest.raises(ValueError, match="no option"):
        evaluate_faces({"a": [face]}, {"a": [face]}, method="blur", sizes={"a": (9, 9)},
                       method_options={"radius": 3})
    # A 9 x 9 image holds only part of the face: the region cannot reach beyond it.
    clipped = evaluate_faces({"a": [face]}, {"a": [face]}, method="blur", sizes={"a": (9, 9)})
    assert clipped.overall.region_coverage_recall == 0.0
    assert math.isnan(evaluate_faces({"a": [face]}, {"a": [face]}).overall.region_coverage_recall)


# --- veil eval-faces --------------------------------------------------------------------------

def _paper(path: Path, faces: dict[str, list[dict]]) -> Path:
    path.write_text(json.dumps([{"url": k, "bboxes": v} for k, v in faces.items()]))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    gt = _paper(tmp_path / "gt.json", {
        "images/a.jpg": [{"x0": 0, "y0": 0, "x1": 20, "y1": 20, "invalid": 0},
                         {"x0": 100, "y0": 0, "x1": 120, "y1": 20, "invalid": 1}],
        "images/b.jpg": [{"x0": 0, "y0": 0, "x1": 40, "y1": 40, "invalid": 0}],
    })
    pred = _paper(tmp_path / "pred.json", {
        "images/a.jpg": [{"x0": 0, "y0": 0, "x1": 20, "y1": 20, "score": 0.9},
                         {"x0": 300, "y0": 0, "x1": 320, "y1": 20, "score": 0.3}],
        "images/b.jpg": [],
    })
    return gt, pred


def test_cli_prints_the_table_and_the_uncovered_images(files):
    gt, pred = files
    result = CliRunner().invoke(eval_faces, [str(gt), str(pred)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "2 must-find" in out  # the invalid face is ignored
    all_row = next(line for line in out.splitlines() if line.startswith("all "))
    assert all_row.split()[1:5] == ["2", "0.500", "0.500", "0.500"]
    assert "images/b.jpg  1 of 1" in out


def test_cli_json_and_min_score(files):
    gt, pred = files
    result = CliRunner().invoke(eval_faces, [str(gt), str(pred), "--json", "--min-score", "0.5"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["overall"]["precision"] == 1.0 and data["overall"]["recall"] == 0.5
    assert data["images_with_uncovered_faces"] == 1
    assert data["settings"]["min_score"] == 0.5


def test_cli_reads_a_store_and_matches_keys_by_file_name(files, tmp_path):
    from veil.interchange import import_faces
    from veil.store import FaceStore

    gt, _ = files
    pred = _paper(tmp_path / "flat.json", {"a.jpg": [{"x0": 0, "y0": 0, "x1": 20, "y1": 20,
                                                      "score": 0.9}], "b.jpg": []})
    store_path = tmp_path / "faces.sqlite"
    with FaceStore(str(store_path)) as store:
        run = import_faces(store, pred, as_detections=True).run_id
    result = CliRunner().invoke(eval_faces, [str(gt), str(store_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["overall"]["found"] == 1 and "file name" in data["note"]
    assert f"run {run}" in data["pred"]
    missing = CliRunner().invoke(eval_faces, [str(gt), str(store_path), "--run", "99"])
    assert missing.exit_code != 0 and "no run 99" in missing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json", "{pred}"], "no such file"),
        (["{gt}", "{pred}", "--run", "1"], "--run applies only"),
        (["{gt}", "{tmp}"], "is a folder"),
        (["{bad}", "{pred}"], "bad.json"),
    ],
)
def test_cli_errors_are_one_line(files, tmp_path, args, message):
    gt, pred = files
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "faces"')
    values = {"gt": gt, "pred": pred, "tmp": tmp_path, "bad": bad}
    result = CliRunner().invoke(eval_faces, [a.format(**values) for a in args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


# --- "is this a face store?": one rule for --faces, GT and PRED ------------------------------

def test_one_store_rule_for_eval_faces_and_faces_sources(files, tmp_path, monkeypatch):
    """The cases where eval-faces (by header only) and veil.faces (by suffix first) used
    to disagree: content decides for an existing file, the suffix for a missing one."""
    import veil.cli.eval_faces as cli_eval
    from veil.faces import is_store_location, load_faces
    from veil.store import FaceStore

    _, pred = files
    json_named_db = tmp_path / "faces.db"  # a faces file with a store's suffix
    json_named_db.write_bytes(pred.read_bytes())
    home = tmp_path / "home"
    home.mkdir()
    FaceStore(str(home / "faces.sqlite")).close()
    monkeypatch.setenv("HOME", str(home))
    assert not is_store_location(json_named_db)  # was a store to veil.faces
    assert is_store_location("~/faces.sqlite")  # eval-faces did not expand ~
    assert is_store_location(tmp_path / "new.sqlite")  # missing: eval-faces said a file
    assert not is_store_location(tmp_path / "new.json")
    assert not is_store_location(tmp_path)  # a folder is neither
    assert is_store_location("postgresql+psycopg://u@h/db")
    # both callers follow it: the .db JSON is read as faces, and nothing else decides
    assert load_faces(json_named_db).face_count == 2
    assert not hasattr(cli_eval, "is_store")
    result = CliRunner().invoke(eval_faces, [str(json_named_db), "~/faces.sqlite"])
    assert result.exit_code != 0 and "no detection run" in result.output
    result = CliRunner().invoke(eval_faces, [str(pred), str(tmp_path / "new.sqlite")])
    assert result.exit_code != 0 and "no face store at" in result.output


# --- veil eval-faces --method -----------------------------------------------------------------

def test_cli_method_reports_coverage_under_the_blur_beside_the_boxes(files, tmp_path):
    from PIL import Image

    gt, _ = files
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):  # sizes come from the images beside the faces file
        Image.new("RGB", (400, 100)).save(tmp_path / "images" / name)
    pred = _paper(tmp_path / "short.json", {
        "images/a.jpg": [{"x0": 0, "y0": 0, "x1": 20, "y1": 13, "score": 0.9}],
        "images/b.jpg": [{"x0": 0, "y0": 0, "x1": 40, "y1": 26, "score": 0.9}],
    })
    result = CliRunner().invoke(eval_faces, [str(gt), str(pred), "--method", "blur"])
    assert result.exit_code == 0, result.output
    header, _, all_row = result.output.splitlines()[3:6]
    assert "under blur" in header
    assert all_row.split()[3:5] == ["0.000", "1.000"]  # boxes cover 65%, the blur all
    assert "every must-find face is covered" in result.output
    data = json.loads(CliRunner().invoke(
        eval_faces, [str(gt), str(pred), "--method", "overlay", "-o", "expand_fraction=0.5",
                     "--json"]).output)
    assert data["overall"]["region_coverage_recall"] == 1.0
    assert data["settings"]["method_options"] == {"expand_fraction": 0.5}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "blur"], "--images"),  # no images beside the faces file: no sizes
        (["--method", "blur", "-o", "radius=3"], "no option 'radius'"),
        (["-o", "expand_fraction=0.2"], "--option needs --method"),
    ],
)
def test_cli_method_errors(files, extra, message):
    gt, pred = files
    result = CliRunner().invoke(eval_faces, [str(gt), str(pred), *extra])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
