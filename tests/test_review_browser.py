"""The review page in headless Chromium: mouse editing, gold feedback, keys, conflicts.

Runs Debian's ``chromium`` (or ``$VEIL_CHROMIUM``) through Playwright against a real
server and store; skipped without a chromium unless ``VEIL_REQUIRE_BROWSER=1``. The
page's Content-Security-Policy stays in force, so the helpers poll with
``page.evaluate`` instead of Playwright's eval-based waits. Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from corpus import photo
from PIL import Image

from veil.boxes import Box
from veil.datasets import open_dataset
from veil.review.server import build, running
from veil.review.settings import ReviewSettings
from veil.store import FaceStore, RunItem
from veil.store.review import ReviewLedger

sync_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

A = Box(40, 40, 120, 120, 0.92, "cf")
B = Box(200, 60, 260, 130, 0.88, "cf")
C = Box(300, 200, 340, 250, 0.35, "cf")


def chromium_path() -> str | None:
    return os.environ.get("VEIL_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        reason = "no chromium: apt-get install chromium (or set VEIL_CHROMIUM)"
        if os.environ.get("VEIL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"VEIL_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def served(tmp_path: Path, images: dict[str, tuple[int, int, list[Box]]], *,
           gold: dict[str, list[Box]] | None = None, tokens: tuple[str, ...] = (),
           **policy: Any) -> Iterator[tuple[str, FaceStore, dict[str, str]]]:
    """A dataset of ``key -> (width, height, detections)`` under review on loopback."""
    root = tmp_path / "ds"
    root.mkdir()
    for seed, (key, (w, h, _)) in enumerate(images.items()):
        Image.fromarray(photo(w, h, seed=seed)).save(root / key)
    with FaceStore(tmp_path / "faces.sqlite") as store:
        run = store.start_run("detect", {"detector": "test"}, [list(images)])
        store.complete_shard(run, 0, items=[RunItem(k) for k in images],
                             detections={k: v[2] for k, v in images.items()})
        store.finish_run(run)
        ledger = ReviewLedger(store)
        if gold:
            ledger.set_gold(gold, source="test")
        made = {name: ledger.add_annotator(name) for name in tokens}
        settings = ReviewSettings(**{"gold_rate": 0.0, **policy})
        _, app = build(open_dataset(root), store, settings, host="127.0.0.1",
                       annotator="curator")
        with running(app) as url:
            yield url, store, made


def wait_for(page: Any, script: str, timeout: float = 10.0) -> Any:
    """Poll ``script`` (a JS arrow function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {script}")
        time.sleep(0.03)


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # A 409 is the conflict answer the page expects; any other failed request is a bug.
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and "status of 409" not in msg.text else None)
    page.errors = errors
    page.goto(url)
    wait_for(page, "() => window.veilReview && window.veilReview.item()"
                   " && !window.veilReview.busy()")
    return page


def current_key(page: Any) -> str | None:
    return page.evaluate("() => { const i = window.veilReview.item(); return i && i.key; }")


def settle(page: Any) -> None:
    wait_for(page, "() => !window.veilReview.busy()")


def screen(page: Any, x: float, y: float) -> tuple[float, float]:
    p = page.evaluate(f"() => window.veilReview.toScreen({x}, {y})")
    return p["x"], p["y"]


def drag(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag between two points given in image pixels."""
    page.mouse.move(*screen(page, *start))
    page.mouse.down()
    page.mouse.move(*screen(page, *end), steps=6)
    page.mouse.up()


def drag_handle(page: Any, name: str, by: tuple[float, float]) -> None:
    """Drag the selected box's handle ``name`` (nw, n, ..., w) by ``by`` image pixels."""
    h = page.evaluate(f"() => window.veilReview.handle('{name}')")
    scale = page.evaluate("() => window.veilReview.view().scale")
    page.mouse.move(h["x"], h["y"])
    page.mouse.down()
    page.mouse.move(h["x"] + by[0] * scale, h["y"] + by[1] * scale, steps=6)
    page.mouse.up()


def boxes(page: Any) -> list[tuple[float, float, float, float]]:
    return [(b["x0"], b["y0"], b["x1"], b["y1"])
            for b in page.evaluate("() => window.veilReview.boxes()")]


def close_to(got: tuple[float, ...], want: tuple[float, ...], tol: float = 0.5) -> bool:
    return all(abs(g - w) <= tol for g, w in zip(got, want, strict=True))


def test_draw_move_delete_and_submit_with_the_mouse(browser, tmp_path):
    images = {"a.png": (400, 300, [A, B]), "b.png": (300, 200, [Box(20, 20, 60, 60, 0.9)])}
    with served(tmp_path, images) as (url, store, _):
        page = open_page(browser, url)
        assert current_key(page) == "a.png", "two faces come before one"
        assert len(boxes(page)) == 2

        drag(page, (280, 180), (360, 260))                 # draw a new box
        assert len(boxes(page)) == 3 and close_to(boxes(page)[2], (280, 180, 360, 260))
        assert page.evaluate("() => window.veilReview.selected()") == 2
        drag(page, (320, 220), (300, 200))                 # move it up-left by 20 px
        assert close_to(boxes(page)[2], (260, 160, 340, 240))
        page.mouse.click(*screen(page, 230, 95))           # select B ...
        assert page.evaluate("() => window.veilReview.selected()") == 1
        page.keyboard.press("Delete")                      # ... and delete it
        assert len(boxes(page)) == 2
        page.mouse.click(*screen(page, 80, 80))            # select A, resize by its corner
        drag_handle(page, "se", (10, 20))                  # (the handle sits outside it)
        assert close_to(boxes(page)[0], (40, 40, 130, 140))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-editing.png"))

        page.keyboard.press("Enter")                       # save and go on
        wait_for(page, "() => window.veilReview.item() && window.veilReview.item().key"
                       " === 'b.png' && !window.veilReview.busy()")
        assert "1 / 2 done" in page.inner_text("#progress-text")
        assert page.errors == []

    (review,) = store.reviews("a.png")
    assert review.annotator == "curator" and review.kind == "review"
    assert review.seconds_spent is not None and review.seconds_spent > 0
    saved = [b.as_xyxy() for b in review.boxes]
    assert len(saved) == 2
    assert close_to(saved[0], (40, 40, 130, 140)) and close_to(saved[1], (260, 160, 340, 240))
    assert all(b.source == "human:curator" for b in review.boxes)


def test_a_failed_gold_image_shows_the_correct_answer(browser, tmp_path):
    images = {"g.png": (300, 240, []), "x.png": (300, 240, [C])}
    truth = [Box(50, 50, 150, 150)]
    with served(tmp_path, images, gold={"g.png": truth}, gold_rate=1.0, gold_wrong=1.0,
                lives=2) as (url, store, _):
        page = open_page(browser, url)
        assert current_key(page) == "g.png"
        assert page.inner_text("#lives") == "♥♥"
        page.keyboard.press("n")                           # "no faces": wrong, there is one
        wait_for(page, "() => window.veilReview.locked()")
        text = page.inner_text("#message")
        assert "gold-standard" in text and "correct boxes" in text and "1 of 2" in text
        assert page.locator("#lives .lost").count() == 1
        assert page.is_visible("text=Continue (Enter)")
        assert page.is_disabled("#submit"), "only Continue while the answer is shown"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-gold-failed.png"))
        page.keyboard.press("Enter")
        wait_for(page, "() => !window.veilReview.locked() && !window.veilReview.busy()")
        assert page.is_hidden("#message")
        assert page.errors == []
    assert store.reviews("g.png") == [], "a gold answer is graded, never the image's answer"
    assert store.current_boxes(["g.png"]) == {"g.png": []}


def test_keyboard_navigation_zoom_and_no_faces(browser, tmp_path):
    images = {"p.png": (320, 240, [C]), "q.png": (320, 240, [A, B]), "r.png": (320, 240, [])}
    with served(tmp_path, images) as (url, store, _):
        page = open_page(browser, url)
        order = [current_key(page)]
        for key in ("d", "ArrowRight"):
            page.keyboard.press(key)
            settle(page)
            order.append(current_key(page))
        assert order == ["p.png", "q.png", "r.png"], "uncertain first, then most faces"
        page.keyboard.press("a")
        settle(page)
        assert current_key(page) == "q.png"
        page.keyboard.press("ArrowLeft")
        settle(page)
        assert current_key(page) == "p.png"

        fitted = page.inner_text("#zoom")
        page.mouse.move(*screen(page, 160, 120))
        page.mouse.wheel(0, -400)
        assert int(page.inner_text("#zoom").rstrip("%")) > int(fitted.rstrip("%"))
        before = screen(page, 0, 0)
        start = screen(page, 160, 120)
        page.mouse.move(*start)
        page.mouse.down(button="right")                    # pan
        page.mouse.move(start[0] + 40, start[1] + 25, steps=4)
        page.mouse.up(button="right")
        after = screen(page, 0, 0)
        assert close_to((after[0] - before[0], after[1] - before[1]), (40, 25), tol=1)
        assert len(boxes(page)) == 1, "panning draws nothing"
        page.keyboard.press("f")
        assert page.inner_text("#zoom") == fitted

        page.keyboard.press("n")
        wait_for(page, "() => window.veilReview.item().key === 'q.png' &&"
                       " !window.veilReview.busy()")
        assert page.errors == []
    (review,) = store.reviews("p.png")
    assert review.boxes == () and review.annotator == "curator"
    assert store.reviews("q.png") == [] and store.reviews("r.png") == []


def test_two_annotators_see_the_conflict_and_resolve_it(browser, tmp_path):
    images = {"a.png": (400, 300, [A, B])}
    # Leases off: both are handed the same image (as when a lease has run out).
    with served(tmp_path, images, tokens=("alice", "bob"), lease_minutes=0) as (
            url, store, tokens):
        alice = open_page(browser, f"{url}/#token={tokens['alice']}")
        bob = open_page(browser, f"{url}/#token={tokens['bob']}")
        assert "token" not in alice.url, "the token leaves the address bar"
        assert alice.inner_text("#who") == "alice" and bob.inner_text("#who") == "bob"
        alice.keyboard.press("n")
        wait_for(alice, "() => !window.veilReview.busy() && !window.veilReview.item()")
        bob.keyboard.press("Enter")
        wait_for(bob, "() => !document.getElementById('message').hidden")
        assert "Not saved" in bob.inner_text("#message")
        assert "alice" in bob.inner_text("#message")
        ARTIFACTS.mkdir(exist_ok=True)
        bob.screenshot(path=str(ARTIFACTS / "review-conflict.png"))
        assert [r.annotator for r in store.reviews("a.png")] == ["alice"]
        bob.click("text=Use theirs")
        assert boxes(bob) == []
        bob.keyboard.press("Enter")
        wait_for(bob, "() => !window.veilReview.busy() && !window.veilReview.item()")
        alice.click("text=stats")                          # same tab: the token goes along
        alice.wait_for_selector("#annotators tbody tr")
        rows = alice.inner_text("#annotators tbody")
        assert "alice" in rows and "bob" in rows
        assert alice.errors == [] and bob.errors == []
    assert [r.annotator for r in store.reviews("a.png")] == ["alice", "bob"]
