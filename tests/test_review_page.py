"""The review page in headless Chromium (continued): lives, editing small faces, drawing
inside boxes, confirmations, conflicts, leasing and layout. Screenshots go to
``test-artifacts/``; helpers are those of :mod:`test_review_browser`."""

from __future__ import annotations

from typing import Any

import pytest
from test_review_browser import (
    ARTIFACTS,
    C,
    browser,  # noqa: F401 (the module's fixture)
    current_key,
    open_page,
    served,
    wait_for,
)

from veil.boxes import Box

pytest.importorskip("playwright.sync_api")


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
