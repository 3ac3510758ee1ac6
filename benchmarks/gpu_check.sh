#!/usr/bin/env bash
# One call on a GPU machine without network: versions, the README quickstart, launch.py's loop
# (benchmarks/end_to_end.py) and the model against PyTorch (benchmarks/throughput.py), for
# ResNet-50 and GoogLeNet in bfloat16 at batch 256. Run from the repository root, with the wheels
# of benchmarks/gpu_wheels.sh in .whl/ (carried to the machine beside the working tree):
#
#   bash benchmarks/gpu_wheels.sh                     # on a machine with PyPI
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # on the GPU machine (OUT: where results go)
#   GPU_CHECK_DRY=1 OUT=/tmp/out bash benchmarks/gpu_check.sh   # CPU, tiny sizes: checks the flags
#
# It ends within GPU_CHECK_BUDGET_S seconds (default 660, i.e. 11 minutes) whatever hangs: each
# step runs under `timeout` with the smaller of its own cap and what is left of the budget, and a
# step that no longer has 30 s is skipped. Steps that need TensorFlow (the quickstart and
# end_to_end.py: incres' input pipeline is tf.data) are skipped when it does not import; the
# tensorflow-cpu wheel (261 MiB) does not fit a 64 MiB carry (benchmarks/gpu_wheels.sh).
#
# Writes to $OUT (flat, at most 8 files): versions.json, summary.json (each step's exit status,
# seconds and timeout), gpu_check.log (every step's stderr and the commands), quickstart.log,
# e2e_ResNet50.json, e2e_GoogLeNet.json, throughput_ResNet50.json, throughput_GoogLeNet.json.
# Environment: PYTHON (default python3), GPU_CHECK_WORK (scratch, default /tmp/gpu_check; emptied);
# with GPU_CHECK_DRY=1, GPU_CHECK_CAP_SCALE (default 2) multiplies each step's cap (set a larger
# GPU_CHECK_BUDGET_S too).
set -euo pipefail

DRY=${GPU_CHECK_DRY:-0}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-660}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
: "${OUT:?set OUT to the directory for the results}"
START=$SECONDS
CAP_SCALE=1
MAX_FILE=$((16 * 1024 * 1024 - 4096))

[[ -f launch.py && -d incres ]] || {
  echo "run from the repository root" >&2
  exit 2
}
mkdir -p "$OUT"
rm -rf "$WORK"
mkdir -p "$WORK"
LOG=$OUT/gpu_check.log
STEPS=$WORK/steps.tsv
: >"$LOG"
: >"$STEPS"

log() { echo "[gpu_check $((SECONDS - START))s] $*" | tee -a "$LOG" >&2; }

# run_step NAME CAP_S STDOUT_FILE CMD...: CMD's stdout to STDOUT_FILE ("": to the log), its
# stderr to the log (with BOTH=1: to STDOUT_FILE too); never fails the script.
run_step() {
  local name=$1 cap=$2 out=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START) - 15))
  if ((left < 30)); then
    log "$name: skipped, ${left}s of the budget left"
    printf '%s\tskipped\t0\t0\tbudget\n' "$name" >>"$STEPS"
    return 0
  fi
  cap=$((cap * CAP_SCALE))
  local limit=$((cap < left ? cap : left)) t0=$SECONDS rc=0
  log "$name: timeout ${limit}s: $*"
  if [[ -n $out && ${BOTH:-0} == 1 ]]; then
    timeout -k 10 "$limit" "$@" >"$out" 2>&1 || rc=$?
  elif [[ -n $out ]]; then
    timeout -k 10 "$limit" "$@" >"$out" 2>>"$LOG" || rc=$?
  else
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
  fi
  log "$name: exit $rc after $((SECONDS - t0))s"
  printf '%s\t%s\t%s\t%s\t\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$STEPS"
}

skip_step() {
  log "$1: skipped: $2"
  printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >>"$STEPS"
}

# The carried wheels, without their dependencies (the image's own), into a scratch site dir.
SITE=$WORK/site
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
  log "installing ${#wheels[@]} carried wheels into $SITE"
  timeout 240 "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check \
    --target "$SITE" "${wheels[@]}" >>"$LOG" 2>&1 || log "pip install failed (exit $?)"
else
  log "no carried wheels in .whl/ (benchmarks/gpu_wheels.sh downloads them)"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0
if [[ $DRY == 1 ]]; then  # A busy 2-core CPU compiles far slower than the GPU machine's 16 cores.
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  CAP_SCALE=${GPU_CHECK_CAP_SCALE:-2}
fi

{
  echo "=== nvidia-smi"
  timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi: not available (exit $?)"
} >>"$LOG"
GPU=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  2>/dev/null | head -n 1 || true)
run_step versions 120 "$OUT/versions.json" env GPU="$GPU" "$PY" - <<'EOF'
import importlib.metadata, json, os, platform, sys

def version(*names):
  for n in names:
    try:
      return importlib.metadata.version(n)
    except importlib.metadata.PackageNotFoundError:
      pass
  return None

v = {"python": platform.python_version(), "executable": sys.executable,
     "gpu": os.environ.get("GPU") or None}
for key, names in [("jax", ["jax"]), ("jaxlib", ["jaxlib"]),
                   ("jax_cuda_plugin", ["jax-cuda13-plugin", "jax-cuda12-plugin"]),
                   ("flax", ["flax"]), ("optax", ["optax"]), ("orbax", ["orbax-checkpoint"]),
                   ("tensorflow", ["tensorflow-cpu", "tensorflow"]),
                   ("tensorflow_datasets", ["tensorflow-datasets"]),
                   ("ml_collections", ["ml-collections", "ml_collections"]), ("numpy", ["numpy"]),
                   ("torch", ["torch"]), ("torchvision", ["torchvision"]), ("timm", ["timm"])]:
  v[key] = version(*names)
try:
  import tensorflow as tf
  v["tensorflow_imports"] = tf.__version__
except Exception as e:  # Reported, not fatal: the TF-free steps still run.
  v["tensorflow_imports"] = f"no: {type(e).__name__}: {e}"[:300]
import jax
v["jax_devices"] = [str(d) for d in jax.devices()]
print(json.dumps(v, indent=1))
EOF
cat "$OUT/versions.json" >&2 || true

HAS_TF=0
if timeout 120 "$PY" -c "import tensorflow, tensorflow_datasets, ml_collections" >>"$LOG" 2>&1; then
  HAS_TF=1
fi
log "TensorFlow + tfds + ml_collections import: $([[ $HAS_TF == 1 ]] && echo yes || echo no)"

# The GPU run's arguments; the dry run replaces the models and sizes by tiny ones after checking,
# in the `args` step, that these parse and that their configs load.
QUICK_CONFIG=experiments/resnet_cifar.py:dataset=digits
E2E_RESNET=experiments/resnet_imagenet.py
E2E_GOOGLENET=experiments/googlenet.py
E2E_FLAGS=(--batch=256 --dtype=bfloat16 --steps=20 --warmup=5 --json)
TP_RESNET=(--model=ResNet50)
TP_GOOGLENET=(--model=GoogLeNet)
TP_FLAGS=(--batch=256 --dtype=bfloat16 --vs_torch --torch_compile --rounds=1 --steps=20 --warmup=5
  --json)
run_step args 60 "" "$PY" - "$QUICK_CONFIG" "$E2E_RESNET" "$E2E_GOOGLENET" "${E2E_FLAGS[*]}" \
  "${TP_FLAGS[*]}" <<'EOF'
import sys

sys.path.insert(0, "benchmarks")
import throughput

quick, resnet, googlenet, e2e_flags, tp_flags = sys.argv[1:]
for model in ("ResNet50", "GoogLeNet"):
  throughput.parse_args([f"--model={model}", *tp_flags.split()])
try:
  import end_to_end
  from incres import configs
except ImportError as e:  # end_to_end needs ml_collections (carried) and TensorFlow only to run.
  print("end_to_end.py does not import:", e)
else:
  configs.load(quick)
  for config in (resnet, googlenet):
    end_to_end.load_config(end_to_end.parse_args([f"--config={config}", *e2e_flags.split()]))
print("the GPU run's arguments parse and its configs load")
EOF
if [[ $DRY == 1 ]]; then  # Tiny models and sizes on the CPU: the same scripts and flags.
  QUICK_CONFIG=experiments/resnet_cifar.py:dataset=digits,smoke=True,tiny=True
  E2E_RESNET=experiments/resnet_cifar.py:smoke=True,tiny=True
  E2E_GOOGLENET=$E2E_RESNET
  E2E_FLAGS=(--batch=8 --dtype=bfloat16 --steps=1 --warmup=1 --json)
  TP_RESNET=(--model=CifarResNet20)
  # At its 224 px: the torch twin's auxiliary heads (a 5x5 pool, a 2048-input FC) need it.
  TP_GOOGLENET=(--model=GoogLeNet --width=0.125)
  TP_FLAGS=(--batch=2 --dtype=bfloat16 --vs_torch --torch_compile --rounds=1 --steps=1 --warmup=1
    --skip_infer --json)
fi

# The README quickstart (400 steps on digits; 15 s of training on an H200).
if [[ $HAS_TF == 1 ]]; then
  BOTH=1 run_step quickstart 180 "$OUT/quickstart.log" "$PY" launch.py --config="$QUICK_CONFIG" \
    --workdir="$WORK/quickstart"
  {
    echo "=== quickstart metrics.jsonl (last lines)"
    tail -n 6 "$WORK/quickstart/metrics.jsonl" 2>&1 || true
  } >>"$OUT/quickstart.log"
else
  skip_step quickstart "no TensorFlow"
fi

# launch.py's loop on fake JPEGs, next to the model and the input pipeline alone.
for pair in "ResNet50 $E2E_RESNET 170" "GoogLeNet $E2E_GOOGLENET 200"; do
  read -r name config cap <<<"$pair"
  if [[ $HAS_TF == 1 ]]; then
    run_step "e2e_$name" "$cap" "$OUT/e2e_$name.json" "$PY" benchmarks/end_to_end.py \
      --config="$config" "${E2E_FLAGS[@]}"
  else
    skip_step "e2e_$name" "no TensorFlow"
  fi
done

# The model alone against its PyTorch twin, eager and torch.compile, each in its own process.
run_step throughput_ResNet50 170 "$OUT/throughput_ResNet50.json" "$PY" benchmarks/throughput.py \
  "${TP_RESNET[@]}" "${TP_FLAGS[@]}"
run_step throughput_GoogLeNet 200 "$OUT/throughput_GoogLeNet.json" "$PY" \
  benchmarks/throughput.py "${TP_GOOGLENET[@]}" "${TP_FLAGS[@]}"

# summary.json: each step's status; the log cut to what may come back.
"$PY" - "$STEPS" "$OUT/summary.json" "$((SECONDS - START))" "$DRY" <<'EOF' || true
import json, sys

steps = []
for line in open(sys.argv[1]):
  name, rc, seconds, limit, why = line.rstrip("\n").split("\t")
  steps.append({"step": name, "exit": rc if rc == "skipped" else int(rc), "seconds": int(seconds),
                "timeout_s": int(limit), **({"why": why} if why else {})})
summary = {"total_seconds": int(sys.argv[3]), "dry_run_on_cpu": sys.argv[4] == "1", "steps": steps}
json.dump(summary, open(sys.argv[2], "w"), indent=1)
print(json.dumps(summary, indent=1))
EOF
for f in "$OUT"/*; do
  if (($(stat -c %s "$f") > MAX_FILE)); then
    tail -c "$MAX_FILE" "$f" >"$f.tmp" && mv "$f.tmp" "$f"
  fi
done
find "$OUT" -type f -empty -delete
log "done in $((SECONDS - START))s; results in $OUT"
