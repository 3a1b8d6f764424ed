#!/usr/bin/env bash
# GPU check: on a fresh GPU machine with PyTorch but no network, install the project from this
# checkout, run the GPU tests and a trimmed configs/gpu-throughput.yaml run (torch-amp eager,
# keras-jax where the machine has JAX, torch-amp fp8-mixed against bf16-mixed with torch.compile
# on the wide-blocks model where torchao is there, torch-amp with torch.compile), and print one
# table last.
# Target: under 8 minutes.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: runs/gpu-check
#
# Offline installs: pydantic (and pydantic-core, annotated-types, typing-inspection) are the
# only dependencies a PyTorch image usually lacks; Keras (pure Python, with namex and optree)
# is what keras-jax needs beside the image's JAX (TensorFlow is too large to carry, so tf-keras
# does not run there). Put their wheels in .whl/ at the repository root
# (benchmarks/fetch_gpu_wheels.sh downloads them on a machine with network); each group is
# installed only when its import fails (keras only where jax imports; torchao, for the FP8 run,
# only where torch has CUDA).
#
# Knobs (environment):
#   PYTHON=python3                 interpreter that has torch with CUDA
#   GPU_CHECK_STEPS=40             timed + warm-up steps per job (warm-up is 10 of them)
#   GPU_CHECK_COMPILE_POLICIES=bf16-mixed   policies run again with torch.compile ("" = none)
#   GPU_CHECK_KERAS_JAX_POLICIES="fp32, fp16-mixed, bf16-mixed"   keras-jax policies ("" = none)
#   GPU_CHECK_FP8_POLICIES="bf16-mixed, fp8-mixed"   the compiled FP8 run on wide-blocks ("" = none);
#                                  its speedup over bf16-mixed is the number FP8 is for
#   GPU_CHECK_SKIP_TESTS=1         skip `pytest -m gpu`
#   GPU_CHECK_TEST_TIMEOUT_S=180   limit for the GPU tests
#   GPU_CHECK_DEADLINE_S=300       skip the compiled run when this much time is already spent
#   GPU_CHECK_NO_INSTALL=1         skip `pip install -e .` (PYTHONPATH is enough to run)
#   GPU_CHECK_DEVICE=cuda          "cpu" only to try this script on a machine without a GPU
#                                  (with tiny models: nothing it prints is a GPU number)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT_DIR=${1:-runs/gpu-check}
STEPS=${GPU_CHECK_STEPS:-40}
COMPILE_POLICIES=${GPU_CHECK_COMPILE_POLICIES-bf16-mixed}
KERAS_JAX_POLICIES=${GPU_CHECK_KERAS_JAX_POLICIES-fp32, fp16-mixed, bf16-mixed}
FP8_POLICIES=${GPU_CHECK_FP8_POLICIES-bf16-mixed, fp8-mixed}
FP8_MODEL=wide-blocks
TEST_TIMEOUT_S=${GPU_CHECK_TEST_TIMEOUT_S:-180}
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-300}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
CONFIG=configs/gpu-throughput.yaml
SITE=${TMPDIR:-/tmp}/precision-suite-site
# JAX would otherwise reserve 75% of the GPU at its first use, starving PyTorch in the same
# pytest process; its allocator peak (what keras-jax records) is the same either way.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
START=$SECONDS
STATUS=0

say() { printf '\n== [%3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf 'gpu_check: error: %s\n' "$*" >&2; exit 2; }

# ------------------------------------------------------------------ 0. the machine
say "checking $PY, torch and the GPU"
command -v "$PY" >/dev/null || die "no $PY on PATH (set PYTHON=/path/to/python with torch)"
"$PY" - "$DEVICE" <<'EOF' || die "torch with a visible CUDA device is needed (see the line above)"
import sys
try:
    import torch
except ImportError:
    sys.exit("torch is not installed for this interpreter")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("torch.cuda.is_available() is False")
    print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# ------------------------------------------------------------------ 1. install, offline
say "installing the project (no network, no dependency resolution)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
shopt -s nullglob
carried=()
if ! "$PY" -c 'import pydantic, sys; sys.exit(int(pydantic.VERSION.split(".")[0]) < 2)' 2>/dev/null; then
    wheels=(.whl/pydantic*.whl .whl/annotated_types-*.whl .whl/typing_inspection-*.whl .whl/typing_extensions-*.whl)
    ((${#wheels[@]})) || die "pydantic>=2 is not installed and .whl/ holds no pydantic wheels: run benchmarks/fetch_gpu_wheels.sh on a machine with network and copy .whl/ here"
    echo "pydantic missing: installing ${#wheels[@]} wheel(s) from .whl/"
    carried+=("${wheels[@]}")
fi
if "$PY" -c 'import jax' 2>/dev/null && ! "$PY" -c 'import keras' 2>/dev/null; then
    wheels=(.whl/keras-*.whl .whl/namex-*.whl .whl/optree-*.whl)
    if ((${#wheels[@]})); then
        echo "jax without keras: installing ${#wheels[@]} wheel(s) from .whl/ for keras-jax"
        carried+=("${wheels[@]}")
    else
        echo "note: jax is here but keras is not, and .whl/ holds no keras wheels: keras-jax will be unavailable"
    fi
fi
if [[ -n $FP8_POLICIES && $DEVICE == cuda ]] && ! "$PY" -c 'import torchao' 2>/dev/null; then
    wheels=(.whl/torchao-*.whl)
    if ((${#wheels[@]})); then
        echo "torchao missing: installing ${wheels[*]} from .whl/ for the FP8 run"
        carried+=("${wheels[@]}")
    else
        echo "note: torchao is not installed and .whl/ holds no torchao wheel: the FP8 run will be skipped"
    fi
fi
shopt -u nullglob
if ((${#carried[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${carried[@]}" \
        || die "pip could not install the wheels in .whl/ (wrong python version or platform? see fetch_gpu_wheels.sh)"
    export PYTHONPATH="$SITE:$PYTHONPATH"
fi
if [[ ${GPU_CHECK_NO_INSTALL:-0} == 1 ]]; then
    echo "pip install -e . skipped (GPU_CHECK_NO_INSTALL=1); running from the checkout via PYTHONPATH"
elif "$PY" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e . >"${TMPDIR:-/tmp}/gpu_check_pip.log" 2>&1; then
    echo "pip install -e . done"
else
    echo "note: 'pip install -e .' failed (log: ${TMPDIR:-/tmp}/gpu_check_pip.log); running from the checkout via PYTHONPATH"
fi
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["numpy", "yaml", "pydantic", "rich", "matplotlib", "sklearn", "scipy", "pytest"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
[[ -z $missing ]] || die "missing Python packages: $missing (carry their wheels in .whl/)"
"$PY" -c 'import precision_suite.cli, backends' || die "the project does not import (see above)"
# Entry-point backends (keras-jax) are found through installed package metadata: where the
# editable install did not happen, the checkout's pyproject entry points are registered by a
# metadata-only dist-info on PYTHONPATH, as an install would.
if ! "$PY" -c 'import sys; from precision_suite.backends import registry; sys.exit("keras-jax" not in registry())'; then
    "$PY" - "$SITE" <<'EOF' || die "could not register the project's entry points"
import pathlib, sys, tomllib
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
info = pathlib.Path(sys.argv[1]) / "precision_suite_checkout-0.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text("Metadata-Version: 2.1\nName: precision-suite-checkout\nVersion: 0\n")
lines = []
for group, eps in project.get("entry-points", {}).items():
    lines += [f"[{group}]", *(f"{name} = {value}" for name, value in eps.items()), ""]
(info / "entry_points.txt").write_text("\n".join(lines))
print(f"entry points registered from pyproject.toml: {info}")
EOF
    export PYTHONPATH="$SITE:$PYTHONPATH"
fi
suite() { "$PY" -c 'import sys; from precision_suite.cli import main; sys.exit(main())' "$@"; }

# ------------------------------------------------------------------ 2. GPU tests
if [[ ${GPU_CHECK_SKIP_TESTS:-0} == 1 ]]; then
    say "GPU tests skipped (GPU_CHECK_SKIP_TESTS=1)"
else
    say "GPU tests: pytest -m gpu (limit ${TEST_TIMEOUT_S}s)"
    set +e
    timeout "$TEST_TIMEOUT_S" "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="-ra --strict-markers" tests
    rc=$?
    set -e
    case $rc in
        0) echo "GPU tests passed" ;;
        5) echo "no GPU tests were collected" ;;
        124) echo "GPU tests: stopped after ${TEST_TIMEOUT_S}s"; STATUS=1 ;;
        *) echo "GPU tests FAILED (pytest exit $rc)"; STATUS=1 ;;
    esac
fi

# ------------------------------------------------------------------ 3. trimmed throughput runs
mkdir -p "$OUT_DIR"
rm -rf "$OUT_DIR/eager" "$OUT_DIR/keras-jax" "$OUT_DIR/fp8" "$OUT_DIR/compiled"
common=(
    --set "train.steps=$STEPS"
    --set "train.timing_warmup_steps=10"
    --set "train.timing_window_steps=10"
    --set "data.synthetic.train_size=2048"
    --set "device=$DEVICE"
    # The config's FP8-only models list names fp8-mixed, which most runs here leave out.
    --set "backends.policy_models={}"
)
if [[ $DEVICE == cpu ]]; then
    # Only to exercise this script without a GPU: tiny models, tiny images.
    common+=(--set "models=[{kind: transformer, name: tiny-transformer, patch_size: 4, d_model: 32, num_heads: 4, depth: 1}, {kind: cnn, name: tiny-cnn, channels: [8, 16]}]"
             --set "data.synthetic.shape=[3, 16, 16]" --set "data.synthetic.train_size=512")
fi
run_suite() {  # run_suite NAME BACKEND POLICIES OPTIONS [--set ...]
    local name=$1 backend=$2 policies=$3 options=$4
    shift 4
    say "throughput run '$name': $backend [$policies], options $options, $STEPS steps"
    set +e
    suite run "$CONFIG" --out "$OUT_DIR/$name" "${common[@]}" \
        --set "backends.names=[$backend]" \
        --set "backends.policies={$backend: [$policies]}" \
        --set "backends.options={$backend: $options}" "$@"
    local rc=$?
    set -e
    # 0: all ran and verdicts passed; 1: a verdict failed (accuracy after a few steps is not
    # what this run measures); 2: bad config; 3: a job failed (its row says why).
    case $rc in
        0 | 1) ;;
        3) echo "some jobs of '$name' failed: see their status in the table"; STATUS=1 ;;
        *) echo "throughput run '$name' failed (exit $rc)"; STATUS=1 ;;
    esac
}
run_suite eager torch-amp "fp32, tf32, fp16-mixed, bf16-mixed" "{compile: false, fused: true}"
keras_jax=$("$PY" -c 'from precision_suite.backends import get_backend_class as g; a = g("keras-jax").is_available(); print("ok" if a.ok else a.reason)')
if [[ -z $KERAS_JAX_POLICIES ]]; then
    :
elif [[ $keras_jax != ok ]]; then
    say "keras-jax run skipped: $keras_jax"
elif ((SECONDS - START > DEADLINE_S)); then
    say "keras-jax run skipped: $((SECONDS - START)) s spent, over GPU_CHECK_DEADLINE_S=$DEADLINE_S"
else
    # One worker per job: the JAX allocator's peak cannot be reset, so per job it is the job's.
    # XLA always compiles (inside the warm-up steps, excluded from the timing).
    run_suite keras-jax keras-jax "$KERAS_JAX_POLICIES" "{}" --set "runner.isolation=per-job"
fi
fp8=$("$PY" -c 'from precision_suite.backends import get_backend_class as g; print(g("torch-amp").unsupported_reason("fp8-mixed", "cuda") or "ok")')
if [[ -z $FP8_POLICIES ]]; then
    :
elif [[ $DEVICE != cuda ]]; then
    say "FP8 run skipped: FP8 is emulated without a GPU (configs/fp8.yaml checks its accuracy on a CPU)"
elif [[ $fp8 != ok ]]; then
    say "FP8 run skipped: $fp8"
elif ((SECONDS - START > DEADLINE_S)); then
    say "FP8 run skipped: $((SECONDS - START)) s spent, over GPU_CHECK_DEADLINE_S=$DEADLINE_S"
else
    # Compiled (torch.compile fuses FP8's amax, scale and cast kernels), on the model sized for it;
    # the table's fp8-mixed row against this run's bf16-mixed row is the FP8 speedup.
    only_model=""
    IFS=',' read -ra fp8_list <<<"$FP8_POLICIES"
    for policy in "${fp8_list[@]}"; do only_model+="${only_model:+, }${policy// /}: [$FP8_MODEL]"; done
    run_suite fp8 torch-amp "$FP8_POLICIES" "{compile: true, fused: true, fp8_recipe: tensorwise}" \
        --set "backends.policy_models={$only_model}"
fi
if [[ -z $COMPILE_POLICIES ]]; then
    :
elif ((SECONDS - START > DEADLINE_S)); then
    # torch.compile of 12 blocks costs minutes (train, eval and the batch-2 precision probe each
    # compile): skipped rather than overrunning the check's time budget.
    say "compiled run skipped: $((SECONDS - START)) s spent, over GPU_CHECK_DEADLINE_S=$DEADLINE_S"
else
    run_suite compiled torch-amp "$COMPILE_POLICIES" "{compile: true, fused: true}"
fi

# ------------------------------------------------------------------ 4. matmul ceiling
CEILINGS=$OUT_DIR/ceilings.json
if [[ $DEVICE == cuda ]]; then
    say "measured matmul ceiling (8192^3, per dtype)"
    "$PY" - "$CEILINGS" <<'EOF' || echo "matmul ceiling not measured"
import json, sys
from precision_suite.measure.flops import measure_matmul_tflops
ceilings = {
    "fp32": measure_matmul_tflops("float32", iters=5),
    "tf32": measure_matmul_tflops("float32", iters=10, tf32=True),
    "fp16": measure_matmul_tflops("float16"),
    "bf16": measure_matmul_tflops("bfloat16"),
}
print(", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in ceilings.items()))
json.dump(ceilings, open(sys.argv[1], "w"))
EOF
fi

# ------------------------------------------------------------------ 5. the table
say "done in $((SECONDS - START)) s; results in $OUT_DIR"
runs=()
for name in eager keras-jax fp8 compiled; do [[ -d $OUT_DIR/$name ]] && runs+=("$OUT_DIR/$name"); done
((${#runs[@]})) || die "no run produced results"
echo
"$PY" benchmarks/throughput_table.py "${runs[@]}" --ceilings "$CEILINGS" | tee "$OUT_DIR/table.txt"
"$PY" benchmarks/throughput_table.py "${runs[@]}" --ceilings "$CEILINGS" --markdown >"$OUT_DIR/table.md"
exit $STATUS
