"""`veil report RUN`: the study as one self-contained HTML page.

Reads RUN/analysis/summary.json (running the analysis first when it is missing), inlines
every plot and a few validation images before and after obfuscation, and says in plain
words what each comparison found, with its confidence interval.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veil import __version__
from veil.analysis.correlation import CAPTION as CORRELATION_CAPTION
from veil.analysis.tables import fmt, fmt_ci, fmt_mean_sem, fmt_p
from veil.html import render, thumbnail_uri

REPORT_NAME = "report.html"


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None or math.isnan(float(value)) else f"{100 * float(value):.1f}%"


def _overall_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        group = groups.setdefault(f"{r['method']}|{r['comparison']}", {
            "title": r["label"], "method": r["method"], "rows": [],
            "paper": ({"blur": "the paper's Table 3", "overlay": "the paper's Table B"}
                      .get(r["method"]) if r["comparison"] == "obfuscated" else None)})
        cells = {"arch": r["arch"], "seeds": len(r["seeds"]),
                 "mcnemar": fmt_p(_num(r.get("mcnemar_p_max")))}
        for metric in ("top1", "top5"):
            m = r[metric]
            cells[metric] = {
                "original": fmt_mean_sem(_num(m["original"]), _num(m["original_sem"])),
                "obfuscated": fmt_mean_sem(_num(m["obfuscated"]), _num(m["obfuscated_sem"])),
                "drop": fmt(_num(m["drop"])),
                "ci": fmt_ci(_num(m["ci_low"]), _num(m["ci_high"])),
                "p": fmt_p(_num(m.get("p_adjusted"))),
                "verdict": m["verdict"],
            }
        group["rows"].append(cells)
    return list(groups.values())


def _transfer_groups(section: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The transfer table by task and mode, numbers formatted (see veil.analysis.transfer)."""
    from veil.analysis.transfer import METRIC_LABELS

    groups: dict[str, dict[str, Any]] = {}
    for r in (section or {}).get("rows") or []:
        group = groups.setdefault(f"{r['task']}|{r['mode']}", {
            "task": r["task"], "mode": r["mode"], "rows": []})
        group["rows"].append({
            "arch": r["arch"], "method": r["method"], "seeds": len(r["seeds"]),
            "metric": METRIC_LABELS.get(r["metric"], r["metric"]),
            "original": fmt_mean_sem(_num(r["original"]), _num(r["original_sem"]), 2),
            "obfuscated": fmt_mean_sem(_num(r["obfuscated"]), _num(r["obfuscated_sem"]), 2),
            "drop": fmt(_num(r["drop"]), 2),
            "ci": fmt_ci(_num(r["ci_low"]), _num(r["ci_high"]), 2) if r["primary"] else "n/a",
            "p": fmt_p(_num(r.get("p_holm"))) if r["primary"] else "n/a",
            "verdict": r["verdict"]})
    return list(groups.values())


def _examples(run: Any, count: int, faces: str | None
              ) -> tuple[list[dict[str, Any]], str | None]:
    """A few validation images with faces, original and per method; or why not."""
    from veil.analysis.examples import obfuscated, pick_examples
    from veil.errors import VeilError

    if count <= 0:
        return [], None
    try:
        examples, _ = pick_examples(run, count, faces)
    except VeilError as exc:
        return [], f"example images skipped: {exc}"
    names = run.class_names()
    out = []
    for ex in examples:
        out.append({
            "key": ex.key, "label": names[ex.label], "faces": len(ex.boxes),
            "original": thumbnail_uri(ex.original, max_side=300),
            "methods": [{"name": m, "uri": thumbnail_uri(obfuscated(ex, run, m), max_side=300)}
                        for m in run.methods],
        })
    return out, None


def build_report(run_dir: str | Path, out: str | Path | None = None, *,
                 examples: int = 4, faces: str | None = None,
                 analyze_options: Any = None, demo: bool = False) -> Path:
    """Write the HTML report of RUN (default RUN/report.html); returns its path.

    ``demo``: the run is `make demo`'s miniature study; the page says that it shows the
    mechanics, not a finding."""
    from veil.analysis import ANALYSIS_DIR, SUMMARY, analyze, load_run

    run = load_run(run_dir)
    analysis_dir = run.root / ANALYSIS_DIR
    if not (analysis_dir / SUMMARY).is_file():
        if analyze_options is None:
            from veil.analysis import AnalyzeOptions

            analyze_options = AnalyzeOptions(faces=faces)
        analyze(run.root, analysis_dir, analyze_options)
    summary = json.loads((analysis_dir / SUMMARY).read_text(encoding="utf-8"))

    def plot(name: str) -> str | None:
        path = analysis_dir / name
        return _png_uri(path) if path.is_file() else None

    per_category = []
    for method, data in (summary.get("per_category") or {}).items():
        basis = "ap_drop" if data["ranked_by"] == "ap_drop" else "top1_drop"
        q = "ap" if basis == "ap_drop" else "top1"

        def ranked(r: dict[str, Any], basis: str = basis, q: str = q) -> dict[str, Any]:
            return {"name": r["name"], "drop": fmt(_num(r[basis]), 2),
                    "top1": fmt(_num(r["top1_drop"]), 2),
                    "faces_train": _pct(r.get("share_with_faces")),
                    "faces_val": _pct(r.get("share_with_faces_val")),
                    "p": fmt_p(_num(r.get(f"{q}_p_bh"))), "reading": r.get(f"{q}_reading", "")}

        quantities = ["top1", "top5"] + (["ap"] if data["ap_available"] else [])
        per_category.append({
            "method": method, "basis": "AP" if basis == "ap_drop" else "top-1",
            "ap_available": data["ap_available"], "ap_source": data.get("ap_source", "probs"),
            "paper_quantities": [{"top1": "top-1", "top5": "top-5", "ap": "AP"}[x]
                                 for x in quantities],
            "paper": [{"category": r["category"], "cells": [
                c for x in quantities for c in (
                    fmt_mean_sem(_num(r[f"{x}_original"][0]), _num(r[f"{x}_original"][1])),
                    fmt_mean_sem(_num(r[f"{x}_obfuscated"][0]),
                                 _num(r[f"{x}_obfuscated"][1])),
                    fmt(_num(r[f"{x}_original"][0]) - _num(r[f"{x}_obfuscated"][0])))]}
                for r in data.get("paper_categories") or []],
            "most": [ranked(r) for r in data["most_affected"]],
            "least": [ranked(r) for r in data["least_affected"]],
            "lookalikes": [{"a": p["name_a"], "b": p["name_b"], "reason": p["reason"],
                            "top1_a": fmt(_num(p["top1_drop_a"]), 2),
                            "top1_b": fmt(_num(p["top1_drop_b"]), 2),
                            "ap_a": fmt(_num(p["ap_drop_a"]), 2),
                            "ap_b": fmt(_num(p["ap_drop_b"]), 2)} for p in data["lookalikes"]],
            "definition": data["lookalike_definition"],
            "plot": plot(f"affected_{method}.png"),
            "correlation_plot": plot(f"correlation_{method}.png"),
        })
    face_stats = summary.get("faces")
    example_rows, example_note = _examples(run, examples, faces)
    notes = list(summary.get("notes") or [])
    if example_note:
        notes.append(example_note)
    destination = Path(out) if out is not None else run.root / REPORT_NAME
    from veil.analysis.pipeline import face_matching_lines
    from veil.analysis.stats import ONE_SEED_NOTE
    from veil.analysis.transfer import TRANSFER_CAPTION

    one_seed = sorted({r["arch"] for r in summary["overall"]
                       if r["arch"] != "average" and len(r["seeds"]) < 2})
    return render(
        "study.html", destination,
        version=__version__, created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        run=str(run.root), study=summary["study"], settings=summary["settings"],
        sentences=summary["sentences"], overall=_overall_groups(summary["overall"]),
        drops_plot=plot("overall_drops.png"), per_category=per_category, faces=face_stats,
        faces_plots=[p for p in (plot("faces_per_category.png"), plot("faces_per_image.png"))
                     if p],
        correlation=[{**r, "spearman_s": fmt(_num(r["spearman"])),
                      "spearman_p_s": fmt_p(_num(r.get("spearman_p_bh", r["spearman_p"]))),
                      "pearson_s": fmt(_num(r["pearson"])),
                      "pearson_p_s": fmt_p(_num(r.get("pearson_p_bh", r["pearson_p"])))}
                     for r in summary.get("correlation") or []],
        correlation_caption=CORRELATION_CAPTION,
        gradcam={**summary["gradcam"],
                 "images": [u for u in (plot(f) for f in summary["gradcam"]["files"]) if u]},
        examples=example_rows, notes=notes,
        transfer=_transfer_groups(summary.get("transfer")), transfer_plot=plot("transfer.png"),
        pct=lambda v: "n/a" if v is None else f"{100 * v:.1f}%",
        demo=demo,
        face_matching=face_matching_lines((summary.get("study") or {}).get("face_matching")),
        one_seed=f"{', '.join(one_seed)}: {ONE_SEED_NOTE}" if one_seed else None,
        transfer_caption=TRANSFER_CAPTION,
    )
