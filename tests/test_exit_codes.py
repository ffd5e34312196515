"""One exit-code table for every verb: 0 ok, 1 findings or failed inputs, 2 usage or
configuration error, 130 interrupted (veil.cli.exit_codes), so a release gate can tell a
typo from a leak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from corpus import identifying_exif, jpeg_bytes
from PIL import Image

from veil.cli import VERBS, exit_codes, main
from veil.errors import VeilError
from veil.store import FaceStore


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a one-image dataset (ds/), an empty face store and nothing at nope."""
    root = tmp_path_factory.mktemp("exit")
    (root / "ds").mkdir()
    Image.new("RGB", (32, 32), (90, 90, 90)).save(root / "ds" / "a.png")
    FaceStore(root / "store.sqlite").close()
    return root


# verb -> (a missing input path, a bad option value, what the bad value's message says);
# "{p}" is the folder of the `place` fixture.
CASES: dict[str, tuple[list[str], list[str], str]] = {
    "demo": (["--data", "{p}/nope"], ["--limit", "0"], "--limit"),
    "detect": (["{p}/nope"], ["{p}/ds", "--scales", "0,x"], "--scales"),
    "review": (["{p}/nope", "--store", "{p}/store.sqlite"],
               ["add-annotator", "veil:root", "--store", "{p}/store.sqlite"], "annotator name"),
    "obfuscate": (["{p}/nope", "--faces", "{p}/store.sqlite", "--out", "{p}/out"],
                  ["{p}/ds", "--faces", "{p}/store.sqlite", "--out", "{p}/out", "-o", "nokey"],
                  "must look like key=value"),
    "audit": (["{p}/nope"], ["{p}/ds", "--min-score", "2"], "--min-score"),
    "eval-faces": (["{p}/nope.json", "{p}/store.sqlite"],
                   ["{p}/store.sqlite", "{p}/store.sqlite", "--iou", "0"], "--iou"),
    "import-faces": (["{p}/nope.json", "--store", "{p}/store.sqlite"],
                     ["{p}/store.sqlite", "--store", "{p}/i.sqlite", "--format", "xml"],
                     "--format"),
    "export-faces": (["--store", "{p}/nope/x.sqlite", "--format", "paper", "--out", "{p}/e.json"],
                     ["--store", "{p}/store.sqlite", "--format", "xml", "--out", "{p}/e.json"],
                     "--format"),
    "study": (["--data", "{p}/nope", "--faces", "{p}/store.sqlite", "--out", "{p}/s"],
              ["--data", "{p}/ds", "--faces", "{p}/store.sqlite", "--out", "{p}/s",
               "--methods", "smudge"], "unknown method 'smudge'"),
    "transfer": (["--run", "{p}/nope", "--task", "cifar10", "--data", "{p}/ds"],
                 ["--run", "{p}/ds", "--task", "cifar10", "--data", "{p}/ds", "--seeds", "x"],
                 "--seeds 'x'"),
    "analyze": (["{p}/nope"], ["{p}/ds", "--bootstrap", "1"], "--bootstrap"),
    "report": (["{p}/nope"], ["{p}/ds", "--examples", "-1"], "--examples"),
}


def _invoke(place: Path, args: list[str]) -> tuple[int, str]:
    # CliRunner calls main() in standalone mode, as the `veil` entry point does
    result = CliRunner().invoke(main, [a.format(p=place) for a in args])
    return result.exit_code, result.output


def test_every_verb_is_covered() -> None:
    assert set(CASES) == set(VERBS)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_typo_a_missing_input_and_a_bad_value_are_usage_errors(place: Path, verb: str) -> None:
    missing, bad, bad_message = CASES[verb]
    code, out = _invoke(place, [verb, "--no-such-flag"])
    assert (code, "No such option '--no-such-flag'" in out) == (exit_codes.USAGE, True), out
    code, out = _invoke(place, [verb, *missing])
    assert code == exit_codes.USAGE and "nope" in out, out
    code, out = _invoke(place, [verb, *bad])
    assert code == exit_codes.USAGE and bad_message in out, out


def test_audit_findings_exit_1_and_a_clean_audit_0(place: Path, tmp_path: Path) -> None:
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    flat = Image.new("RGB", (48, 48), (120, 120, 120))
    (leaky / "gps.jpg").write_bytes(jpeg_bytes(flat, exif=identifying_exif()))
    code, out = _invoke(place, ["audit", str(leaky), "--report", str(tmp_path / "a.html"),
                                "--workers", "1", "--no-progress"])
    assert code == exit_codes.FINDINGS and "NOT CLEAN" in out, out
    photos = tmp_path / "photos"
    photos.mkdir()
    flat.save(photos / "flat.png")
    faces = tmp_path / "faces.json"
    faces.write_text(json.dumps([{"url": "flat.png", "bboxes": []}]))
    clean = tmp_path / "clean"
    code, out = _invoke(place, ["obfuscate", str(photos), "--faces", str(faces), "--out",
                                str(clean), "--workers", "1", "--no-progress"])
    assert code == exit_codes.OK, out
    code, out = _invoke(place, ["audit", str(clean), "--report", str(tmp_path / "b.html"),
                                "--workers", "1", "--no-progress"])
    assert code == exit_codes.OK and "CLEAN" in out, out
    (clean / "flat.png").write_bytes(jpeg_bytes(flat))  # not the file veil wrote
    code, out = _invoke(place, ["audit", str(clean), "--report", str(tmp_path / "c.html"),
                                "--workers", "1", "--no-progress"])
    assert code == exit_codes.FINDINGS and "changed since veil obfuscate wrote it" in out, out


@click.command()
def _interrupted() -> None:
    raise KeyboardInterrupt


@click.command()
def _misconfigured() -> None:
    raise VeilError("the store says no")


def test_ctrl_c_exits_130_and_an_escaped_veil_error_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(VERBS, "interrupted", f"{__name__}:_interrupted")
    monkeypatch.setitem(VERBS, "misconfigured", f"{__name__}:_misconfigured")
    result = CliRunner().invoke(main, ["interrupted"])
    assert result.exit_code == exit_codes.INTERRUPTED and "interrupted" in result.output
    result = CliRunner().invoke(main, ["misconfigured"])
    assert result.exit_code == exit_codes.USAGE
    assert result.output == "Error: the store says no\n", "one line, no traceback"


def test_the_installed_entry_point_uses_the_table(place: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "veil", "detect", str(place / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == exit_codes.USAGE, done.stderr
    assert "dataset not found" in done.stderr
    help_text = subprocess.run([sys.executable, "-m", "veil", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    assert "Exit codes (every verb)" in help_text and "130" in help_text
