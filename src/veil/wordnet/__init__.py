"""WordNet facts for the ILSVRC-2012 classes, offline.

The paper groups ImageNet categories into supercategories through WordNet (Table 2).
veil ships the few facts that needs (``imagenet_hierarchy.json``, made by
``scripts/make_wordnet_hierarchy.py`` from WordNet 3.0), so analysis needs neither NLTK
nor a download.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

HIERARCHY_FILE = "imagenet_hierarchy.json"


@dataclass(frozen=True)
class Hierarchy:
    """The 1000 classes (wnid -> name, synset, direct hypernyms, one hypernym path,
    supercategories) and every ancestor node (wnid -> synset name, direct hypernyms)."""

    classes: dict[str, dict[str, Any]]
    nodes: dict[str, dict[str, Any]]
    supercategories: tuple[str, ...]  # NLTK-style synset names, the paper's Table 2 order

    def __contains__(self, wnid: object) -> bool:
        return wnid in self.classes

    def name(self, wnid: str) -> str:
        return str(self.classes[wnid]["name"])

    def synset(self, wnid: str) -> str:
        entry = self.classes.get(wnid) or self.nodes[wnid]
        return str(entry["synset"])

    def path(self, wnid: str) -> list[str]:
        """One hypernym path from the class up to ``entity.n.01`` (wnids)."""
        return list(self.classes[wnid]["path"])

    def ancestors(self, wnid: str) -> set[str]:
        """Every ancestor through all hypernyms (a synset may have several parents)."""
        seen: set[str] = set()
        stack = list(self.classes[wnid]["hypernyms"])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(self.nodes[node]["hypernyms"])
        return seen

    def supercategories_of(self, wnid: str) -> list[str]:
        """The paper's supercategories (synset names) the class falls under; may be empty."""
        return list(self.classes[wnid]["supercategories"])


@functools.cache
def load_hierarchy() -> Hierarchy:
    """The shipped hierarchy (read once per process)."""
    text = resources.files(__package__).joinpath(HIERARCHY_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    return Hierarchy(
        classes=data["classes"],
        nodes=data["nodes"],
        supercategories=tuple(s["synset"] for s in data["supercategories"]),
    )


__all__ = ["Hierarchy", "load_hierarchy"]
