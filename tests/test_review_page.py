"""The review page in headless Chromium (continued): lives, editing small faces, drawing
inside boxes, confirmations, conflicts, leasing and layout. Screenshots go to
``test-artifacts/``; helpers are those of :mod:`test_review_browser`."""

from __future__ import annotations

from typing import Any

import pytest
from test_review_browser import (
    ARTIFACTS,
    A,
    B,
    C,
    boxes,
    browser,  # noqa: F401 (the module's fixture)
    close_to,
    current_key,
    drag,
    drag_handle,
    open_page,
    screen,
    served,
    wait_for,
)

from veil.boxes import Box

pytest.importorskip("playwright.sync_api")


ASKS_BEFORE_UNLOAD = """() => {
    const e = new Event('beforeunload', {cancelable: true});
    window.dispatchEvent(e);
    return e.defaultPrevented;
}"""


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def test_the_hearts_follow_the_lives_and_the_last_one_says_what_is_at_stake(browser,  # noqa: F811
                                                                             tmp_path):
    images = {"g.png": (300, 240, []), "x.png": (300, 240, [C])}
    with served(tmp_path, images, gold={"g.png": [Box(50, 50, 150, 150)]}, gold_rate=1.0,
                gold_wrong=1.0, lives=2) as (url, _, _):
        page = open_page(browser, url)
        assert page.is_hidden("#stake")
        for lost, left in ((1, 1), (2, 0)):
            assert current_key(page) == "g.png"
            page.keyboard.press("n")  # "no faces": wrong, there is one
            wait_for(page, "() => window.veilReview.locked()")
            assert page.locator("#lives .lost").count() == lost, f"{left} lives left"
            if left == 1:
                assert "Last life" in page.inner_text("#stake")
                assert "sets aside the 0 answers" in page.inner_text("#stake")
            page.keyboard.press("Enter")
            wait_for(page, "() => !window.veilReview.locked() && !window.veilReview.busy()")
        # The last press of Continue started a new batch with full lives.
        assert page.locator("#lives .lost").count() == 0
        assert page.is_hidden("#stake")
        assert page.errors == []
        page.click("text=stats")                         # an admin sees the failed batch
        page.wait_for_selector("#set-aside tbody tr")
        row = page.inner_text("#set-aside tbody tr")
        assert "curator" in row and row.rstrip().endswith("set aside")
        assert "reinstate --batch" in page.inner_text("#set-aside-note")


def drag_with(page: Any, start: tuple[float, float], end: tuple[float, float], *,
              shift: bool = False) -> None:
    """A mouse drag in image pixels, holding Shift if asked."""
    if shift:
        page.keyboard.down("Shift")
    drag(page, start, end)
    if shift:
        page.keyboard.up("Shift")


# -- 4. small faces: the inside of a selected box always moves it ----------------------------


def test_a_small_selected_box_moves_from_its_centre_and_resizes_by_outside_handles(
        browser, tmp_path):  # noqa: F811
    small = [Box(100, 100, 107, 107, 0.9), Box(250, 150, 258, 159, 0.9)]
    with served(tmp_path, {"w.png": (416, 300, small)}) as (url, _, _):
        page = open_page(browser, url)
        scale = page.evaluate("() => window.veilReview.view().scale")
        assert 7 * scale < 4 * 6, "the face is smaller on screen than the old handles"
        page.mouse.click(*screen(page, 103.5, 103.5))
        assert page.evaluate("() => window.veilReview.selected()") == 0
        drag(page, (103.5, 103.5), (123.5, 113.5))      # from its centre: a move
        assert close_to(boxes(page)[0], (120, 110, 127, 117), tol=0.6)
        drag_handle(page, "se", (5, 5))
        assert close_to(boxes(page)[0], (120, 110, 132, 122), tol=0.6)
        for name in ("nw", "n", "ne", "e", "se", "s", "sw", "w"):
            h = page.evaluate(f"() => window.veilReview.handle('{name}')")
            x0, y0 = screen(page, 120, 110)
            x1, y1 = screen(page, 132, 122)
            assert not (x0 < h["x"] < x1 and y0 < h["y"] < y1), f"{name} handle off the box"
        shot(page, "review-small-box.png")
        assert page.errors == []


# -- 5. drawing inside an existing box ----------------------------------------------------------


def test_shift_drag_and_draw_mode_draw_inside_an_existing_box(browser, tmp_path):  # noqa: F811
    big = Box(40, 40, 240, 240, 0.9)
    with served(tmp_path, {"d.png": (320, 280, [big])}) as (url, _, _):
        page = open_page(browser, url)
        drag_with(page, (60, 60), (100, 110), shift=True)
        assert len(boxes(page)) == 2 and close_to(boxes(page)[1], (60, 60, 100, 110))
        assert close_to(boxes(page)[0], (40, 40, 240, 240)), "the big box stayed put"
        page.keyboard.press("r")
        assert page.evaluate("() => window.veilReview.drawMode()")
        assert page.is_visible("#mode")
        drag(page, (150, 150), (200, 210))
        assert len(boxes(page)) == 3 and close_to(boxes(page)[2], (150, 150, 200, 210))
        shot(page, "review-draw-mode.png")
        page.keyboard.press("r")
        assert page.is_hidden("#mode")
        drag(page, (120, 60), (130, 70))                 # a plain drag on the big box moves it
        assert close_to(boxes(page)[0], (50, 50, 250, 250))
        assert page.errors == []


# -- 6. nothing is thrown away without asking; Esc cancels; redo ---------------------------------


def test_many_boxes_and_unsaved_edits_are_never_discarded_without_asking(browser, tmp_path):  # noqa: F811
    crowd = [Box(10 + 30 * (i % 10), 10 + 30 * (i // 10), 30 + 30 * (i % 10),
                 30 + 30 * (i // 10), 0.9) for i in range(59)]
    images = {"crowd.png": (320, 200, crowd), "two.png": (320, 200, [Box(20, 20, 60, 60, 0.9)])}
    with served(tmp_path, images) as (url, store, _):
        page = open_page(browser, url)
        assert current_key(page) == "crowd.png"
        page.keyboard.press("n")
        assert page.evaluate("() => window.veilReview.confirming()")
        assert "discard all 59 boxes" in page.inner_text("#message")
        shot(page, "review-confirm-no-faces.png")
        page.keyboard.press("Escape")
        assert page.is_hidden("#message") and len(boxes(page)) == 59
        assert store.reviews("crowd.png") == []

        # An edit, then Skip: asked; Esc stays; the same key twice goes on.
        page.mouse.click(*screen(page, 20, 20))
        page.keyboard.press("Delete")
        assert page.evaluate("() => window.veilReview.dirty()")
        page.keyboard.press("d")
        assert "unsaved edits" in page.inner_text("#message")
        page.keyboard.press("Escape")
        assert current_key(page) == "crowd.png" and len(boxes(page)) == 58
        page.click("#next")
        assert page.evaluate("() => window.veilReview.confirming()")
        page.keyboard.press("Escape")

        # Esc deselects (never deletes); undo and redo.
        page.mouse.click(*screen(page, 50, 20))
        assert page.evaluate("() => window.veilReview.selected()") >= 0
        page.keyboard.press("Escape")
        assert page.evaluate("() => window.veilReview.selected()") == -1
        assert len(boxes(page)) == 58
        page.keyboard.press("Control+z")
        assert len(boxes(page)) == 59
        page.keyboard.press("Control+Shift+z")
        assert len(boxes(page)) == 58
        page.keyboard.press("Control+z")
        page.keyboard.press("Control+y")
        assert len(boxes(page)) == 58

        # Reloading or closing the tab with unsaved edits makes the browser ask: the page
        # cancels "beforeunload" (headless Chromium shows no dialog for it, so the event is
        # sent by hand).
        assert page.evaluate(ASKS_BEFORE_UNLOAD)
        page.close()

        page = open_page(browser, url)
        assert current_key(page) == "crowd.png"
        page.keyboard.press("n")
        page.keyboard.press("n")                         # yes: no faces
        wait_for(page, "() => window.veilReview.item().key === 'two.png'"
                       " && !window.veilReview.busy()")
        (review,) = store.reviews("crowd.png")
        assert review.boxes == ()
        assert not page.evaluate(ASKS_BEFORE_UNLOAD), "nothing unsaved: no question"
        page.keyboard.press("n")                         # one box: no question
        wait_for(page, "() => !window.veilReview.busy() && !window.veilReview.item()")
        assert page.errors == []


# -- 7. a conflict shows the other reviewer's boxes in their own style -------------------------


def test_a_conflict_draws_the_other_reviewers_boxes_apart_and_says_what_differs(
        browser, tmp_path):  # noqa: F811
    images = {"a.png": (400, 300, [A, B])}
    with served(tmp_path, images, tokens=("alice", "bob"), lease_minutes=0) as (
            url, _, tokens):
        alice = open_page(browser, f"{url}/#token={tokens['alice']}")
        bob = open_page(browser, f"{url}/#token={tokens['bob']}")
        drag(alice, (300, 200), (360, 260))              # alice adds a face
        alice.keyboard.press("Enter")
        wait_for(alice, "() => !window.veilReview.busy() && !window.veilReview.item()")
        bob.mouse.click(*screen(bob, 230, 95))           # bob deletes B and saves
        bob.keyboard.press("Delete")
        bob.keyboard.press("Enter")
        wait_for(bob, "() => window.veilReview.conflict()")
        assert bob.evaluate("() => window.veilReview.conflict()") == {"theirsOnly": 2,
                                                                      "mineOnly": 0}
        text = bob.inner_text("#message")
        assert "alice’s boxes (3)" in text and "2 boxes only in theirs" in text
        assert bob.is_visible("#legend-theirs")
        # The box only alice has is drawn in the reviewer colour, not the "uncertain" one.
        x, y = screen(bob, 330, 200)
        rect = bob.evaluate("() => { const r = document.getElementById('canvas')"
                            ".getBoundingClientRect(); return [r.left, r.top]; }")
        pixels = bob.evaluate(
            f"() => Array.from(document.getElementById('canvas').getContext('2d')"
            f".getImageData({x - rect[0] - 2}, {y - rect[1] - 3}, 5, 7).data)")
        colours = {tuple(pixels[i:i + 3]) for i in range(0, len(pixels), 4)}
        assert any(r > 200 and g < 140 and b > 200 for r, g, b in colours), colours
        shot(bob, "review-conflict-theirs.png")
        bob.click("text=Use theirs")
        assert bob.is_hidden("#legend-theirs") and len(boxes(bob)) == 3
        assert alice.errors == [] and bob.errors == []


# -- 9. minimap when zoomed, and the layout at 1024x640 ------------------------------------------


def test_the_layout_fits_1024x640_and_a_minimap_shows_where_you_are(browser, tmp_path):  # noqa: F811
    images = {"m.png": (800, 600, [Box(100, 100, 110, 112, 0.3), A, B])}
    with served(tmp_path, images, gold_rate=0.0) as (url, _, _):
        page = browser.new_page(viewport={"width": 1024, "height": 640})
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.goto(url)
        wait_for(page, "() => window.veilReview && window.veilReview.item()"
                       " && !window.veilReview.busy()")
        layout = page.evaluate("""() => {
            const header = document.querySelector('header');
            const tops = Array.from(header.children).filter((e) => e.offsetParent)
                .map((e) => e.getBoundingClientRect().top);
            const aside = document.querySelector('aside');
            const help = document.querySelector('.help').getBoundingClientRect();
            return {rows: Math.max(...tops) - Math.min(...tops), header: header.offsetHeight,
                    helpBottom: help.bottom, height: window.innerHeight,
                    asideOverflow: aside.scrollHeight - aside.clientHeight,
                    pageOverflow: document.documentElement.scrollWidth - window.innerWidth};
        }""")
        shot(page, "review-1024x640.png")
        assert layout["rows"] < 12 and layout["header"] < 56, layout
        assert layout["helpBottom"] <= layout["height"] and layout["asideOverflow"] <= 0, layout
        assert layout["pageOverflow"] <= 0, layout
        assert page.is_hidden("#minimap")
        x, y = screen(page, 105, 106)
        page.mouse.move(x, y)
        for _ in range(8):
            page.mouse.wheel(0, -400)
        wait_for(page, "() => !document.getElementById('minimap').hidden")
        shown = [float(v) for v in page.get_attribute("#minimap", "data-view").split(",")]
        assert shown[0] <= 105 <= shown[2] and shown[1] <= 106 <= shown[3], shown
        assert shown[2] - shown[0] < 200, "the outline is the zoomed part"
        shot(page, "review-minimap.png")
        before = page.evaluate("() => window.veilReview.view().ox")
        box = page.locator("#minimap").bounding_box()
        page.mouse.click(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3)
        assert page.evaluate("() => window.veilReview.view().ox") < before, "went right"
        page.keyboard.press("f")
        assert page.is_hidden("#minimap")
        assert page.errors == []
