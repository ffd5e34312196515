"""`veil analyze RUN`: every table, plot and number of the study, into RUN/analysis/.

Writes ``overall.{md,csv}`` (Table 3 / Table B with SEM, the seeds-and-images CI, Holm
readings and McNemar),
``per_category_<m>.{md,csv}`` and ``lookalikes_<m>.csv`` (Table 4), ``faces.md``,
``faces_per_category.csv`` and ``supercategories.csv`` (Fig. 2, Table 2),
``correlation.{md,csv}``, the PNG plots, Grad-CAM grids, ``transfer.{md,csv,png}`` when
the run has `veil transfer` outputs (:mod:`veil.analysis.transfer`), and ``summary.json``
with the key numbers for `veil report`. Each part that the run cannot support (no faces.parquet,
no probabilities, no model.pt) is skipped with a note in summary.json, never an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veil import __version__
from veil.analysis import plots
from veil.analysis.correlation import adjust, correlation_markdown, correlations, joined
from veil.analysis.faces import face_stats, faces_markdown
from veil.analysis.gradcam import gradcam_grids
from veil.analysis.overall import overall_frame, overall_markdown, overall_table
from veil.analysis.per_category import (
    DEFAULT_AP_TOLERANCE,
    DEFAULT_SWING,
    flagged_pairs,
    most_least_affected,
    paper_categories,
    per_category,
    per_category_markdown,
)
from veil.analysis.run import StudyRun, load_run
from veil.analysis.stats import INTERVAL_METHOD, MCNEMAR_EXACT_BELOW, ONE_SEED_NOTE
from veil.analysis.tables import write_csv, write_text
from veil.errors import VeilError
from veil.files import atomic_write_bytes

ANALYSIS_DIR = "analysis"
SUMMARY = "summary.json"


@dataclass
class AnalyzeOptions:
    resamples: int = 2000
    bootstrap_seed: int = 0
    level: float = 0.95
    top_k: int = 10
    swing: float = DEFAULT_SWING
    ap_tolerance: float = DEFAULT_AP_TOLERANCE
    gradcam: bool = True
    gradcam_images: int = 6
    gradcam_archs: list[str] | None = None
    faces: str | None = None  # overrides study.json's faces source (Grad-CAM images)
    transfer: list[str] | None = None  # `veil transfer` outputs beyond RUN/transfer/*/


@dataclass
class Analysis:
    out_dir: Path
    summary: dict[str, Any]
    files: list[str] = field(default_factory=list)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _records(frame: Any, columns: list[str]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True))
            for row in frame[columns].itertuples(index=False, name=None)]


def analyze(run_dir: str | Path, out_dir: str | Path | None = None,
            options: AnalyzeOptions | None = None) -> Analysis:
    """Analyse a run folder; returns where it wrote and the summary it wrote."""
    options = options or AnalyzeOptions()
    run = load_run(run_dir)
    if not run.found:
        raise VeilError(f"{run.root} has no predictions yet (runs/*/seed*/train-*/predictions/"
                        "eval-*.parquet)")
    out = Path(out_dir) if out_dir is not None else run.root / ANALYSIS_DIR
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    notes: list[str] = []

    def wrote(path: Path) -> None:
        files.append(path.name)

    # -- overall --------------------------------------------------------------------------
    rows, overall_notes = overall_table(run, level=options.level)
    notes += overall_notes
    one_seed = sorted({r.arch for r in rows if len(r.seeds) < 2 and r.arch != "average"})
    if one_seed:
        notes.insert(0, f"{', '.join(one_seed)}: {ONE_SEED_NOTE}")
    if not rows:
        raise VeilError(f"{run.root}: no arch has predictions for both train-original/"
                        "eval-original and an obfuscated condition")
    wrote(write_csv(out / "overall.csv", overall_frame(rows)))
    wrote(write_text(out / "overall.md", overall_markdown(rows, overall_notes)))
    wrote(plots.plot_drops(rows, out / "overall_drops.png"))
    sentences = [{"arch": r.arch, "method": r.method, "comparison": r.comparison,
                  "label": r.label,
                  "text": f"{r.arch}, {r.label}: {r.sentence('top1')}; {r.sentence('top5')}"}
                 for r in rows]

    # -- faces ----------------------------------------------------------------------------
    faces_summary: dict[str, Any] | None = None
    stats = None
    frame = run.faces()
    if frame is None:
        notes.append("no faces.parquet: face statistics and correlations skipped")
    else:
        stats = face_stats(frame, run.classes)
        faces_summary = stats.summary()
        wrote(write_text(out / "faces.md", faces_markdown(stats)))
        wrote(write_csv(out / "faces_per_category.csv", stats.per_class))
        if stats.supercategories is not None:
            wrote(write_csv(out / "supercategories.csv", stats.supercategories))
        wrote(plots.plot_faces_per_category(stats.per_class["share_with_faces"].tolist(),
                                            out / "faces_per_category.png"))
        wrote(plots.plot_faces_per_image(stats.histogram, out / "faces_per_image.png"))

    # -- per category and correlation -----------------------------------------------------
    per_cat_summary: dict[str, Any] = {}
    corr_records: list[dict[str, Any]] = []
    corr_data: dict[str, Any] = {}
    for method in run.methods:
        result = per_category(run, method, swing=options.swing,
                              ap_tolerance=options.ap_tolerance)
        if result is None:
            continue
        frame_m = result.frame
        face_columns = ["share_with_faces", "mean_face_area", "share_with_faces_val",
                        "mean_face_area_val"]
        if stats is not None:
            present = [c for c in face_columns if c in stats.per_class.columns]
            frame_m = frame_m.merge(stats.per_class[["class_index", *present]],
                                    on="class_index", how="left")
        wrote(write_csv(out / f"per_category_{method}.csv", frame_m))
        wrote(write_csv(out / f"lookalikes_{method}.csv", result.lookalikes))
        wrote(write_text(out / f"per_category_{method}.md", per_category_markdown(
            result, options.top_k, faces=None if stats is None else stats.per_class,
            wnids=run.class_wnids())))
        most, least, by = most_least_affected(result, options.top_k)
        wrote(plots.plot_affected(most, least, by, method, out / f"affected_{method}.png"))
        columns = ["class_index", "wnid", "name", "top1_drop", "top5_drop"]
        columns += ["ap_drop"] if result.ap_available else []
        q = "ap" if by == "ap_drop" else "top1"
        columns += [c for c in (f"{q}_p_bh", f"{q}_reading") if c in result.frame.columns]
        if stats is not None:
            most = most.merge(stats.per_class[["class_index", *present]], on="class_index",
                              how="left")
            least = least.merge(stats.per_class[["class_index", *present]],
                                on="class_index", how="left")
            columns += present
        flagged = flagged_pairs(result)
        per_cat_summary[method] = {
            "ap_available": result.ap_available, "ap_source": result.ap_source,
            "paper_categories": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()}
                for r in paper_categories(result, run.class_wnids())],
            "ranked_by": by, "archs": result.archs,
            "most_affected": _records(most, columns), "least_affected": _records(least, columns),
            "lookalikes": flagged.to_dict(orient="records"),
            "lookalike_definition": {"swing_points": options.swing,
                                     "ap_tolerance_points": options.ap_tolerance},
        }
        if stats is not None:
            data = joined(result.frame, stats.per_class)
            records = correlations(method, data)
            corr_records += records
            if records:
                corr_data[method] = data
    adjust(corr_records)  # BH across every correlation of the table
    for method, data in corr_data.items():
        wrote(plots.plot_correlation(method, data, corr_records,
                                     out / f"correlation_{method}.png"))
    if corr_records:
        import pandas as pd

        wrote(write_csv(out / "correlation.csv", pd.DataFrame.from_records(corr_records)))
        wrote(write_text(out / "correlation.md", correlation_markdown(corr_records)))

    # -- Grad-CAM -------------------------------------------------------------------------
    if options.gradcam:
        cam = gradcam_grids(run, out, images=options.gradcam_images,
                            archs=options.gradcam_archs, faces=options.faces)
        files += cam.files
        if cam.status != "done":
            notes.append(cam.note)
        gradcam_summary = cam.to_dict()
    else:
        gradcam_summary = {"status": "skipped", "note": "Grad-CAM not requested", "files": []}

    # -- transfer (`veil transfer` outputs: RUN/transfer/*/ and --transfer DIR) -------------
    transfer_summary = _transfer_section(run, out, options, files, notes)

    summary = _clean({
        "veil_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": str(run.root),
        "study": _study_facts(run),
        "settings": {
            "interval": {"level": options.level, "method": INTERVAL_METHOD,
                         "reading": "Holm across archs (per method, comparison, metric); "
                                    "Benjamini-Hochberg across categories and across "
                                    "correlations"},
            "bootstrap": {"resamples": options.resamples, "seed": options.bootstrap_seed,
                          "used_for": "transfer mAP only (image part of its interval)"},
            "sem": "std over seeds (ddof=1) / sqrt(seeds)",
            "mcnemar": f"top-1, per seed; exact binomial when discordant pairs < "
                       f"{MCNEMAR_EXACT_BELOW}, else chi-square with continuity correction; "
                       "the largest p over seeds is reported",
            "top_k": options.top_k,
        },
        "overall": [r.to_dict() for r in rows],
        "sentences": sentences,
        "faces": faces_summary,
        "per_category": per_cat_summary,
        "correlation": corr_records,
        "gradcam": gradcam_summary,
        "transfer": transfer_summary,
        "notes": notes,
        "files": files,
    })
    atomic_write_bytes(out / SUMMARY, json.dumps(summary, indent=2).encode("utf-8"))
    return Analysis(out, summary, [*files, SUMMARY])


def _transfer_section(run: StudyRun, out: Path, options: AnalyzeOptions, files: list[str],
                      notes: list[str]) -> dict[str, Any] | None:
    """transfer.{md,csv,png} from the transfer outputs of this run, or None without any."""
    from veil.analysis.transfer import write_transfer_tables
    from veil.transfer.results import find_transfer_dirs

    dirs = find_transfer_dirs(run.root) + [Path(d) for d in options.transfer or []]
    dirs = list(dict.fromkeys(d.resolve() for d in dirs))
    if not dirs:
        return None
    rows, tables = write_transfer_tables(dirs, out, resamples=options.resamples,
                                         seed=options.bootstrap_seed, level=options.level)
    files += tables.files
    notes += tables.notes
    return {"rows": rows, "sources": [str(d) for d in dirs], "notes": tables.notes}


def _study_facts(run: StudyRun) -> dict[str, Any]:
    s = run.study
    return {"data": s.get("data"), "faces": s.get("faces"), "profile": s.get("profile"),
            "status": s.get("status"), "archs": run.archs, "methods": run.methods,
            "seeds": s.get("seeds"), "classes": len(run.classes),
            "conditions": sorted({str(c) for *_, c in run.found}),
            "face_matching": face_matching(s)}


FACE_MATCHING_FIELDS = ("images", "with_faces", "face_records", "matched")


def face_matching(study: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """study.json's per-split face matching ({split: {images, with_faces, face_records,
    matched}}), or None when the run predates it."""
    found = study.get("face_matching")
    if not isinstance(found, dict) or not found:
        return None
    return {str(split): {k: (v or {}).get(k) for k in FACE_MATCHING_FIELDS}
            for split, v in found.items() if isinstance(v, dict) or v is None}


def face_matching_lines(matching: dict[str, dict[str, Any]] | None) -> list[str]:
    """One line per split: images / with faces / face records matched."""
    if not matching:
        return ["face matching: not recorded (a run from before veil recorded it)"]
    def num(value: Any) -> str:
        return "?" if value is None else f"{value:,}"

    return [f"face matching, {split}: {num(v.get('images'))} images, "
            f"{num(v.get('with_faces'))} with faces, {num(v.get('matched'))} of "
            f"{num(v.get('face_records'))} face records matched"
            for split, v in matching.items()]
