"""A team's review over days: restarts with stored settings, one answer per image
with k=1, failed batches that can be inspected and reinstated (CLI and real server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_review_api import detect, make_dataset, review_server

from veil.cli import main
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
    return CliRunner().invoke(main, list(args))


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
    assert again.exit_code == 1 and "--rotate" in again.output, "a link is shown once"


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
