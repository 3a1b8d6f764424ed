#!/usr/bin/env bash
# Download, on a machine with network, the wheels benchmarks/gpu_check.sh installs on an
# offline GPU machine whose image has PyTorch (and JAX) but not pydantic or Keras: pydantic and
# what it needs (pydantic-core, annotated-types, typing-inspection, typing-extensions), and
# Keras 3 for the keras-jax backend with the two dependencies such an image lacks (namex and
# optree; absl-py, h5py, ml-dtypes, numpy, packaging and rich are there), for CPython 3.12 on
# x86-64 Linux (manylinux) by default. About 5 MB in all.
#
#   benchmarks/fetch_gpu_wheels.sh [DEST]      # default DEST: .whl (git-ignored)
#
# Then copy DEST next to the checkout on the GPU machine (with the device tool: carry ".whl").
# Knobs: PYTHON (the pip to use), GPU_PYTHON_VERSION (3.12), PYDANTIC_SPEC (default: the
# pydantic version installed here, so both machines validate configs the same way), KERAS_SPEC
# (default: the keras version installed here, so both machines run the same Keras; "" = no
# Keras wheels), TORCHAO_SPEC (default: torchao==0.18.0, the `.[fp8]` pin, for gpu_check.sh's FP8
# run; "" = none).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
DEST=${1:-.whl}
PYVER=${GPU_PYTHON_VERSION:-3.12}

if [[ -z ${PYDANTIC_SPEC:-} ]]; then
    local_version=$("$PY" -c 'import pydantic; print(pydantic.VERSION)' 2>/dev/null || true)
    PYDANTIC_SPEC=${local_version:+pydantic==$local_version}
    PYDANTIC_SPEC=${PYDANTIC_SPEC:-pydantic>=2.5,<3}
fi

if [[ -z ${KERAS_SPEC+set} ]]; then
    local_keras=$("$PY" -c 'import importlib.metadata as m; print(m.version("keras"))' 2>/dev/null || true)
    KERAS_SPEC=${local_keras:+keras==$local_keras}
    KERAS_SPEC=${KERAS_SPEC:-keras>=3,<4}
fi

mkdir -p "$DEST"
echo "downloading $PYDANTIC_SPEC and its dependencies for CPython $PYVER manylinux x86_64 into $DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# Binary wheels only, resolved for the target interpreter (not this one): pip picks the
# pydantic-core build that matches the pydantic version.
"$PY" -m pip download --quiet --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$DEST" "$PYDANTIC_SPEC" \
    || { echo "fetch_gpu_wheels: pip download failed (network? version spec '$PYDANTIC_SPEC'?)" >&2; exit 1; }

if [[ -n $KERAS_SPEC ]]; then
    echo "downloading $KERAS_SPEC, namex and optree (no other dependencies: the GPU image has them) into $DEST"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        "${platforms[@]}" -d "$DEST" "$KERAS_SPEC" namex optree \
        || { echo "fetch_gpu_wheels: pip download of Keras failed (network? version spec '$KERAS_SPEC'?)" >&2; exit 1; }
fi

TORCHAO_SPEC=${TORCHAO_SPEC-torchao==0.18.0}
if [[ -n $TORCHAO_SPEC ]]; then
    echo "downloading $TORCHAO_SPEC (no dependencies: it needs only the image's torch) into $DEST"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        "${platforms[@]}" -d "$DEST" "$TORCHAO_SPEC" \
        || { echo "fetch_gpu_wheels: pip download of torchao failed (network? version spec '$TORCHAO_SPEC'?)" >&2; exit 1; }
fi

ls -1 "$DEST"/*.whl
count=$(ls -1 "$DEST"/pydantic_core-*.whl 2>/dev/null | wc -l)
if ((count != 1)); then
    echo "fetch_gpu_wheels: expected exactly one pydantic_core wheel in $DEST, found $count; remove stale ones" >&2
    exit 1
fi
du -sh "$DEST"
