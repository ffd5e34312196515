"""The top-level Python API: every advertised name resolves, and it works end to end."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import veil
import veil.errors


@pytest.mark.parametrize("name", sorted(set(veil.__all__) - {"__version__"}))
def test_every_public_name_is_a_documented_veil_callable_of_that_name(name):
    value = getattr(veil, name)
    assert callable(value), f"veil.{name} is {value!r}"
    assert value.__name__ == name, f"veil.{name} is an alias of {value.__name__}"
    assert value.__module__.startswith("veil."), value.__module__
    assert (value.__doc__ or "").strip(), f"veil.{name} has no docstring"
    assert name in dir(veil)


def test_type_checkers_see_every_lazy_name_where_it_loads_from():
    """veil/__init__.py's `if TYPE_CHECKING:` imports name the same objects as the lazy
    table, so mypy and editors know what `veil.detect` is."""
    tree = ast.parse(Path(veil.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {alias.name: f"{node.module}:{alias.name}" for node in block.body
            for alias in node.names}
    lazy = {name: getattr(veil, name) for name in set(veil.__all__) - {"Box", "__version__"}}
    assert set(seen) == set(lazy)
    for name, target in seen.items():
        module, _, attribute = target.partition(":")
        assert getattr(importlib.import_module(module), attribute) is lazy[name], name


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        veil.nope  # noqa: B018


def test_import_veil_does_not_load_torch_or_onnxruntime():
    code = "import sys, veil; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_the_docstring_pipeline_runs(tmp_path):
    data_dir = tmp_path / "photos"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(
            data_dir / f"{i}.png")
    data = veil.open_dataset(data_dir)
    faces = {entry.key: [veil.Box(10, 10, 30, 40)] for entry in data.entries}
    summary = veil.obfuscate_dataset(data, veil.load_faces(faces), tmp_path / "out",
                                     progress=False)
    assert summary.ok
    source = np.asarray(Image.open(data_dir / "0.png"))
    written = np.asarray(Image.open(tmp_path / "out" / "0.png"))
    assert (written != source).any()  # the face was blurred
    assert (written[50:, 50:] == source[50:, 50:]).all()  # far from it nothing changed
    assert np.array_equal(written, veil.obfuscate(source, faces["0.png"], "blur"))


def test_audit_finds_the_obfuscated_regions_in_the_outputs_ledger(tmp_path):
    """A face left visible is found; the same face once blurred is not, with no regions
    passed: the audit reads them from the ledger `obfuscate_dataset` wrote."""
    from skimage import data as samples

    (tmp_path / "photos").mkdir()
    Image.fromarray(samples.astronaut()).save(tmp_path / "photos" / "astronaut.png")
    data = veil.open_dataset(tmp_path / "photos")
    face = veil.Box(170, 30, 300, 200)
    veil.obfuscate_dataset(data, veil.load_faces({"astronaut.png": [face]}),
                           tmp_path / "blurred", progress=False, workers=1)
    veil.obfuscate_dataset(data, veil.load_faces({"astronaut.png": []}),
                           tmp_path / "copied", progress=False, workers=1)
    clean = veil.audit(veil.open_dataset(tmp_path / "blurred"), source=data, progress=False,
                       workers=1)
    leaky = veil.audit(veil.open_dataset(tmp_path / "copied"), source=data, progress=False,
                       workers=1)
    assert clean.counts["residual faces"] == 0 and clean.clean
    assert leaky.counts["residual faces"] >= 1 and not leaky.clean
    assert leaky.findings[0].key == "astronaut.png"
    assert "obfuscate ledger" in clean.regions_source

    # the report `veil audit` writes, from the library
    written = leaky.write_json(tmp_path / "leaky.json")
    report = json.loads(written.read_text())
    assert report == leaky.to_json()
    assert report["clean"] is False and report["target"] == str(tmp_path / "copied")
    faces = [f for f in report["findings"] if f["kind"] == "face"]
    assert faces and {f["key"] for f in faces} == {"astronaut.png"}
    assert all(len(f["box"]) == 4 and f["score"] >= 0.5 for f in faces)
    html = leaky.write_html(tmp_path / "leaky.html").read_text()
    assert "Not clean" in html and "astronaut.png" in html
    # a crop of the output and one of the source per residual face
    assert html.count("data:image/jpeg;base64,") == 2 * len(faces)
    assert "Clean: every check ran" in clean.write_html(tmp_path / "clean.html").read_text()
    with pytest.raises(veil.errors.VeilError, match="no finished obfuscate run there"):
        veil.audit(veil.open_dataset(tmp_path / "copied"), ledger=tmp_path / "none.sqlite",
                   progress=False, workers=1)
