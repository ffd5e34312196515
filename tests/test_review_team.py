"""A team's review over days: restarts with stored settings, one answer per image
with k=1, failed batches that can be inspected and reinstated (CLI and real server)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_review_api import GOLD, PRIORITY, boxes_json, detect, make_dataset, review_server

from veil.boxes import Box
from veil.cli import main
from veil.interchange import read_faces
from veil.review.settings import ReviewSettings
from veil.store import FaceStore
from veil.store.review import ReviewLedger


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """uvicorn.run replaced by a recorder: `serve` returns once it would listen."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append(kw))
    return calls


def run(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    if result.exc_info and not isinstance(result.exception, SystemExit):
        import traceback
        traceback.print_exception(*result.exc_info)
    return result


# -- 1. restarts with stored settings -----------------------------------------------------------


def test_the_readme_team_commands_work_twice_in_a_row(dataset_root, tmp_path, served):
    store = str(tmp_path / "faces.sqlite")
    with FaceStore(store) as opened:
        detect(opened)  # `veil detect DATASET --store faces.sqlite`
    out = tmp_path / "faces.json"
    added = run("review", "add-annotator", "alice", "--store", store,
                "--url", "http://HOST:8000")
    assert added.exit_code == 0, added.output
    for attempt in range(2):
        r = run("review", str(dataset_root), "--store", store, "--host", "0.0.0.0",
                "-k", "2", "--aggregate", "union")
        assert r.exit_code == 0, f"start {attempt + 1}: {r.output}"
        r = run("review", "stats", "--store", store)
        assert r.exit_code == 0 and "reviews per image 2" in r.output, r.output
        r = run("review", "export", "--store", store, "--format", "paper", "--out", str(out))
        assert r.exit_code == 0 and out.exists(), r.output
    assert len(served) == 2
    # The first start changed k and the aggregate's default; the second changed nothing.
    stats = run("review", "stats", "--store", store).output
    assert "last server start" in stats and "changed: nothing" in stats
    again = run("review", "add-annotator", "alice", "--store", store)
    assert again.exit_code == 2 and "--rotate" in again.output, "a link is shown once"


def test_given_settings_override_stored_ones_and_the_change_is_shown(dataset_root, tmp_path,
                                                                      served):
    store = str(tmp_path / "faces.sqlite")
    r = run("review", str(dataset_root), "--store", store, "--gold-rate", "0.4")
    assert r.exit_code == 0, r.output
    r = run("review", str(dataset_root), "--store", store, "--gold-rate", "0.4", "-k", "1")
    assert r.exit_code == 0, r.output
    r = run("review", str(dataset_root), "--store", store, "--gold-rate", "0.2", "-k", "3")
    assert r.exit_code == 0, r.output
    assert "changed by this start: gold rate 0.4 -> 0.2, reviews per image 1 -> 3" in r.output
    with FaceStore(store) as opened:
        settings = ReviewSettings.load(ReviewLedger(opened))
    assert (settings.gold_rate, settings.reviews_per_image) == (0.2, 3)
    stats = json.loads(run("review", "stats", "--store", store, "--json").output)
    assert stats["settings"]["gold_rate"] == 0.2
    assert stats["last_change"]["changed"] == {"gold_rate": [0.4, 0.2],
                                               "reviews_per_image": [1, 3]}


def test_export_with_an_aggregate_given_and_one_stored(dataset_root, tmp_path, served):
    store = str(tmp_path / "faces.sqlite")
    assert run("review", str(dataset_root), "--store", store, "-k", "2",
               "--aggregate", "union").exit_code == 0
    out = tmp_path / "faces.json"
    r = run("review", "export", "--store", store, "--aggregate", "majority", "--format",
            "paper", "--out", str(out))
    assert r.exit_code == 0, r.output
    with FaceStore(store) as opened:
        assert ReviewSettings.load(ReviewLedger(opened)).aggregate == "union", (
            "an export's flag is for that export only")


def test_the_page_gets_the_settings_in_force_and_what_this_start_changed(dataset_root,
                                                                         tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite"), reviews_per_image=2) as (
            server, _):
        server.service.changed = {"reviews_per_image": (1, 2)}
        with server.client() as c:
            session = c.get("/api/session").json()
    assert session["settings"]["reviews_per_image"] == 2
    assert session["settings"]["aggregate"] == "union"
    assert session["changed"] == {"reviews_per_image": [1, 2]}


# -- 2. with one review per image, an answer made on top of another's supersedes it -----------


def grid(n: int) -> list[Box]:
    """``n`` small faces (7 px, as in WIDER crowds) inside a 200x150 image."""
    return [Box(5 + 12 * (i % 15), 5 + 12 * (i // 15), 12 + 12 * (i % 15), 12 + 12 * (i // 15))
            for i in range(n)]


def export_paper(store: str, out: Path, *extra: str) -> dict[str, list[Box]]:
    r = run("review", "export", "--store", store, "--format", "paper", "--out", str(out), *extra)
    assert r.exit_code == 0, r.output
    return read_faces(out, "paper")


def test_with_k1_an_edit_of_another_reviewers_answer_replaces_it_in_the_export(
        dataset_root, tmp_path):
    store = str(tmp_path / "f.sqlite")
    with review_server(dataset_root, store, tokens=("alice", "bob"), require_tokens=True) as (
            server, tokens):
        with server.client(tokens["alice"]) as alice, server.client(tokens["bob"]) as bob:
            item = alice.get("/api/items/crowd/a.jpg").json()
            r = alice.post("/api/items/crowd/a.jpg/review", json={
                "boxes": boxes_json(*grid(72)), "base_review_id": item["base_review_id"]})
            assert r.status_code == 200
            seen = bob.get("/api/items/crowd/a.jpg").json()
            assert len(seen["boxes"]) == 72 and seen["origin_by"] == "alice"
            r = bob.post("/api/items/crowd/a.jpg/review", json={
                "boxes": boxes_json(*grid(62)), "base_review_id": seen["base_review_id"]})
            assert r.status_code == 200
        current = server.store.current_boxes(["crowd/a.jpg"])["crowd/a.jpg"]
        assert len(current) == 62
    faces = export_paper(store, tmp_path / "faces.json")
    assert len(faces["crowd/a.jpg"]) == 62, "bob's edit, not the union with alice's answer"
    # alice edits bob's answer in turn: hers is the answer again.
    with review_server(dataset_root, store, tokens=("alice",), require_tokens=True) as (
            server, tokens), server.client(tokens["alice"]) as alice:
        seen = alice.get("/api/items/crowd/a.jpg").json()
        assert alice.post("/api/items/crowd/a.jpg/review", json={
            "boxes": boxes_json(*grid(60)),
            "base_review_id": seen["base_review_id"]}).status_code == 200
    assert len(export_paper(store, tmp_path / "faces.json")["crowd/a.jpg"]) == 60


def test_with_k2_independent_answers_are_still_aggregated(dataset_root, tmp_path):
    store = str(tmp_path / "f.sqlite")
    with review_server(dataset_root, store, tokens=("alice", "bob"), require_tokens=True,
                       reviews_per_image=2) as (server, tokens):
        with server.client(tokens["alice"]) as alice, server.client(tokens["bob"]) as bob:
            for client, boxes in ((alice, grid(3)), (bob, [Box(120, 80, 150, 110)])):
                item = client.get("/api/items/crowd/b.png").json()
                assert client.post("/api/items/crowd/b.png/review", json={
                    "boxes": boxes_json(*boxes),
                    "base_review_id": item["base_review_id"]}).status_code == 200
        server.ledger.save_settings({"reviews_per_image": 2})
    assert len(export_paper(store, tmp_path / "u.json")["crowd/b.png"]) == 4, (
        "independent answers (each started from the detections) are combined")


# -- 3. running out of lives: said before, counted after, reinstated on demand ----------------


def fail_gold(server: Any, client: Any) -> dict[str, Any]:
    """Serve a gold image to the curator by hand and answer it wrongly."""
    batch = server.service.batch("curator")
    gold = server.ledger.gold_items()[0]
    server.ledger.open_attempt(batch.id, "curator", gold, [])
    r = client.post(f"/api/items/{gold.key}/review",
                    json={"boxes": boxes_json(Box(0, 0, 99, 99))})
    assert r.status_code == 200
    return r.json()


def test_running_out_of_lives_says_what_it_discards_and_a_batch_can_be_reinstated(
        dataset_root, tmp_path):
    store = str(tmp_path / "f.sqlite")
    answers = [("crowd/a.jpg", grid(4)), ("crowd/b.png", [Box(1, 1, 9, 9)]),
               ("crowd/b.png", [Box(2, 2, 20, 20)]), ("street/c.jpg", []),
               ("street/d.png", [Box(5, 5, 50, 50)]), ("street/e.png", [])]
    with review_server(dataset_root, store, gold_rate=1.0, lives=2) as (server, _):
        server.ledger.set_gold(GOLD, source="test")
        server.service.refresh()
        with server.client() as c:
            for key, boxes in answers:
                base = c.get(f"/api/items/{key}").json()["base_review_id"]
                r = c.post(f"/api/items/{key}/review",
                           json={"boxes": boxes_json(*boxes), "base_review_id": base})
                assert r.status_code == 200 and r.json()["warning"] is None
            assert c.get("/api/session").json()["at_stake"] == 6
            first = fail_gold(server, c)
            assert first["lives_left"] == 1
            assert first["warning"] == ("Last life: one more missed gold-standard check sets "
                                        "aside the 6 answers you saved in this batch.")
            session = c.get("/api/session").json()
            assert session["warning"] == first["warning"] and session["lives_left"] == 1
            second = fail_gold(server, c)["gold"]
            assert second["restarted"] and second["set_aside"] == 6
            assert "the 6 answers you saved in this batch" in second["message"]
            batch = second["failed_batch"]
            assert f"(batch {batch})" in second["message"]
            assert c.get("/api/next").json()["progress"]["reviewed"] == 0
            # Someone answers street/d.png again before the curator looks at the batch.
            base = c.get("/api/items/street/d.png").json()["base_review_id"]
            assert c.post("/api/items/street/d.png/review", json={
                "boxes": [], "base_review_id": base}).status_code == 200

    stats = run("review", "stats", "--store", store)
    assert (f"failed batch {batch} (curator, " in stats.output
            and "6 answer(s) on 5 image(s) set aside "
                f"(reinstate: veil review reinstate --batch {batch})" in stats.output), stats.output
    data = json.loads(run("review", "stats", "--store", store, "--json").output)
    assert [(b["batch"], b["answers"], b["reinstated_at"]) for b in data["set_aside"]] == [
        (batch, 6, None)]

    r = run("review", "reinstate", "--batch", str(batch), "--store", store)
    assert r.exit_code == 0, r.output
    assert f"batch {batch}: 4 answer(s) reinstated" in r.output
    assert "1 image(s) answered again since the failure kept that answer, e.g. street/d.png" \
        in r.output
    with FaceStore(store) as opened:
        current = opened.current_boxes(["crowd/b.png", "street/d.png", "crowd/a.jpg"])
        rows = opened.reviews("crowd/b.png")
    assert [b.as_xyxy() for b in current["crowd/b.png"]] == [(2.0, 2.0, 20.0, 20.0)]
    assert current.get("street/d.png", []) == [] and len(current["crowd/a.jpg"]) == 4
    assert [row.annotator for row in rows] == ["curator", "curator", "veil:restore", "curator"], (
        "append-only: the set-aside rows stay, the answer is added again")
    assert len(export_paper(store, tmp_path / "faces.json")["crowd/a.jpg"]) == 4
    again = run("review", "reinstate", "--batch", str(batch), "--store", store)
    assert again.exit_code == 2 and "reinstated already" in again.output
    missing = run("review", "reinstate", "--batch", "999", "--store", store)
    assert missing.exit_code == 2 and "no review batch 999" in missing.output
    assert "reinstated 20" in run("review", "stats", "--store", store).output


# -- 8. leases: a team that starts together splits the work ------------------------------------


def test_with_k1_two_annotators_starting_together_get_different_images(dataset_root, tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite"), tokens=("alice", "bob"),
                       require_tokens=True) as (server, tokens), \
            server.client(tokens["alice"]) as alice, server.client(tokens["bob"]) as bob:
        a1 = alice.get("/api/next").json()["item"]
        b1 = bob.get("/api/next").json()["item"]
        assert (a1["key"], b1["key"]) == (PRIORITY[0], PRIORITY[1])
        a2 = alice.get("/api/next", params={"after": a1["cursor"]}).json()["item"]
        b2 = bob.get("/api/next", params={"after": b1["cursor"]}).json()["item"]
        assert len({a1["key"], b1["key"], a2["key"], b2["key"]}) == 4, "no image twice"
        # Saving gives the image back (and it is done); browsing "all" is never leased.
        assert bob.post(f"/api/items/{b2['key']}/review", json={
            "boxes": [], "base_review_id": b2["base_review_id"]}).status_code == 200
        assert bob.get("/api/next", params={"filter": "all"}).json()["item"]["key"] == \
            PRIORITY[0], "alice's lease does not hide her image from bob's browsing"


def test_a_lease_runs_out(dataset_root, tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite"), tokens=("alice", "bob"),
                       require_tokens=True, lease_minutes=0.002) as (server, tokens), \
            server.client(tokens["alice"]) as alice, server.client(tokens["bob"]) as bob:
        assert alice.get("/api/next").json()["item"]["key"] == PRIORITY[0]
        assert bob.get("/api/next").json()["item"]["key"] == PRIORITY[1]
        time.sleep(0.2)
        assert bob.get("/api/next").json()["item"]["key"] == PRIORITY[0], (
            "alice's lease (0.12 s) ran out")


def test_with_k2_an_image_is_leased_to_two_annotators(dataset_root, tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite"), tokens=("a", "b", "c"),
                       require_tokens=True, reviews_per_image=2) as (server, tokens):
        got = []
        for name in ("a", "b", "c"):
            with server.client(tokens[name]) as c:
                got.append(c.get("/api/next").json()["item"]["key"])
    assert got == [PRIORITY[0], PRIORITY[0], PRIORITY[1]]
