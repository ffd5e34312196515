"""The review web app's API, against a real uvicorn server on loopback and a real store."""

from __future__ import annotations

import http.client
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner
from corpus import identifying_exif, jpeg_bytes, photo
from PIL import Image

from veil.boxes import Box
from veil.cli import main
from veil.datasets import open_dataset
from veil.errors import VeilError
from veil.images import probe
from veil.review.agreement import aggregate, mask_iou
from veil.review.auth import is_loopback
from veil.review.gold import grade, wrong_boxes
from veil.review.routers.pages import STATIC
from veil.review.server import build, running
from veil.review.settings import ReviewSettings
from veil.store import FaceStore, RunItem
from veil.store.review import ReviewLedger, hash_token

# Detections: a.jpg has an uncertain face and three others, b.png one sure face, c.jpg
# (stored rotated, displayed 80x120) two sure faces; d.png was processed and has none;
# e.png was never processed. gold/ holds the gold-standard images.
DETECTIONS = {
    "crowd/a.jpg": [Box(10, 10, 40, 40, 0.95, "cf"), Box(50, 10, 80, 40, 0.3, "cf"),
                    Box(90, 10, 120, 40, 0.9, "cf"), Box(130, 10, 160, 40, 0.9, "cf")],
    "crowd/b.png": [Box(20, 20, 60, 60, 0.97, "cf")],
    "street/c.jpg": [Box(10, 10, 30, 30, 0.9, "cf"), Box(40, 60, 70, 90, 0.8, "cf")],
    "street/d.png": [],
}
PRIORITY = ["crowd/a.jpg", "street/c.jpg", "crowd/b.png", "street/d.png", "street/e.png"]
GOLD = {"gold/g1.png": [Box(20, 20, 60, 60)], "gold/g2.png": []}


def make_dataset(root: Path) -> Path:
    (root / "crowd").mkdir(parents=True)
    (root / "street").mkdir()
    (root / "gold").mkdir()
    Image.fromarray(photo(200, 150, seed=1)).save(root / "crowd/a.jpg", quality=90)
    Image.fromarray(photo(160, 120, seed=2)).save(root / "crowd/b.png")
    # Stored 120 wide and 80 high, displayed 80x120 (orientation 6), with GPS and a camera.
    (root / "street/c.jpg").write_bytes(
        jpeg_bytes(Image.fromarray(photo(120, 80, seed=3)), exif=identifying_exif(6)))
    for name, seed in (("street/d.png", 4), ("street/e.png", 5), ("gold/g1.png", 6),
                       ("gold/g2.png", 7)):
        Image.fromarray(photo(100, 100, seed=seed)).save(root / name)
    (root / "crowd/notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes((root / "crowd/b.png").read_bytes())
    return root


def detect(store: FaceStore) -> None:
    keys = [*DETECTIONS, *GOLD]
    run = store.start_run("detect", {"detector": "test"}, [keys])
    store.complete_shard(run, 0, items=[RunItem(k) for k in keys],
                         detections={**DETECTIONS, **{k: [] for k in GOLD}})
    store.finish_run(run)


@dataclass
class Review:
    url: str
    store: FaceStore
    ledger: ReviewLedger
    service: object

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


@contextmanager
def review_server(dataset_root: Path, store_url: str, *, tokens: tuple[str, ...] = (),
                  require_tokens: bool = False, follow_links: bool = False,
                  **policy: object) -> Iterator[tuple[Review, dict]]:
    """A review server on a free loopback port; yields it and the annotators' tokens."""
    with FaceStore(store_url) as store:
        if not store.runs():
            detect(store)
        ledger = ReviewLedger(store)
        made = {name: ledger.add_annotator(name, rotate=True) for name in tokens}
        settings = ReviewSettings(**{"gold_rate": 0.0, **policy})
        service, app = build(open_dataset(dataset_root), store, settings, host="127.0.0.1",
                             annotator="curator", require_tokens=require_tokens,
                             follow_links=follow_links)
        with running(app) as url:
            yield Review(url, store, ledger, service), made


@pytest.fixture
def review(dataset_root: Path, tmp_path: Path) -> Iterator[Review]:
    with review_server(dataset_root, str(tmp_path / "faces.sqlite")) as (server, _):
        yield server


def boxes_json(*boxes: Box) -> list[dict[str, float]]:
    return [{"x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1} for b in boxes]


def raw_get(url: str, path: str) -> int:
    """GET ``path`` exactly as written (httpx would normalise ``..`` away)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


# -- the page -----------------------------------------------------------------------------------


def test_page_and_assets_come_from_the_app_itself_with_a_strict_policy(review):
    with review.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and "<canvas" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert {"/static/app.js", "/static/app.css"} <= set(assets)
        for asset in [*assets, "/stats", "/static/stats.js"]:
            assert asset.startswith("/"), f"{asset}: every asset is served by the app"
            assert c.get(asset).status_code == 200, asset
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import", text), f"{path.name} reaches outside"


def test_the_queue_puts_uncertain_and_many_detections_first_and_skips_gold(review):
    review.ledger.set_gold(GOLD, source="test")
    review.service.refresh()
    with review.client() as c:
        session = c.get("/api/session").json()
        assert session["annotator"] == "curator" and not session["tokens_required"]
        seen, after = [], None
        while True:
            body = c.get("/api/next", params={"after": after} if after else {}).json()
            if body["item"] is None:
                break
            seen.append(body["item"]["key"])
            after = body["item"]["cursor"]
        assert seen == PRIORITY
        assert body["progress"] == {"total": 5, "complete": 0, "remaining": 5, "reviewed": 0,
                                    "mine": 0, "disagreement": 0, "with_detections": 3}
        by_key = c.get("/api/next", params={"order": "key"}).json()["item"]["key"]
        assert by_key == "crowd/a.jpg"
        only = c.get("/api/next", params={"filter": "detections", "after": "crowd/b.png"}).json()
        assert only["item"] is None, "d.png and e.png have no detections"
        item = c.get("/api/items/crowd/a.jpg").json()
        assert item["origin"] == "detections" and len(item["boxes"]) == 4
        assert item["base_review_id"] is None
        assert c.get("/api/items/street/e.png").json()["origin"] == "none"
        assert c.get("/api/next", params={"filter": "nonsense"}).status_code == 422


def test_an_unreadable_image_is_set_aside_not_a_blocked_queue(dataset_root, tmp_path):
    (dataset_root / "crowd/a.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with review_server(dataset_root, str(tmp_path / "f.sqlite")) as (server, _), \
            server.client() as c:
        assert c.get("/api/next").json()["item"]["key"] == "street/c.jpg"
        r = c.get("/api/items/crowd/a.jpg")
        assert r.status_code == 422 and "cannot read this image" in r.json()["detail"]


def test_images_are_served_as_displayed_without_identifying_metadata(review, dataset_root):
    assert "gps" in probe(dataset_root / "street/c.jpg").metadata
    with review.client() as c:
        item = c.get("/api/items/street/c.jpg").json()
        assert (item["width"], item["height"]) == (80, 120)
        served = c.get("/api/images/street/c.jpg")
        assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
        shown = probe(served.content)
        assert (shown.width, shown.height, shown.orientation) == (80, 120, 1)
        assert shown.metadata == ()
        png = c.get("/api/images/crowd/b.png")
        assert png.content == (dataset_root / "crowd/b.png").read_bytes()
        assert Image.open(io.BytesIO(png.content)).size == (160, 120)


# -- security -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/api/images/../../etc/passwd",
    "/api/images/..%2F..%2Fetc%2Fpasswd",
    "/api/images/%2e%2e/%2e%2e/etc/passwd",
    "/api/images//etc/passwd",
    "/api/images/%2Fetc%2Fpasswd",
    "/api/images/crowd/../crowd/b.png",
    "/api/images/crowd/notes.txt",
    "/api/images/.hidden.png",
    "/api/images/crowd/absent.jpg",
    "/api/items/../../etc/passwd",
    "/api/items//etc/passwd",
])
def test_only_dataset_images_are_served(review, path):
    assert raw_get(review.url, path) == 404


def test_unknown_keys_are_404_for_every_route_and_change_nothing(review):
    with review.client() as c:
        for key in ("../../etc/passwd", "/etc/passwd", "crowd/notes.txt", "nope.jpg"):
            assert c.post(f"/api/items/{key}/review", json={"boxes": []}).status_code == 404
            assert c.get(f"/api/items/{key}").status_code == 404
    assert review.ledger.max_review_id() == 0
    assert review.store.image("../../etc/passwd") is None


@pytest.mark.parametrize(("body", "message"), [
    ("{not json", "JSON"),
    ('{"boxes": [{"x0": 1, "y0": 1, "x1": 10}]}', "y1"),
    ('{"boxes": [{"x0": 30, "y0": 10, "x1": 10, "y1": 40}]}', "inverted"),
    ('{"boxes": [{"x0": 10, "y0": 10, "x1": 10, "y1": 40}]}', "inverted or empty"),
    ('{"boxes": [{"x0": NaN, "y0": 10, "x1": 20, "y1": 40}]}', "finite"),
    ('{"boxes": [{"x0": 10, "y0": 10, "x1": 20, "y1": 40, "evil": 1}]}', "evil"),
    ('{"boxes": [{"x0": 150, "y0": 10, "x1": 170, "y1": 40}]}', "outside the 160x120 image"),
    ('{"boxes": [{"x0": -1, "y0": 10, "x1": 20, "y1": 40}]}', "outside"),
    ('{"boxes": [{"x0": 1, "y0": 100, "x1": 20, "y1": 121}]}', "outside"),
    ('{"boxes": [], "seconds": -4}', "seconds"),
    ('{"boxes": [], "base_review_id": "latest"}', "base_review_id"),
    ('[]', "dictionary"),
])
def test_bad_answers_are_422_with_a_message_and_change_nothing(review, body, message):
    with review.client() as c:
        r = c.post("/api/items/crowd/b.png/review", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert message.lower() in json.dumps(r.json()["detail"]).lower()
    assert review.ledger.max_review_id() == 0


# -- saving -------------------------------------------------------------------------------------


def test_every_save_is_a_new_review_row_with_who_when_and_time_spent(review):
    with review.client() as c:
        first = c.post("/api/items/crowd/b.png/review",
                       json={"boxes": boxes_json(Box(20, 20, 60, 60)), "seconds": 4.5})
        assert first.status_code == 200
        body = first.json()
        assert body["progress"]["complete"] == 1 and body["progress"]["mine"] == 1
        item = c.get("/api/items/crowd/b.png").json()
        assert item["origin"] == "review" and item["origin_by"] == "curator"
        assert item["base_review_id"] == body["review_id"]
        second = c.post("/api/items/crowd/b.png/review",
                        json={"boxes": [], "base_review_id": body["review_id"], "seconds": 2})
        assert second.status_code == 200
        nothing = c.get("/api/next").json()["item"]["key"]
        assert nothing != "crowd/b.png", "reviewed images leave the to-do queue"
    rows = review.store.reviews("crowd/b.png")
    assert [(r.annotator, r.kind, r.seconds_spent) for r in rows] == [
        ("curator", "review", 4.5), ("curator", "review", 2.0)]
    assert rows[0].boxes == (Box(20.0, 20.0, 60.0, 60.0, None, "human:curator"),)
    assert rows[0].created_at <= rows[1].created_at
    assert review.store.current_boxes(["crowd/b.png"]) == {"crowd/b.png": []}
    assert review.store.image("crowd/b.png").width == 160, "the size is recorded for exports"


def test_two_clients_saving_the_same_image_get_a_conflict_not_an_overwrite(
    dataset_root, store_url
):
    with review_server(dataset_root, store_url, tokens=("alice", "bob")) as (server, tokens):
        alice, bob = server.client(tokens["alice"]), server.client(tokens["bob"])
        with alice, bob:
            a_item = alice.get("/api/items/crowd/a.jpg").json()
            b_item = bob.get("/api/items/crowd/a.jpg").json()
            assert a_item["base_review_id"] is None and b_item["base_review_id"] is None
            saved = alice.post("/api/items/crowd/a.jpg/review", json={
                "boxes": boxes_json(Box(10, 10, 40, 40)), "base_review_id": None})
            assert saved.status_code == 200
            late = bob.post("/api/items/crowd/a.jpg/review", json={
                "boxes": boxes_json(Box(1, 1, 5, 5), Box(6, 6, 9, 9)), "base_review_id": None})
            assert late.status_code == 409
            latest = late.json()["latest"]
            assert latest["annotator"] == "alice"
            assert latest["review_id"] == saved.json()["review_id"]
            assert latest["boxes"] == [{"x0": 10.0, "y0": 10.0, "x1": 40.0, "y1": 40.0,
                                        "score": None}]
            assert "alice" in late.json()["detail"]
            assert [r.annotator for r in server.store.reviews("crowd/a.jpg")] == ["alice"]
            again = bob.post("/api/items/crowd/a.jpg/review", json={
                "boxes": boxes_json(Box(1, 1, 5, 5)), "base_review_id": latest["review_id"]})
            assert again.status_code == 200
        assert [r.annotator for r in server.store.reviews("crowd/a.jpg")] == ["alice", "bob"]


# -- tokens and binding -------------------------------------------------------------------------


def test_tokens_travel_in_a_header_never_a_cookie(dataset_root, tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite"), tokens=("alice",),
                       require_tokens=True) as (server, tokens):
        token = tokens["alice"]
        with server.client() as anon:
            r = anon.get("/api/session")
            assert r.status_code == 401 and "personal link" in r.json()["detail"]
            assert anon.get("/api/next").status_code == 401
            assert anon.get("/api/images/crowd/b.png").status_code == 401
            assert anon.post("/api/items/crowd/b.png/review", json={"boxes": []}).status_code == 401
            assert anon.get("/api/session", headers={"Cookie": f"veil={token}"}).status_code == 401
            assert anon.get("/api/session", headers={
                "Authorization": "Bearer not-a-token"}).status_code == 401
            assert anon.get("/api/session", headers={"X-Veil-Token": token}).json()[
                "annotator"] == "alice"
            assert anon.get("/").status_code == 200, "the page itself holds nothing secret"
        with httpx.Client(base_url=server.url, cookies={"token": token}) as cookie_only:
            assert cookie_only.get("/api/session").status_code == 401
        with server.client(token) as alice:
            assert alice.get("/api/session").json()["tokens_required"] is True
            saved = alice.post("/api/items/crowd/b.png/review", json={"boxes": []})
            assert saved.status_code == 200
        assert server.store.reviews("crowd/b.png")[0].annotator == "alice"
        server.ledger.remove_annotator("alice")
        with server.client(token) as revoked:
            assert revoked.get("/api/session").status_code == 401


def test_binding_beyond_loopback_needs_annotators_with_tokens(dataset_root, tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("::")
    dataset = open_dataset(dataset_root)
    with FaceStore(tmp_path / "f.sqlite") as store:
        with pytest.raises(VeilError, match=r"refusing to listen on 0\.0\.0\.0"):
            build(dataset, store, ReviewSettings(), host="0.0.0.0")
        ReviewLedger(store).add_annotator("alice")
        service, _ = build(dataset, store, ReviewSettings(), host="0.0.0.0")
        assert service.local_annotator is None, "no anonymous reviewer beyond loopback"


def test_a_foreign_host_header_is_refused_on_loopback(review):
    with review.client() as c:
        assert c.get("/api/session", headers={"Host": "attacker.example"}).status_code == 400
        assert c.get("/api/session").status_code == 200


# -- gold standard ------------------------------------------------------------------------------


def test_gold_failures_cost_lives_show_the_answer_and_restart_the_batch(dataset_root, store_url):
    with review_server(dataset_root, store_url, gold_rate=1.0, gold_wrong=1.0, lives=2) as (
            server, _):
        server.ledger.set_gold(GOLD, source="test")
        server.service.refresh()
        with server.client() as c:
            assert c.get("/api/session").json()["gold"] is True
            assert c.post("/api/items/crowd/b.png/review", json={
                "boxes": boxes_json(Box(1, 1, 9, 9))}).status_code == 200
            assert server.store.current_boxes(["crowd/b.png"])["crowd/b.png"][0].x1 == 9

            outcomes = []
            for _ in range(2):
                item = c.get("/api/next").json()["item"]
                assert item["key"] in GOLD, "gold is served like any other item"
                truth = GOLD[item["key"]]
                shown = [Box(b["x0"], b["y0"], b["x1"], b["y1"]) for b in item["boxes"]]
                assert mask_iou(shown, truth, (100, 100)) < 0.72, "shown deliberately wrong"
                assert c.get(f"/api/images/{item['key']}").status_code == 200
                r = c.post(f"/api/items/{item['key']}/review", json={"boxes": boxes_json(*shown)})
                assert r.status_code == 200
                outcomes.append((r.json()["gold"], truth))
            (first, truth), (second, _) = outcomes
            assert not first["passed"] and first["lives_left"] == 1 and not first["restarted"]
            assert first["truth"] == [dict(b, score=None) for b in boxes_json(*truth)]
            assert first["iou"] < 0.72 and "correct boxes" in first["message"]
            assert not second["passed"] and second["restarted"] and second["lives_left"] == 2
            assert second["restored"] == 1 and "out of lives" in second["message"]

            # The failed batch's review is set aside and the image's answer restored.
            rows = server.store.reviews("crowd/b.png")
            assert [r.annotator for r in rows] == ["curator", "veil:restore"]
            restored = server.store.current_boxes(["crowd/b.png"])["crowd/b.png"]
            assert [b.as_xyxy() for b in restored] == [(20.0, 20.0, 60.0, 60.0)]
            assert server.service.queue.matches("crowd/b.png", "todo", "curator")

            for _ in range(2):
                item = c.get("/api/next").json()["item"]
                assert item["key"] in GOLD
                good = c.post(f"/api/items/{item['key']}/review",
                              json={"boxes": boxes_json(*GOLD[item["key"]])}).json()["gold"]
                assert good["passed"] and good["iou"] == 1.0 and good["lives_left"] == 2

            assert c.get("/api/items/gold/g1.png").status_code == 404, "no peeking at truths"
            assert c.get("/api/images/gold/g1.png").status_code == 404
            r = c.post("/api/items/gold/g1.png/review", json={"boxes": []})
            assert r.status_code == 403 and "gold" in r.json()["detail"]
            stats = c.get("/api/stats").json()
        (me,) = stats["annotators"]
        assert me["annotator"] == "curator"
        assert (me["gold_answered"], me["gold_passed"], me["failed_batches"]) == (4, 2, 1)
        assert me["gold_accuracy"] == 0.5 and me["rejected"] == 1
        assert stats["gold_images"] == 2 and stats["images"] == 5


def test_the_failed_batch_images_come_back_into_the_queue(dataset_root, tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite"), gold_rate=0.0,
                       lives=1) as (server, _):
        server.ledger.set_gold(GOLD, source="test")
        server.service.refresh()
        with server.client() as c:
            c.post("/api/items/crowd/b.png/review", json={"boxes": []})
            assert server.service.queue.progress("curator").mine == 1
            assert not server.service.queue.matches("crowd/b.png", "todo", "curator")
            # Serve one gold image by hand (rate 0 never would) and fail it: one life only.
            batch = server.service.batch("curator")
            gold = server.ledger.gold_items()[0]
            server.ledger.open_attempt(batch.id, "curator", gold, [])
            r = c.post(f"/api/items/{gold.key}/review", json={"boxes": boxes_json(
                Box(0, 0, 99, 99))}).json()
            assert r["gold"]["restarted"]
            keys = []
            after = None
            while (item := c.get("/api/next", params={"after": after} if after else {}).json()[
                    "item"]):
                keys.append(item["key"])
                after = item["cursor"]
            assert keys == PRIORITY, "b.png is to do again"
            assert server.service.queue.progress("curator").mine == 0


# -- teams: k independent reviews, aggregation, agreement, export --------------------------------


def test_independent_reviews_are_aggregated_and_their_disagreement_found(dataset_root, tmp_path):
    store_path = tmp_path / "f.sqlite"
    with review_server(dataset_root, str(store_path), tokens=("alice", "bob"),
                       require_tokens=True, reviews_per_image=2) as (server, tokens):
        with server.client(tokens["alice"]) as alice, server.client(tokens["bob"]) as bob:
            a = alice.post("/api/items/crowd/b.png/review", json={
                "boxes": boxes_json(Box(10, 10, 50, 50)), "base_review_id": None, "seconds": 3})
            assert a.status_code == 200
            seen_by_bob = bob.get("/api/items/crowd/b.png").json()
            assert seen_by_bob["origin"] == "detections", "bob never sees alice's answer"
            assert seen_by_bob["reviewers"] == 1 and not seen_by_bob["mine"]
            b = bob.post("/api/items/crowd/b.png/review", json={
                "boxes": boxes_json(Box(12, 12, 52, 52), Box(100, 60, 140, 100)),
                "base_review_id": None, "seconds": 5})
            assert b.status_code == 200, "independent answers do not conflict"
            twice = alice.post("/api/items/crowd/b.png/review", json={
                "boxes": [], "base_review_id": None})
            assert twice.status_code == 409, "alice's own newer answer is in the way"
            assert twice.json()["latest"]["annotator"] == "alice"

            current = server.store.current_boxes(["crowd/b.png"])["crowd/b.png"]
            assert [b.as_xyxy() for b in current] == [(10, 10, 52, 52), (100, 60, 140, 100)]
            assert server.store.reviews("crowd/b.png")[-1].annotator == "veil:union"
            after_a = alice.get("/api/next", params={"filter": "todo", "order": "key",
                                                     "after": "crowd/a.jpg"}).json()
            assert after_a["item"]["key"] == "gold/g1.png", "b.png has its two reviews"
            dis = alice.get("/api/next", params={"filter": "disagreement"}).json()
            assert dis["item"]["key"] == "crowd/b.png"
            assert dis["progress"]["disagreement"] == 1
            stats = alice.get("/api/stats").json()
        assert stats["complete"] == 1 and stats["remaining"] == 6
        assert stats["agreement"]["pairs"] == 1
        expected = mask_iou([Box(10, 10, 50, 50)], [Box(12, 12, 52, 52), Box(100, 60, 140, 100)])
        assert stats["agreement"]["mean_iou"] == pytest.approx(expected, abs=1e-4)
        assert stats["agreement"]["by_pair"][0]["annotators"] == ["alice", "bob"]
        people = {p["annotator"]: p for p in stats["annotators"]}
        assert people["alice"]["seconds"] == 3 and people["bob"]["images_per_hour"] == 720

    runner = CliRunner()
    out = tmp_path / "faces.json"
    result = runner.invoke(main, ["review", "export", "--store", str(store_path),
                                  "--format", "paper", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 1 images" in result.output
    (entry,) = json.loads(out.read_text())
    assert entry["url"] == "crowd/b.png"
    assert entry["bboxes"] == [{"x0": 10.0, "y0": 10.0, "x1": 52.0, "y1": 52.0},
                               {"x0": 100.0, "y0": 60.0, "x1": 140.0, "y1": 100.0}]
    coco = tmp_path / "faces.coco.json"
    result = runner.invoke(main, ["review", "export", "--store", str(store_path), "--format",
                                  "coco", "--out", str(coco), "--include-unreviewed"])
    assert result.exit_code == 0, result.output
    images = {im["file_name"]: im for im in json.loads(coco.read_text())["images"]}
    assert images["crowd/b.png"]["width"] == 160 and "street/c.jpg" in images
    stats = runner.invoke(main, ["review", "stats", "--store", str(store_path)])
    assert stats.exit_code == 0 and "alice & bob" in stats.output


def test_aggregation_union_keeps_every_face_majority_at_least_half():
    face, other = Box(10, 10, 50, 50), Box(100, 100, 140, 140)
    answers = [[face], [Box(12, 12, 52, 52), other], [Box(8, 10, 50, 48)]]
    union = aggregate(answers, "union")
    assert [b.as_xyxy() for b in union] == [(8, 10, 52, 52), (100, 100, 140, 140)]
    majority = aggregate(answers, "majority")
    assert [b.as_xyxy() for b in majority] == [(10, 32 / 3, 152 / 3, 50)]
    assert aggregate([[], []], "union") == []


def test_gold_grading_uses_pixel_iou_of_union_masks():
    truth = [Box(0, 0, 10, 10), Box(10, 0, 20, 10)]
    assert grade([Box(0, 0, 20, 10)], truth, (30, 30), 0.72) == (True, 1.0)
    assert grade([], [], (30, 30), 0.72) == (True, 1.0)
    assert grade([], truth, (30, 30), 0.72) == (False, 0.0)
    passed, iou = grade([Box(0, 0, 14, 10)], truth, (30, 30), 0.72)
    assert not passed and iou == pytest.approx(0.7)
    import random

    for seed in range(30):
        rng = random.Random(seed)
        for t in ([], [Box(5, 5, 25, 25)], truth, [Box(0, 0, 30, 30)]):
            assert mask_iou(wrong_boxes(t, (30, 30), 0.72, rng), t, (30, 30)) < 0.72


# -- the command line ---------------------------------------------------------------------------


def test_cli_add_annotator_prints_a_link_with_the_token_in_the_fragment(tmp_path):
    store = tmp_path / "f.sqlite"
    FaceStore(store).close()
    runner = CliRunner()
    r = runner.invoke(main, ["review", "add-annotator", "alice", "--store", str(store),
                             "--url", "http://review.lab:8000/"])
    assert r.exit_code == 0, r.output
    match = re.fullmatch(r"alice: http://review\.lab:8000/#token=([\w-]{40,})\n", r.output)
    assert match
    token = match.group(1)
    with FaceStore(store) as opened:
        assert ReviewLedger(opened).annotator_for_token(token) == "alice"
    saved = b"".join(p.read_bytes() for p in tmp_path.glob("f.sqlite*")).decode("latin-1")
    assert hash_token(token) in saved and token not in saved, "only the hash is stored"
    again = runner.invoke(main, ["review", "add-annotator", "alice", "--store", str(store)])
    assert again.exit_code == 2 and "--rotate" in again.output
    bad = runner.invoke(main, ["review", "add-annotator", "veil:root", "--store", str(store)])
    assert bad.exit_code == 2 and "annotator name" in bad.output


def test_cli_serve_is_the_default_and_refuses_an_open_bind(dataset_root, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["review", str(dataset_root), "--store", str(tmp_path / "f.sqlite"),
                             "--host", "0.0.0.0", "-k", "3"])
    assert r.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in r.output and "add-annotator" in r.output
    with FaceStore(tmp_path / "f.sqlite") as store:
        assert ReviewSettings.load(ReviewLedger(store)).reviews_per_image == 1, (
            "a refused server changes no policy")
    assert "serve the review" in runner.invoke(main, ["review", "--help"]).output


def test_cli_gold_from_reviews_or_a_trusted_file(dataset_root, tmp_path):
    store_path = tmp_path / "f.sqlite"
    with FaceStore(store_path) as store:
        detect(store)
        store.add_review("crowd/b.png", [Box(1, 2, 30, 40)], annotator="curator")
    runner = CliRunner()
    r = runner.invoke(main, ["review", "gold", "add", "crowd/a.jpg", "--store", str(store_path)])
    assert r.exit_code == 2 and "never reviewed" in r.output
    r = runner.invoke(main, ["review", "gold", "add", "crowd/b.png", "--store", str(store_path)])
    assert r.exit_code == 0 and "1 gold image" in r.output
    trusted = tmp_path / "trusted.json"
    trusted.write_text(json.dumps([
        {"url": "street/d.png", "bboxes": []},
        {"url": "street/c.jpg", "bboxes": [{"x0": 5, "y0": 5, "x1": 25, "y1": 30}]},
        {"url": "street/e.png", "bboxes": []},
        {"url": "elsewhere/x.jpg", "bboxes": []},
    ]))
    r = runner.invoke(main, ["review", "gold", "add", "--from", str(trusted),
                             "--store", str(store_path)])
    assert r.exit_code == 0 and "2 gold image" in r.output
    assert "2 key(s) not in the store" in r.output and "elsewhere/x.jpg" in r.output
    listed = runner.invoke(main, ["review", "gold", "list", "--store", str(store_path)]).output
    assert listed.splitlines() == ["crowd/b.png\t1 face(s)\treview",
                                   "street/c.jpg\t1 face(s)\tfile:trusted.json",
                                   "street/d.png\t0 face(s)\tfile:trusted.json"]
    r = runner.invoke(main, ["review", "gold", "remove", "street/d.png", "--store",
                             str(store_path)])
    assert r.exit_code == 0 and "1 gold image(s) removed" in r.output
