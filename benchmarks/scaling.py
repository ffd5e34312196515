"""Scaling benchmark: per-node throughput of detect, obfuscate and audit, 1 to N workers.

Builds an input set of ``--images`` images spread over the classes of Imagenette val
(``--source`` names another folder), then times each dataset stage through its Python
API, the functions the CLI calls, with a fresh store or output folder per measurement
and no progress bars:

- ``detect``, CenterFace (the default detector) and ``--profile fast``. The first
  CenterFace run (local backend, 1 worker) is also the face source of obfuscate;
- ``obfuscate`` with blur, from those faces, into a temp folder. The first output
  (local, 1 worker) is what audit reads;
- ``audit`` of the obfuscated output, default detector, regions from its ledger.

Each stage runs with the local backend at 1 worker and at each count up to the number
of cores (``--workers`` picks the counts), then with ``--backend ray`` on a private local
Ray instance at the same counts (``--skip-ray`` leaves it out). Every worker runs its
detector on one thread, as a Ray worker does, so N workers use N cores and the rate at
N workers divided by N is a per-core rate. Two rates per measurement: the wall time of
the stage call (pool or actor start-up, model loading and the last shard's tail
included), and each worker's rate while it runs shards (the shard times the store
records), the steady state a long run approaches; the projection uses the latter. Ray's
own start-up (``ray.init``) is timed apart and reported, not counted.

Prints markdown tables: images/s per stage, backend and worker count with the speed-up
over 1 worker and the efficiency (speed-up / workers), in wall time and in shards, and a
projection of the hours on
one node of this machine's size and on 100 such nodes, and the cost at
``--core-hour-usd``, for ImageNet-1k (1,431,167 images) and for 1e9 images.

    python benchmarks/scaling.py --json scaling.json          # the full measurement
    python benchmarks/scaling.py --images 40 --workers 1 --skip-ray   # smoke check, < 1 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

import veil
from veil.backends import Backend, LocalBackend
from veil.datasets import Dataset, is_image_name, open_dataset
from veil.detection.settings import detector_settings
from veil.faces import load_faces
from veil.stages.audit import audit, regions_from_ledger
from veil.stages.detect import detect
from veil.stages.obfuscate import ledger_path, obfuscate_dataset
from veil.store import FaceStore

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGENETTE_VAL = Path("data") / "imagenette" / "val"
IMAGENET_1K = 1_431_167  # ILSVRC-2012 train + val + test
IMAGENET_FACE_SHARE = 0.17  # 243,198 of those images contain faces
BILLION = 1_000_000_000
NODES = 100
DEFAULT_CORE_HOUR_USD = 0.04

# name -> (stage, CLI flags it stands for)
STAGES = {
    "detect": ("detect", "veil detect (centerface)"),
    "detect-fast": ("detect", "veil detect --profile fast"),
    "obfuscate": ("obfuscate", "veil obfuscate --method blur"),
    "audit": ("audit", "veil audit (centerface)"),
}
PIPELINE = ("detect", "obfuscate", "audit")


@dataclass
class Measurement:
    stage: str
    backend: str
    workers: int
    images: int
    seconds: float  # wall time of the stage call
    shard_seconds: float  # the shards' own times, summed over workers (from the store)
    ok: bool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """img/s of the whole call: worker start-up, model loading and the tail included."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def worker_rate(self) -> float:
        """img/s of one worker while it runs shards, N workers running side by side: the
        steady-state per-core rate, start-up and idle time left out."""
        return self.images / self.shard_seconds if self.shard_seconds > 0 else 0.0


class OneThreadLocal(LocalBackend):
    """The local backend with one detector thread per worker (the CLI gives a lone
    worker every core's threads), so that N workers use N cores, as on Ray."""

    def threads_per_worker(self, workers: int) -> int:
        return 1


def shared_root() -> Path:
    """VEIL_SHARED, or ../shared next to the repository (the project's convention)."""
    return Path(os.environ.get("VEIL_SHARED", REPO_ROOT.parent / "shared")).resolve()


def worker_counts(text: str | None, cores: int) -> list[int]:
    """``--workers`` as given, else every count up to ``cores`` (on more than 8 cores:
    the powers of two and ``cores``); 1 is always measured (the speed-up's base)."""
    if text:
        counts = {int(part) for part in text.split(",") if part.strip()}
    elif cores <= 8:
        counts = set(range(1, cores + 1))
    else:
        counts = {2 ** i for i in range(int(math.log2(cores)) + 1)} | {cores}
    if any(n < 1 for n in counts):
        raise SystemExit("--workers: counts must be >= 1")
    return sorted(counts | {1})


def build_input(source: Path, count: int, dest: Path) -> list[Path]:
    """Copy ``count`` images, evenly spaced over ``source`` in key order (so over its
    classes), to ``dest`` with the same relative paths."""
    files = sorted(p for p in source.rglob("*") if p.is_file() and is_image_name(p.name)
                   and not any(part.startswith(".") for part in p.relative_to(source).parts))
    if len(files) < count:
        raise SystemExit(f"{source} has {len(files)} images, fewer than --images {count}")
    step = len(files) / count
    picked = [files[int(i * step)] for i in range(count)]
    for path in picked:
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return picked


def mean_pixels(paths: Sequence[Path]) -> float:
    total = 0
    for path in paths:
        with Image.open(path) as image:
            total += image.width * image.height
    return total / max(1, len(paths))


@contextlib.contextmanager
def private_ray(cores: int) -> Iterator[tuple[Backend, float, Path]]:
    """A private local Ray instance (``cores`` CPUs, no GPUs) with its own HOME and temp
    dir, as the tests start one; yields the backend and the seconds ``ray.init`` took."""
    import ray

    from veil.backends.ray import RayBackend

    temp = Path(tempfile.mkdtemp(prefix="veil-ray-", dir="/tmp"))  # short: socket paths
    home = temp / "home"
    home.mkdir()
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED")}
    os.environ["HOME"] = str(home)  # a ~/.ray left by another cluster must not leak in
    os.environ.pop("RAY_ADDRESS", None)  # start a new instance, join none
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    backend = RayBackend(None, cpus_per_worker=1, gpus_per_worker=0, init_options={
        "num_cpus": cores, "num_gpus": 0, "_temp_dir": str(temp),
        "object_store_memory": 256 * 2**20, "log_to_driver": False,
    })
    try:
        start = time.perf_counter()
        backend.connect()
        startup = time.perf_counter() - start
        yield backend, startup, temp
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


class Bench:
    """Runs the measurements of one stage on one backend, in a scratch folder."""

    def __init__(self, dataset: Dataset, work: Path, shard_size: int) -> None:
        self.dataset = dataset
        self.work = work
        self.shard_size = shard_size
        self.faces: Path | None = None  # the face store of the first detect run
        self.obfuscated: Path | None = None  # the output of the first obfuscate run
        self.serial = 0

    def _fresh(self, name: str) -> Path:
        self.serial += 1
        return self.work / f"{self.serial:03d}-{name}"

    def run(self, name: str, backend: Backend, workers: int) -> Measurement:
        common: dict[str, Any] = {"workers": workers, "shard_size": self.shard_size,
                                  "progress": False, "backend": backend}
        start = time.perf_counter()
        if name in ("detect", "detect-fast"):
            detector, options = detector_settings(
                "centerface", profile="fast" if name == "detect-fast" else None)
            path = self._fresh(f"{name}.sqlite")
            with FaceStore(path) as store:
                summary = detect(self.dataset, store, detector=detector, options=options,
                                 **common)
                seconds = time.perf_counter() - start
                busy = shard_seconds(store, summary.run_id)
            if name == "detect" and self.faces is None:
                self.faces = path
            else:
                path.unlink()
        elif name == "obfuscate":
            assert self.faces is not None, "detect runs first: it is the face source"
            faces = load_faces(self.faces)
            out = self._fresh("obfuscated")
            start = time.perf_counter()  # the face source is read once, not timed
            summary = obfuscate_dataset(self.dataset, faces, out, method="blur", **common)
            seconds = time.perf_counter() - start
            with FaceStore(ledger_path(out), create=False) as ledger:
                busy = shard_seconds(ledger, summary.run_id)
            if self.obfuscated is None:
                self.obfuscated = out
            else:
                shutil.rmtree(out)
        else:
            assert self.obfuscated is not None, "obfuscate runs first: audit reads its output"
            target = open_dataset(self.obfuscated)
            regions = regions_from_ledger(self.obfuscated) or {}
            path = self._fresh("audit.sqlite")
            with FaceStore(path) as store:
                start = time.perf_counter()
                summary = audit(target, regions, store=store, **common).summary
                seconds = time.perf_counter() - start
                busy = shard_seconds(store, summary.run_id)
            path.unlink()
        return Measurement(name, backend.name, workers, summary.images, seconds, busy,
                           summary.ok, {k: int(v) for k, v in summary.counts.items()})


def shard_seconds(store: FaceStore, run_id: int) -> float:
    """The run's shard times, summed: what its workers spent running shards."""
    return sum(float(s["seconds"] or 0.0) for s in store.shards(run_id))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def scaling_rows(results: list[Measurement]) -> list[dict[str, Any]]:
    rows = []
    for m in results:
        base = next((b for b in results if (b.stage, b.backend, b.workers)
                     == (m.stage, m.backend, 1)), None)
        speedup = m.rate / base.rate if base and base.rate else float("nan")
        steady = m.worker_rate / base.worker_rate if base and base.worker_rate else float("nan")
        rows.append({**asdict(m), "images_per_s": m.rate, "speedup": speedup,
                     "efficiency": speedup / m.workers,
                     "images_per_s_per_worker_in_shards": m.worker_rate,
                     "efficiency_in_shards": steady})
    return rows


def projection_rows(results: list[Measurement], cores: int, price: float
                    ) -> list[dict[str, Any]]:
    """Per stage and backend, from the most workers measured: the per-worker rate in
    shards (one worker = one core; start-up, a one-off, left out), scaled linearly to a
    node of ``cores`` cores and to ``NODES`` nodes."""
    rows = []
    best: dict[tuple[str, str], Measurement] = {}
    for m in results:
        key = (m.stage, m.backend)
        if key not in best or m.workers > best[key].workers:
            best[key] = m
    for backend in dict.fromkeys(m.backend for m in results):
        per_core: dict[str, float] = {}
        for stage in STAGES:
            m = best.get((stage, backend))
            if m is None or m.worker_rate <= 0:
                continue
            per_core[stage] = m.worker_rate
            rows.append(_project(stage, backend, m.workers, per_core[stage], cores, price))
        if all(s in per_core for s in PIPELINE):  # one image through all three stages
            rate = 1 / sum(1 / per_core[s] for s in PIPELINE)
            workers = best[(PIPELINE[0], backend)].workers
            rows.append(_project(" + ".join(PIPELINE), backend, workers, rate, cores, price))
    return rows


def _project(stage: str, backend: str, workers: int, per_core: float, cores: int,
             price: float) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": stage, "backend": backend, "measured_workers": workers,
                           "images_per_s_per_core": per_core, "node_cores": cores}
    for label, images in (("imagenet_1k", IMAGENET_1K), ("1e9", BILLION)):
        core_hours = images / per_core / 3600
        row[label] = {"images": images, "core_hours": core_hours,
                      "hours_1_node": core_hours / cores,
                      f"hours_{NODES}_nodes": core_hours / cores / NODES,
                      "usd": core_hours * price}
    return row


def hours(value: float) -> str:
    if value < 0.1:
        return f"{value:.3f}"
    return f"{value:,.2f}" if value < 10 else f"{value:,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400,
                        help="size of the input set (default 400)")
    parser.add_argument("--workers", default=None,
                        help="worker counts, comma-separated (default: each count up to the "
                             "cores; on more than 8 cores the powers of two and the cores)")
    parser.add_argument("--skip-ray", action="store_true", help="measure the local backend only")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="images per shard (default: about 4 shards per worker at the "
                             "largest count, at most 256)")
    parser.add_argument("--core-hour-usd", type=float, default=DEFAULT_CORE_HOUR_USD,
                        help=f"assumed price of one core-hour (default {DEFAULT_CORE_HOUR_USD})")
    parser.add_argument("--shared", type=Path, default=None,
                        help="shared data root (default: $VEIL_SHARED or ../shared)")
    parser.add_argument("--source", type=Path, default=None,
                        help="image folder to sample (default: SHARED/data/imagenette/val)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"which to measure (default {','.join(STAGES)}); obfuscate "
                             "needs detect, audit needs obfuscate")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = parser.parse_args(argv)

    root = args.shared.resolve() if args.shared else shared_root()
    source = (args.source or root / IMAGENETTE_VAL).resolve()
    cores = os.cpu_count() or 1
    counts = worker_counts(args.workers, cores)
    shard_size = args.shard_size or max(1, min(256, math.ceil(args.images / (4 * counts[-1]))))
    stages = [s for s in STAGES if s in set(args.stages.split(","))]
    needs = {"obfuscate": "detect", "audit": "obfuscate"}
    for stage in stages:
        if stage in needs and needs[stage] not in stages:
            raise SystemExit(f"--stages: {stage} needs {needs[stage]}")
    backends = ["local"] + ([] if args.skip_ray else ["ray"])

    print(f"veil scaling benchmark: veil {veil.__version__}, {platform.machine()}, "
          f"{cores} cores (os.cpu_count), load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} at start")
    results: list[Measurement] = []
    ray_startup: float | None = None
    with tempfile.TemporaryDirectory(prefix="veil-scaling-") as tmp:
        work = Path(tmp)
        picked = build_input(source, args.images, work / "input")
        dataset = open_dataset(work / "input")
        pixels = mean_pixels(picked)
        print(f"input: {len(dataset)} images from {source} ({pixels:,.0f} pixels on average), "
              f"shards of {shard_size}, workers {','.join(map(str, counts))}, "
              f"backends {', '.join(backends)}; one detector thread per worker\n")
        bench = Bench(dataset, work, shard_size)
        for backend_name in backends:
            with contextlib.ExitStack() as stack:
                if backend_name == "local":
                    backend: Backend = OneThreadLocal()
                else:
                    backend, ray_startup, _ = stack.enter_context(private_ray(cores))
                    print(f"ray: private local instance started in {ray_startup:.1f} s "
                          "(not counted in the rates)")
                for stage in stages:
                    for workers in counts:
                        m = bench.run(stage, backend, workers)
                        results.append(m)
                        flag = "" if m.ok else "  (NOT OK: errors or failed shards)"
                        print(f"  {stage:<12} {m.backend:<6} {workers:>3} worker(s) "
                              f"{m.rate:8.2f} img/s  ({m.seconds:.1f} s){flag}", flush=True)

    face_share = next((m.counts.get("images with faces", 0) / max(1, m.images)
                       for m in results if m.stage == "detect"), None)
    scaling = scaling_rows(results)
    projection = projection_rows(results, cores, args.core_hour_usd)

    print(f"\n## Throughput: {len(dataset)} images, {cores} cores\n")
    print(table(["stage", "backend", "workers", "seconds", "img/s", "speed-up vs 1",
                 "efficiency", "img/s per worker in shards", "efficiency in shards"], [
        [r["stage"], r["backend"], r["workers"], f"{r['seconds']:.1f}",
         f"{r['images_per_s']:.2f}", f"{r['speedup']:.2f}x", f"{100 * r['efficiency']:.0f}%",
         f"{r['images_per_s_per_worker_in_shards']:.2f}",
         f"{100 * r['efficiency_in_shards']:.0f}%"] for r in scaling]))
    print("\nimg/s: images / wall time of the stage call (worker start-up, model loading and "
          "the last shard's tail included); efficiency = speed-up / workers. In shards: each "
          "worker's rate while running shards (the store's shard times), relative to 1 worker's.")
    if ray_startup is not None:
        print(f"\nRay start-up (ray.init of a local instance, {cores} CPUs): {ray_startup:.1f} s, "
              "not included above; each Ray measurement does include its actors' start-up.")
    if face_share is not None:
        print(f"Images with faces in this set (CenterFace): {100 * face_share:.0f}% "
              f"(ImageNet-1k: {100 * IMAGENET_FACE_SHARE:.0f}%); obfuscate's rate depends on "
              "it, since faceless images are only copied.")

    usd = args.core_hour_usd
    print(f"\n## Projection: one node = {cores} cores (this machine), {NODES} nodes; "
          f"${usd:g} per core-hour (an assumption)\n")
    print(table([
        "stage", "measured at", "img/s per core",
        "ImageNet-1k: 1 node h", f"{NODES} nodes h", "USD",
        "1e9 images: 1 node h", f"{NODES} nodes h", "USD",
    ], [[
        r["stage"], f"{r['backend']}, {r['measured_workers']} worker(s)",
        f"{r['images_per_s_per_core']:.2f}",
        hours(r["imagenet_1k"]["hours_1_node"]), hours(r["imagenet_1k"][f"hours_{NODES}_nodes"]),
        f"{r['imagenet_1k']['usd']:,.2f}",
        hours(r["1e9"]["hours_1_node"]), hours(r["1e9"][f"hours_{NODES}_nodes"]),
        f"{r['1e9']['usd']:,.0f}",
    ] for r in projection]))
    assumptions = [
        "per-core rate = a worker's img/s in shards at the most workers measured (one "
        "worker per core, one thread each); a node runs one worker per core at that rate, "
        "which the 1 -> N worker efficiency in shards above tests; start-up is left out "
        "(seconds, once per run)",
        f"linear scaling across nodes: {NODES} nodes are {NODES}x one node (not measured: "
        "shared storage, the driver's store writes and stragglers are left out)",
        f"cost = core-hours x ${usd:g}, an assumed price, the same for 1 or {NODES} nodes",
        f"input images average {pixels:,.0f} pixels; detect and audit slow down on larger "
        "images (ImageNet-1k originals are larger than 224x224)",
        "obfuscate's rate holds for this set's share of images with faces",
        f"the pipeline row is one image through {' + '.join(PIPELINE)} (default detector)",
    ]
    print("\nAssumptions:\n" + "\n".join(f"- {a}" for a in assumptions))

    if args.json:
        args.json.write_text(json.dumps({
            "veil": veil.__version__, "machine": platform.machine(), "cores": cores,
            "load_average_at_start": os.getloadavg(), "source": str(source),
            "images": len(dataset), "mean_pixels": pixels, "shard_size": shard_size,
            "workers": counts, "backends": backends, "threads_per_worker": 1,
            "face_share": face_share, "ray_startup_s": ray_startup,
            "core_hour_usd": usd, "nodes": NODES,
            "measurements": scaling, "projection": projection, "assumptions": assumptions,
        }, indent=1))
        print(f"\nwrote {args.json}")
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
