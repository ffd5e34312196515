"""``veil eval-faces GT PRED``: how many faces did the detector find, and which not?"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import click
from sqlalchemy.exc import SQLAlchemyError

from veil.boxes import Box
from veil.cli.common import store_failure
from veil.errors import VeilError
from veil.faces import is_store_location
from veil.obfuscation.registry import METHODS as METHOD_NAMES
from veil.obfuscation.registry import parse_method_options

if TYPE_CHECKING:
    from veil.evaluation import FaceEvaluation

DEFAULT_SHOW = 10


@dataclass
class Faces:
    """Boxes per image key, read from a faces file or a store, and what they came from."""

    boxes: dict[str, list[Box]]
    invalid: dict[str, list[bool]] | None
    description: str
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # what the source knows
    folder: Path | None = None  # a faces file's folder: its keys may be paths from there


def load_ground_truth(source: str) -> Faces:
    """A faces file (paper JSON, COCO, Parquet; WIDER's ``invalid`` flags kept) or a
    store's current boxes (latest review, else latest detection)."""
    if is_store_location(source):
        from veil.store import FaceStore

        with FaceStore(source, create=False) as store:
            boxes = store.current_boxes()
            sizes = _store_sizes(store)
        return Faces(boxes, None, f"{_display(source)} (current boxes)", sizes)
    from veil.evaluation import invalid_flags
    from veil.interchange import read_faces

    path = _existing(source, "GT")
    faces = read_faces(path)
    return Faces(dict(faces.faces), invalid_flags(faces.box_extras),
                 f"{source} ({faces.format})", _file_sizes(faces), Path(path).parent)


def load_predictions(source: str, run_id: int | None) -> Faces:
    """A faces file, or a store's detection run ``run_id`` (default: its latest)."""
    if is_store_location(source):
        from veil.store import DETECTION_RUN_KINDS, FaceStore

        with FaceStore(source, create=False) as store:
            if run_id is None:
                runs = [r for r in store.runs() if r.kind in DETECTION_RUN_KINDS]
                if not runs:
                    raise VeilError(f"{_display(source)} has no detection run; run `veil detect`")
                run_id = runs[-1].id
            else:
                store.run(run_id)  # a clear error when it does not exist
            boxes = store.detections(run_id)
            sizes = _store_sizes(store)
        return Faces(boxes, None, f"{_display(source)} (detection run {run_id})", sizes)
    if run_id is not None:
        raise VeilError("--run applies only when PRED is a face store")
    from veil.interchange import read_faces

    path = _existing(source, "PRED")
    faces = read_faces(path)
    return Faces(dict(faces.faces), None, f"{source} ({faces.format})", _file_sizes(faces),
                 Path(path).parent)


def _store_sizes(store: object) -> dict[str, tuple[int, int]]:
    return {r.key: (r.width, r.height) for r in store.images()  # type: ignore[attr-defined]
            if r.width and r.height}


def _file_sizes(faces: object) -> dict[str, tuple[int, int]]:
    return {key: (r.width, r.height) for key, r in faces.images.items()  # type: ignore[attr-defined]
            if r.width and r.height}


def image_sizes(keys: list[str], gt: Faces, pred: Faces, pred_keys: dict[str, str],
                images: Path | None) -> dict[str, tuple[int, int]]:
    """``(width, height)`` of every GT image: from the sources (a store's catalogue, a COCO
    or Parquet file), else read from the image's header under ``images`` or, for a
    faces file, under the file's own folder (the paper's JSON names images by path)."""
    from veil.images import probe

    sizes: dict[str, tuple[int, int]] = {}
    folders = [f for f in (images, gt.folder, pred.folder) if f is not None]
    for key in keys:
        known = gt.sizes.get(key) or pred.sizes.get(pred_keys.get(key, key))
        if known is None:
            for folder in folders:
                path = folder / key
                if path.is_file():
                    header = probe(path)  # size as displayed, as boxes are measured
                    known = (header.width, header.height)
                    break
        if known is not None:
            sizes[key] = known
    return sizes


def match_keys(
    gt: dict[str, list[Box]], pred: dict[str, list[Box]]
) -> tuple[dict[str, list[Box]], str | None]:
    """PRED re-keyed by file name when no key matches GT but file names do (one each).

    A store filled by ``veil detect images/`` names an image ``x.jpg`` where the faces
    file says ``images/x.jpg``; matching names spares the user a re-run.
    """
    renamed, note = _renaming(gt, pred)
    return {renamed.get(k, k): v for k, v in pred.items()}, note


def _renaming(gt: dict[str, list[Box]], pred: dict[str, list[Box]]
              ) -> tuple[dict[str, str], str | None]:
    """PRED key -> GT key where :func:`match_keys` renames (empty when it does not)."""
    if not gt or not pred or set(gt) & set(pred):
        return {}, None
    gt_names = {PurePosixPath(k).name: k for k in gt}
    pred_names = {PurePosixPath(k).name: k for k in pred}
    if len(gt_names) != len(gt) or len(pred_names) != len(pred):
        return {}, None
    common = set(gt_names) & set(pred_names)
    if not common:
        return {}, None
    renamed = {k: gt_names[PurePosixPath(k).name] for k in pred
               if PurePosixPath(k).name in gt_names}
    return renamed, f"no keys matched, so {len(common):,} images were matched by file name"


@click.command("eval-faces")
@click.argument("gt_source", metavar="GT")
@click.argument("pred_source", metavar="PRED")
@click.option("--min-score", type=click.FloatRange(0, 1), default=None,
              help="Drop predicted boxes scoring below this first (default: keep all).")
@click.option("--iou", type=click.FloatRange(0, 1, min_open=True), default=0.5,
              show_default=True, help="Overlap at which a box matches a face.")
@click.option("--min-height", type=click.FloatRange(min=0), default=16.0, show_default=True,
              help="Faces shorter than this (px, at the stored resolution) are ignored: "
                   "finding them is no false alarm, missing them no miss.")
@click.option("--coverage", type=click.FloatRange(0, 1, min_open=True), default=0.7,
              show_default=True,
              help="Share of a face's area the union of boxes must cover for coverage recall.")
@click.option("--run", "run_id", type=int, default=None,
              help="With PRED a store: evaluate this detection run (default: the latest).")
@click.option("--method", type=click.Choice(list(METHOD_NAMES)), default=None,
              help="Also measure coverage under the pixels this obfuscation method changes "
                   "for the predicted boxes (the same region `veil obfuscate --method` "
                   "changes: blur enlarges each box by 0.1 x its longer side and feathers "
                   "it), reported beside the boxes' own coverage. The uncovered-faces list "
                   "then lists faces the method leaves visible. With --min-height 32: the "
                   "share of faces >= 32 px the method hides (thorough's target: 0.95).")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A --method option, as for `veil obfuscate` (repeatable).")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False,
                                                        path_type=Path), default=None,
              help="With --method: the folder GT's keys are paths in, to read image sizes "
                   "from (default: sizes from a store or COCO/Parquet file, else images "
                   "beside the faces file).")
@click.option("--show", type=click.IntRange(min=0), default=DEFAULT_SHOW, show_default=True,
              help="List this many images with uncovered faces.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object instead of the table.")
def eval_faces(gt_source: str, pred_source: str, min_score: float | None, iou: float,
               min_height: float, coverage: float, run_id: int | None, method: str | None,
               option_pairs: tuple[str, ...], images_dir: Path | None, show: int,
               as_json: bool) -> None:
    """Measure predicted face boxes PRED against ground truth GT.

    \b
    GT and PRED are faces files (the paper's JSON, COCO JSON, Parquet) or face stores
    (an SQLite file or a SQLAlchemy URL): GT from a store is its current boxes, PRED
    from a store its latest detection run (or --run). Every GT image counts; one
    missing from PRED has all its faces missed. Reports recall@IoU, coverage recall,
    precision and AP overall and by face height, and the images with faces left
    uncovered (DESIGN.md's definitions). With --method, also the coverage under the
    region that obfuscation method changes.

    \b
    Example (veil's WIDER sample; held-out numbers per profile: README, Detection):
      veil detect wider/images --store w.sqlite --detector thorough
      veil eval-faces wider/faces.json w.sqlite --method blur
    """
    from veil.evaluation import evaluate_faces

    try:
        method_options = {} if method is None else parse_method_options(method, option_pairs)
        if option_pairs and method is None:
            raise VeilError("--option needs --method")
        gt = load_ground_truth(gt_source)
        pred = load_predictions(pred_source, run_id)
        renamed, note = _renaming(gt.boxes, pred.boxes)
        pred_boxes = {renamed.get(k, k): v for k, v in pred.boxes.items()}
        sizes = None
        if method is not None:
            back = {gt_key: pred_key for pred_key, gt_key in renamed.items()}
            sizes = image_sizes(list(gt.boxes), gt, pred, back, images_dir)
            if len(sizes) < len(gt.boxes):
                missing = next(k for k in gt.boxes if k not in sizes)
                raise VeilError(
                    f"--method needs each image's size: {len(gt.boxes) - len(sizes):,} "
                    f"GT images have none (e.g. {missing}); give the folder their keys are "
                    f"paths in with --images")
        result = evaluate_faces(gt.boxes, pred_boxes, invalid=gt.invalid, iou=iou,
                                min_height=min_height, coverage=coverage, min_score=min_score,
                                method=method, method_options=method_options, sizes=sizes)
    except VeilError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise store_failure(exc) from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if not gt.boxes:
        raise click.ClickException(f"GT {gt.description} has no images")
    if as_json:
        out = {"gt": gt.description, "pred": pred.description, **result.to_dict()}
        if note:
            out["note"] = note
        click.echo(json.dumps(out, allow_nan=False))
        return
    for line in report_lines(result, gt.description, pred.description, show):
        click.echo(line)
    if note:
        click.echo(f"note: {note}")


def report_lines(result: FaceEvaluation, gt_text: str, pred_text: str, show: int) -> list[str]:
    """The human report: a header, the metrics table, the uncovered images."""
    s = result.settings
    overall = result.overall
    lines = [
        f"GT   {gt_text}: {result.images:,} images, {result.faces:,} faces, "
        f"{overall.must_find:,} must-find (valid, >= {s['min_height']:g} px tall)",
        f"PRED {pred_text}: {overall.detections:,} boxes"
        + (f" scoring >= {s['min_score']:g}" if s["min_score"] is not None else ""),
    ]
    if result.missing_predictions:
        lines.append(f"     {len(result.missing_predictions):,} GT images have no prediction "
                     "(all their faces count as missed)")
    if result.unknown_predictions:
        lines.append(f"     {result.unknown_predictions:,} predicted images are not in GT "
                     "(not evaluated)")
    lines.append("")
    method = s.get("method")
    under = f"under {method}" if method else ""
    wide = max(14, len(under) + 2)
    header = (f"{'faces':<12}{'must-find':>10}{'recall@' + format(s['iou'], 'g'):>12}"
              f"{'coverage':>10}" + (f"{under:>{wide}}" if method else "")
              + f"{'precision':>11}{'AP':>8}{'boxes':>8}")
    lines += [header, "-" * len(header)]
    rows = [("all", overall)] + [(f"{name} px", m) for name, m in result.bins.items()]
    for label, m in rows:
        region = f"{_rate(m.region_coverage_recall):>{wide}}" if method else ""
        lines.append(f"{label:<12}{m.must_find:>10,}{_rate(m.recall):>12}"
                     f"{_rate(m.coverage_recall):>10}{region}{_rate(m.precision):>11}"
                     f"{_rate(m.ap):>8}{m.detections:>8,}")
    lines.append(f"(coverage: >= {s['coverage']:g} of the face under the boxes"
                 + (f"; {under}: under the pixels `{method}` changes for them" if method
                    else "")
                 + f"; faces under {s['min_height']:g} px are not must-find, their row is for "
                 "information)")
    lines.append("")
    uncovered = result.uncovered
    if not uncovered:
        lines.append("every must-find face is covered")
        return lines
    faces = sum(len(u.uncovered) for u in uncovered)
    lines.append(f"{faces:,} must-find faces in {len(uncovered):,} of {result.images:,} images "
                 f"are not covered" + (f" {under}" if method else "")
                 + (f"; the first {min(show, len(uncovered))}:" if show else ""))
    for u in uncovered[:show]:
        shares = ", ".join(f"{c:.0%}" for c in u.coverage[:5])
        more = ", ..." if len(u.coverage) > 5 else ""
        lines.append(f"  {u.key}  {len(u.uncovered)} of {u.must_find} (covered {shares}{more})")
    return lines


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _existing(source: str, what: str) -> str:
    path = Path(os.path.expanduser(source))
    if not path.exists():
        raise VeilError(f"{what}: no such file or store: {source}")
    if path.is_dir():
        raise VeilError(f"{what}: {source} is a folder; give a faces file or a face store")
    return str(path)


def _display(url: str) -> str:
    from veil.store.sql import redacted_url

    return redacted_url(url)
