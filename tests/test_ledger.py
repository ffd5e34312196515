"""The run ledger (stdlib sqlite3) is a face store file: same tables, same values."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from veil.runner import prepare_run
from veil.store import FaceStore, RunItem, RunLedger
from veil.store.ledger import LEDGER_DDL
from veil.store.schema import images_t, meta_t, run_items_t, runs_t, shards_t


def _normalised(statement: str) -> str:
    return re.sub(r"\s+", " ", statement.replace("\\\n", "")).strip()


def test_ledger_ddl_is_the_face_stores() -> None:
    """Hand-kept DDL would drift from the SQLAlchemy schema; this compiles both."""
    compiled = []
    for table in (meta_t, images_t, runs_t, shards_t, run_items_t):
        compiled.append(str(CreateTable(table).compile(dialect=sqlite.dialect())))
        compiled += [str(CreateIndex(ix).compile(dialect=sqlite.dialect()))
                     for ix in sorted(table.indexes, key=lambda ix: ix.name or "")]
    assert [_normalised(s) for s in LEDGER_DDL] == [_normalised(s) for s in compiled]


def _record(ledger: RunLedger | FaceStore) -> int:
    run_id, done = prepare_run(ledger, "obfuscate", {"method": "blur", "n": 3},
                               ["a.jpg", "b.jpg", "c.jpg"], shard_size=2)
    assert done == 0
    ledger.complete_shard(run_id, 0, items=[
        RunItem("a.jpg", info={"action": "obfuscated", "faces": 1, "regions": [[1, 2, 3, 4]]}),
        RunItem("b.jpg", status="error", error="cannot decode")], seconds=0.5)
    return run_id


def test_face_store_reads_what_the_ledger_wrote(tmp_path: Path) -> None:
    path = tmp_path / "out.veil-ledger.sqlite"
    with RunLedger(path) as ledger:
        run_id = _record(ledger)
        ledger.fail_shard(run_id, 1, "killed")
        ledger.finish_run(run_id, "failed", timings={"seconds": 1.5})
        written_runs, written_items = ledger.runs("obfuscate"), ledger.run_items(run_id)
    with FaceStore(path, create=False) as store:
        assert store.runs("obfuscate") == written_runs
        assert store.run_items(run_id) == written_items
        assert store.pending_shards(run_id) == [(1, ["c.jpg"])]
        assert store.find_resumable_run("obfuscate", {"n": 3, "method": "blur"}) == run_id
    run = written_runs[0]
    assert (run.status, run.shards_total, run.shards_done, run.shards_failed) == (
        "failed", 2, 1, 1)
    assert run.timings == {"seconds": 1.5} and run.created_at.tzinfo is not None


def test_ledger_resumes_a_run_a_face_store_recorded(tmp_path: Path) -> None:
    """A ledger written by an older veil (through FaceStore) resumes here."""
    path = tmp_path / "old.sqlite"
    with FaceStore(path) as store:
        run_id = _record(store)
        store.finish_run(run_id, "interrupted")
        old_items = store.run_items(run_id)
    with RunLedger(path) as ledger:
        again, done = prepare_run(ledger, "obfuscate", {"method": "blur", "n": 3},
                                  ["a.jpg", "b.jpg", "c.jpg"], shard_size=2)
        assert (again, done) == (run_id, 1)
        assert ledger.run_items(run_id) == old_items
        ledger.complete_shard(run_id, 1, items=[RunItem("c.jpg", info={"action": "copied"})])
        ledger.complete_shard(run_id, 1, items=[RunItem("c.jpg")])  # a duplicate: ignored
        assert [i.key for i in ledger.run_items(run_id)] == ["a.jpg", "b.jpg", "c.jpg"]
        assert ledger.run_items(run_id)[-1].info == {"action": "copied"}


def test_ledger_refuses_bad_records(tmp_path: Path) -> None:
    with RunLedger(tmp_path / "l.sqlite") as ledger:
        run_id = ledger.start_run("obfuscate", {}, [["a"]])
        with pytest.raises(ValueError, match="appears twice"):
            ledger.complete_shard(run_id, 0, items=[RunItem("a"), RunItem("a")])
        with pytest.raises(ValueError, match="status"):
            ledger.complete_shard(run_id, 0, items=[RunItem("a", status="weird")])
        with pytest.raises(ValueError, match="face store"):
            ledger.complete_shard(run_id, 0, detections={"a": []})
        assert ledger.pending_shards(run_id) == [(0, ["a"])]  # nothing half-written


def test_obfuscate_starts_without_sqlalchemy(tmp_path: Path) -> None:
    """Start-up is a target (issue 14): with a faces file, `veil obfuscate` must not load
    SQLAlchemy (~0.4 s) for its ledger."""
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(data / "a.jpg")
    faces = tmp_path / "faces.json"
    faces.write_text(json.dumps([{"url": "a.jpg", "bboxes": [
        {"x0": 8, "y0": 8, "x1": 40, "y1": 40}]}]))
    script = (
        "import sys\n"
        "from veil.cli import main\n"
        f"sys.argv = ['veil', 'obfuscate', {str(data)!r}, '--faces', {str(faces)!r}, '--out', "
        f"{str(tmp_path / 'out')!r}, '--no-progress']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'torch', 'onnxruntime', 'numba', 'pyarrow'))\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert "LOADED []" in result.stdout, result.stdout + result.stderr
    assert (tmp_path / "out" / "a.jpg").is_file()
