"""No module of veil reaches into another's private names (issue 15, point 4).

A leading underscore is how a veil module says "not part of my contract": it may
change without notice. So code outside a module never imports such a name
(``from veil.store.store import _now``) nor reads one off another object
(``self.store._write()``); what it needs is made public, where the owner can keep it
working. This test reads the source (no imports run) and lists every breach.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "veil"

#: Private names veil deliberately uses although another module owns them, with why.
#: Attributes of objects from outside veil (any file): attribute -> reason.
FOREIGN_ALLOWED = {
    "_new": "Pillow's Image._new wraps decoded pixels without a copy; the Pillow "
    "versions are bounded in pyproject.toml",
}
#: (file relative to src/veil, name) -> reason.
ALLOWED: dict[tuple[str, str], str] = {}

#: Underscore names that are public API of the standard library.
STDLIB_PUBLIC = {"_replace", "_asdict", "_fields", "_make", "_exit", "_getframe"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_veil_import(node: ast.ImportFrom) -> bool:
    return bool(node.level) or (node.module or "").split(".")[0] == "veil"


def _allowed(rel: str, name: str) -> bool:
    return name in STDLIB_PUBLIC or name in FOREIGN_ALLOWED or (rel, name) in ALLOWED


def _breaches(path: Path) -> list[str]:
    """Private names ``path`` takes from elsewhere: imported from a veil module, or read
    off any object but ``self``/``cls``/``super()``/a class of its own."""
    rel = path.relative_to(PACKAGE).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own_classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _is_veil_import(node):
            found.extend(
                f"{rel}:{node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if _private(alias.name) and not _allowed(rel, alias.name)
            )
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in {"self", "cls", *own_classes}:
            continue  # a class reading its own members
        if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
            continue  # a subclass using its base's members
        if not _allowed(rel, node.attr):
            found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_names_across_modules() -> None:
    breaches = [b for path in sorted(PACKAGE.rglob("*.py")) for b in _breaches(path)]
    assert not breaches, "private names used outside their module:\n" + "\n".join(breaches)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from veil.store.store import _BOX_COLUMNS, FaceStore\n", "import _BOX_COLUMNS"),
        ("def f(self):\n    with self.store._write() as c:\n        pass\n",
         "self.store._write"),
        ("from veil.store import sql\nsql._hidden()\n", "sql._hidden"),
        ("def f(store):\n    return store._image_ids(1)\n", "store._image_ids"),
    ],
)
def test_the_check_finds_each_kind_of_breach(tmp_path: Path, source: str, expected: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "veil"
    package.mkdir()
    (package / "probe.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    assert any(expected in b for b in _breaches(package / "probe.py"))


def test_own_members_and_dunders_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "veil"
    package.mkdir()
    (package / "probe.py").write_text(
        "class _T:\n    _fields_ = []\n"
        "class A:\n    def f(self):\n        return self._x, super()._y, A._z, _T._fields_\n"
        "from veil import store as _store\nprint(__name__, _store.__doc__)\n"
    )
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    assert _breaches(package / "probe.py") == []
