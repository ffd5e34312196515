"""The face store: append-only history, derived current boxes, resumable runs, scale."""

from __future__ import annotations

import pickle
import sqlite3
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import event, func, select

from veil.boxes import Box
from veil.errors import VeilError
from veil.store import FaceStore, ImageRecord, RunItem
from veil.store.schema import detections_t, images_t, run_items_t

A = Box(10.0, 20.0, 30.0, 40.0, 0.9, "centerface")
B = Box(1.5, 2.5, 3.5, 4.5, 0.8, "centerface")
H = Box(5.0, 6.0, 7.0, 8.0)


def detect_run(store: FaceStore, results: dict[str, list[Box] | str], status: str = "done",
               kind: str = "detect") -> int:
    """A one-shard run; a string result is that image's error message."""
    keys = list(results)
    run_id = store.start_run(kind, {"n": len(store.runs())}, [keys])
    items = [RunItem(k, "error", v) if isinstance(v, str) else RunItem(k) for k, v in
             results.items()]
    dets = {k: v for k, v in results.items() if not isinstance(v, str)}
    store.complete_shard(run_id, 0, items=items, detections=dets)
    if status != "running":
        store.finish_run(run_id, status)
    return run_id


def count(store: FaceStore, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


# -- opening -------------------------------------------------------------------------------------


def test_sqlite_file_is_created_with_wal_and_foreign_keys(tmp_path):
    path = tmp_path / "sub" / "faces.sqlite"
    with FaceStore(path) as store:
        store.register_images([ImageRecord("a.jpg")])
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert path.exists()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT key FROM images").fetchall() == [("a.jpg",)]
    with FaceStore(str(path), create=False) as again:
        assert again.keys() == ["a.jpg"]


def test_missing_store_without_create_is_a_clear_error(tmp_path):
    with pytest.raises(VeilError, match="no face store"):
        FaceStore(tmp_path / "absent.sqlite", create=False)
    (tmp_path / "empty.sqlite").touch()
    with pytest.raises(VeilError, match="not a veil face store"):
        FaceStore(tmp_path / "empty.sqlite", create=False)


def test_unreachable_server_error_hides_the_password():
    with pytest.raises(VeilError, match="cannot open face store") as info:
        FaceStore("postgresql+psycopg://alice:s3cret@127.0.0.1:1/faces")
    assert "s3cret" not in str(info.value)
    assert "alice:***@127.0.0.1" in str(info.value)


def test_repr_hides_password_and_pickle_reopens(store):
    store.register_images([ImageRecord("x.jpg", 3, 4)])
    password = store.engine.url.password
    if password:
        assert f":{password}@" in store.url, "the url itself keeps it, to reopen the store"
        assert f":{password}@" not in repr(store) and ":***@" in repr(store)
        assert f":{password}@" not in store.display_url
    clone = pickle.loads(pickle.dumps(store))
    try:
        assert clone.image("x.jpg") == ImageRecord("x.jpg", 3, 4)
    finally:
        clone.close()


# -- images ----------------------------------------------------------------------------------------


def test_register_images_upserts_and_unknown_fields_keep_known_values(store):
    store.register_images([ImageRecord("b.jpg", 640, 480, "ab" * 32, "n01"),
                           ImageRecord("a.jpg", 10, 20)])
    store.register_images([ImageRecord("b.jpg", label="n02", status="error", error="truncated")])
    assert store.image("b.jpg") == ImageRecord("b.jpg", 640, 480, "ab" * 32, "n02", "error",
                                               "truncated")
    store.register_images([ImageRecord("b.jpg")])
    assert store.image("b.jpg") == ImageRecord("b.jpg", 640, 480, "ab" * 32, "n02")
    assert store.image("zzz.jpg") is None
    assert store.keys() == ["a.jpg", "b.jpg"]
    assert store.count_images() == 2
    with pytest.raises(ValueError, match="status"):
        store.register_images([ImageRecord("c.jpg", status="broken")])


def test_keys_sort_bytewise_on_every_backend(store):
    keys = ["b/x.jpg", "B/x.jpg", "a_b.jpg", "a-b.jpg", "a.jpg", "é.jpg", "z.jpg"]
    store.register_images(ImageRecord(k) for k in keys)
    assert store.keys() == sorted(keys)


# -- derivation rules ----------------------------------------------------------------------------


def test_current_boxes_follow_the_derivation_rules(store):
    store.register_images([ImageRecord("never.jpg", 5, 5)])
    run1 = detect_run(store, {"a": [A], "b": [], "c": "cannot decode", "d": [B]})
    assert store.current_boxes() == {"a": [A], "b": [], "d": [B]}, "errors and unseen are absent"

    run2 = detect_run(store, {"a": [B], "c": [A]})
    assert store.current_boxes() == {"a": [B], "b": [], "c": [A], "d": [B]}, "later run wins"

    detect_run(store, {"a": [A, A, A]}, status="failed")
    detect_run(store, {"a": [A, A]}, status="interrupted")
    detect_run(store, {"a": []}, kind="audit")
    detect_run(store, {"d": "disk error"})
    assert store.current_boxes()["a"] == [B], "failed, interrupted and audit runs do not count"
    assert store.current_boxes()["d"] == [B], "an error in a later run keeps the earlier boxes"

    store.add_review("b", [H], annotator="alice")
    assert store.current_boxes()["b"] == [Box(5.0, 6.0, 7.0, 8.0, None, "human:alice")]
    store.add_review("a", [], annotator="bob")
    assert store.current_boxes()["a"] == [], "an empty review means no faces"
    store.add_review("a", [H], annotator="carol")
    assert store.current_boxes()["a"] == [Box(5.0, 6.0, 7.0, 8.0, None, "human:carol")]
    detect_run(store, {"a": [A], "b": [A]})
    current = store.current_boxes()
    assert current["a"][0].source == "human:carol" and current["b"][0].source == "human:alice", (
        "a review beats any detection run, even a later one"
    )
    assert store.current_boxes(["a", "c", "never.jpg", "nowhere"]) == {
        "a": [current["a"][0]], "c": [A],
    }
    assert "never.jpg" not in current

    # Append-only: nothing above replaced anything.
    assert store.detections(run1) == {"a": [A], "b": [], "d": [B]}
    assert store.detections(run2, keys=["a"]) == {"a": [B]}
    assert [r.annotator for r in store.reviews("a")] == ["bob", "carol"]
    assert store.reviews("a")[0].boxes == ()
    assert store.detections()["a"] == [A], "latest detections ignore reviews"


def test_a_running_detection_run_counts_with_its_finished_shards(store):
    run_id = store.start_run("detect", {"x": 1}, [["a"], ["b"]])
    store.complete_shard(run_id, 0, detections={"a": [A]})
    assert store.current_boxes() == {"a": [A]}
    assert store.run_items(run_id) == [RunItem("a")], "keys with detections count as processed"


def test_boxes_keep_float64_and_accept_numpy_numbers(store):
    tricky = Box(0.1 + 0.2, 1 / 3, 2 / 3 + 100, 123456.78901234567, 0.1234567890123456, "x")
    np_box = Box(np.float32(1.5), np.float64(2.25), np.float32(3.5), np.float64(4.75),
                 np.float32(0.5), "np")
    detect_run(store, {"k": [tricky, np_box]})
    got = store.current_boxes()["k"]
    assert got[0] == tricky
    assert got[1] == Box(1.5, 2.25, 3.5, 4.75, 0.5, "np")
    assert all(type(v) is float for v in got[1].as_xyxy())


# -- reviews ---------------------------------------------------------------------------------------


def test_review_records_everything_and_rejects_unknown_kinds(store):
    before = datetime.now(UTC)
    review_id = store.add_review("g.jpg", [Box(1, 2, 3, 4, source="human:dora")],
                                 annotator="dora", kind="gold", seconds=12.5, gold_passed=False,
                                 note="missed one")
    (rec,) = store.reviews("g.jpg")
    assert rec.id == review_id and rec.key == "g.jpg" and rec.annotator == "dora"
    assert rec.kind == "gold" and rec.gold_passed is False and rec.note == "missed one"
    assert rec.seconds_spent == 12.5
    assert rec.created_at.tzinfo is not None and rec.created_at >= before.replace(microsecond=0)
    assert rec.boxes == (Box(1.0, 2.0, 3.0, 4.0, None, "human:dora"),)
    with pytest.raises(ValueError, match="kind"):
        store.add_review("g.jpg", [], annotator="dora", kind="opinion")
    assert len(store.reviews("g.jpg")) == 1


def test_add_reviews_in_bulk_is_one_transaction(store):
    n = store.add_reviews(((f"k{i}", [H] * (i % 3)) for i in range(12)), annotator="crowd")
    assert n == 12
    current = store.current_boxes()
    assert len(current) == 12 and len(current["k5"]) == 2 and current["k3"] == []

    def broken():
        yield "ok1", [H]
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        store.add_reviews(broken(), annotator="crowd")
    assert "ok1" not in store.current_boxes()


# -- runs, shards, resume ------------------------------------------------------------------------


def test_runs_record_config_status_and_timings(store):
    run_id = store.start_run("detect", {"detector": "centerface", "threshold": 0.5})
    rec = store.run(run_id)
    assert rec.kind == "detect" and rec.status == "running" and rec.finished_at is None
    assert rec.config == {"detector": "centerface", "threshold": 0.5}
    assert rec.created_at.tzinfo is not None and rec.veil_version and rec.host
    store.finish_run(run_id, "done", {"seconds": 1.25})
    rec = store.run(run_id)
    assert rec.status == "done" and rec.timings == {"seconds": 1.25}
    assert rec.finished_at >= rec.created_at
    other = store.start_run("audit", {})
    assert [r.id for r in store.runs()] == [run_id, other]
    assert [r.id for r in store.runs("audit")] == [other]
    with pytest.raises(ValueError, match="status"):
        store.finish_run(run_id, "exploded")
    with pytest.raises(VeilError, match="no run"):
        store.run(9999)


def test_resumable_run_pending_shards_and_duplicate_completion(store):
    config = {"detector": "centerface", "size": [640, 480]}
    shards = [["a", "b"], ["c"], ["d", "e"]]
    assert store.find_resumable_run("detect", config) is None
    done_run = store.start_run("detect", config, [["z"]])
    store.finish_run(done_run)
    run_id = store.start_run("detect", config, shards)
    store.complete_shard(run_id, 0, items=[RunItem("a"), RunItem("b", "error", "bad")],
                         detections={"a": [A]}, images=[ImageRecord("a", 8, 8)], seconds=0.5)
    store.fail_shard(run_id, 1, "worker crashed")
    store.finish_run(run_id, "interrupted")

    assert store.find_resumable_run("detect", {"size": [640, 480], "detector": "centerface"}) \
        == run_id, "config key order does not matter"
    assert store.find_resumable_run("detect", {**config, "size": [640, 481]}) is None
    assert store.find_resumable_run("obfuscate", config) is None
    assert store.pending_shards(run_id) == [(1, ["c"]), (2, ["d", "e"])]
    rec = store.run(run_id)
    assert (rec.shards_total, rec.shards_done, rec.shards_failed) == (3, 1, 1)

    rows = (count(store, run_items_t), count(store, detections_t))
    store.complete_shard(run_id, 0, items=[RunItem("a"), RunItem("b")],
                         detections={"a": [A, B]})
    assert (count(store, run_items_t), count(store, detections_t)) == rows
    assert store.detections(run_id) == {"a": [A]}
    assert store.run_items(run_id, "error") == [RunItem("b", "error", "bad")]

    store.resume_run(run_id)
    assert store.run(run_id).status == "running"
    store.complete_shard(run_id, 1, items=[RunItem("c", info={"faces": 0, "ms": 3.5})])
    store.fail_shard(run_id, 1, "late failure report")
    info = {s["index"]: s for s in store.shards(run_id)}
    assert info[1]["status"] == "done" and info[1]["attempts"] == 2
    assert info[0]["n_items"] == 2 and info[0]["n_errors"] == 1 and info[0]["seconds"] == 0.5
    assert store.run_items(run_id, "ok")[-1] == RunItem("c", info={"faces": 0, "ms": 3.5})
    assert store.pending_shards(run_id) == [(2, ["d", "e"])]

    newer = store.start_run("detect", config, shards)
    store.finish_run(newer, "failed")
    assert store.find_resumable_run("detect", config) == newer, "the newest resumable run"
    with pytest.raises(VeilError, match="no shard 7"):
        store.complete_shard(run_id, 7)


def test_complete_shard_is_atomic(store, monkeypatch):
    run_id = store.start_run("detect", {}, [["a", "b"]])

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(FaceStore, "_insert_detections", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        store.complete_shard(run_id, 0, items=[RunItem("a"), RunItem("b")],
                             images=[ImageRecord("a", 5, 5)], detections={"a": [A]})
    assert store.pending_shards(run_id) == [(0, ["a", "b"])]
    assert store.count_images() == 0
    assert count(store, run_items_t) == 0
    assert store.current_boxes() == {}

    monkeypatch.undo()
    store.complete_shard(run_id, 0, items=[RunItem("a"), RunItem("b")],
                         images=[ImageRecord("a", 5, 5)], detections={"a": [A]})
    assert store.current_boxes() == {"a": [A], "b": []}
    assert store.image("a") == ImageRecord("a", 5, 5)


def test_public_transaction_api_is_all_or_nothing(store):
    """What the review ledger builds on: several writes in one ``store.transaction()``,
    rolled back together when the block fails, through public methods only."""
    detect_run(store, {"a": [A, B]})
    with pytest.raises(RuntimeError, match="late failure"), store.transaction() as conn:
        ids = store.ensure_image_ids(conn, ["a", "new"])
        assert store.image_id(conn, "new") == ids["new"]
        assert store.latest_detections(conn, ids["a"]) == [A, B]
        store.insert_reviews(conn, [(ids["a"], [H]), (ids["new"], [])], annotator="ann",
                             kind="review")
        raise RuntimeError("late failure")
    assert store.keys() == ["a"] and store.reviews("a") == []
    with store.connect() as conn:
        assert store.image_id(conn, "new") is None
    with store.transaction() as conn:
        (new_id,) = store.ensure_image_ids(conn, ["new"]).values()
        (review_id,) = store.insert_reviews(conn, [(new_id, [H])], annotator="ann",
                                            kind="review")
    (saved,) = store.reviews("new")
    assert saved.id == review_id and saved.boxes == (Box(5.0, 6.0, 7.0, 8.0, None, "human:ann"),)


def test_complete_shard_rejects_bad_items_before_writing(store):
    run_id = store.start_run("detect", {}, [["a"]])
    with pytest.raises(ValueError, match="twice"):
        store.complete_shard(run_id, 0, items=[RunItem("a"), RunItem("a")])
    with pytest.raises(ValueError, match="status"):
        store.complete_shard(run_id, 0, items=[RunItem("a", "maybe")])
    assert store.pending_shards(run_id) == [(0, ["a"])]


def test_summary_counts(store):
    store.register_images(ImageRecord(f"{i}.jpg") for i in range(5))
    store.register_images([ImageRecord("bad.jpg", status="error", error="truncated")])
    detect_run(store, {"0.jpg": [A, B], "1.jpg": [], "2.jpg": [A]})
    store.add_review("2.jpg", [], annotator="eve")
    assert store.summary() == {
        "images": 6, "answered": 3, "with_faces": 1, "faces": 2, "reviewed": 1,
        "runs": {"detect": 1}, "errors": 1,
    }


# -- scale -----------------------------------------------------------------------------------------


def test_twenty_thousand_images_stay_fast_and_use_few_queries(store):
    n = 20_000
    keys = [f"train/n{i % 50:08d}/img_{i:06d}.JPEG" for i in range(n)]
    store.register_images(ImageRecord(k, 500, 375, label=k.split("/")[1]) for k in keys)
    shards = [keys[i:i + 2000] for i in range(0, n, 2000)]
    run_id = store.start_run("detect", {"scale": True}, shards)
    for index, shard in enumerate(shards):
        store.complete_shard(
            run_id, index, items=[RunItem(k) for k in shard],
            detections={k: [A, B] for k in shard[::3]},
        )
    store.finish_run(run_id)
    store.add_reviews(((k, [H]) for k in keys[1::10]), annotator="crowd")

    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    current = store.current_boxes()
    event.remove(store.engine, "before_cursor_execute", record)

    assert len(current) == n
    assert sum(len(v) for v in current.values()) == sum(
        1 if i % 10 == 1 else (2 if i % 2000 % 3 == 0 else 0) for i in range(n)
    )
    assert len(statements) <= 3, "current boxes are derived in SQL, not per image"

    for subset in (keys[::9], keys[:5000]):  # looked up in chunks / read in one scan
        assert store.current_boxes(subset) == {k: current[k] for k in subset}
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(images_t)).scalar_one() == n


def test_a_database_error_reaches_the_user_as_one_line_naming_the_store():
    from sqlalchemy.exc import OperationalError

    from veil.cli.common import store_failure

    driver = RuntimeError("database is locked\nDETAIL: held by pid 42")
    error = OperationalError("UPDATE images SET ...", {}, driver)
    named = store_failure(error, "faces.sqlite").message
    assert named == "face store faces.sqlite: database is locked"
    assert store_failure(error).message == "face store: database is locked"
