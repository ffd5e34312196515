"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# -- face store: every store test runs on SQLite and on PostgreSQL ----------------------------

POSTGRES_URL_ENV = "VEIL_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "VEIL_REQUIRE_POSTGRES"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL (or path) of an empty face store, private to the test.

    PostgreSQL runs when ``VEIL_TEST_POSTGRES_URL`` names a database (``bash
    .ci/postgres.sh`` prints one); each test gets a fresh schema there, dropped
    afterwards. Without it the PostgreSQL case is skipped, or fails when
    ``VEIL_REQUIRE_POSTGRES=1`` (CI must not pass by skipping).
    """
    if request.param == "sqlite":
        yield str(tmp_path / "faces.sqlite")
        return
    base = os.environ.get(POSTGRES_URL_ENV)
    if not base:
        reason = (
            f"PostgreSQL store tests need {POSTGRES_URL_ENV} "
            f"(export {POSTGRES_URL_ENV}=$(bash .ci/postgres.sh))"
        )
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}")
        pytest.skip(reason)
    yield from _postgres_schema(base)


def _postgres_schema(base: str) -> Iterator[str]:
    """A fresh schema in the test database, first on the search path of the URL given."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    schema = f"veil_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '20s'"))
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[object]:
    """An open :class:`veil.store.FaceStore` on each backend, closed after the test."""
    from veil.store import FaceStore

    with FaceStore(store_url) as opened:
        yield opened


# -- shared data: the real data sets beside the repository ------------------------------------


def shared_root() -> Path:
    """``$VEIL_SHARED``, default ``../shared`` next to the repository."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared"
    return Path(os.environ.get("VEIL_SHARED", default))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder; tests that need it fail loudly when it is missing."""
    root = shared_root()
    if not (root / "data").is_dir():
        pytest.fail(f"shared data not found at {root}; set VEIL_SHARED")
    return root


@pytest.fixture(scope="session")
def wider(shared: Path) -> Path:
    """The WIDER FACE val sample (97 images and faces.json); fails loudly when missing."""
    root = shared / "data" / "wider-face-val-416"
    if not (root / "faces.json").is_file():
        pytest.fail(f"WIDER FACE sample not found at {root}; set VEIL_SHARED")
    return root


@pytest.fixture(scope="session")
def detect_cv() -> object:
    """``benchmarks/detect_cv.py`` as a module: tests check that the cross-validation
    replays what the detector runs."""
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import detect_cv
    finally:
        sys.path.remove(benchmarks)
    return detect_cv


def _run_fresh(script: str) -> str:
    """``script``'s stdout, run by a fresh interpreter that imports this checkout's veil
    (what a new process pays, e.g. which modules it loads, cannot be seen in this one)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def fresh_python() -> Callable[[str], str]:
    """Run a script in a fresh interpreter and get its stdout (:func:`_run_fresh`)."""
    return _run_fresh
