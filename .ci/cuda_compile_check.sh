#!/usr/bin/env bash
# Compile-checks every CUDA source on a machine without a GPU (CI runs this on every change):
#  - each csrc/cuda/*.cu with nvcc for sm_80 and sm_90 (they include no torch headers, only CUDA's
#    and ours), with the flags torch's extension build adds;
#  - each csrc/cuda/*.cpp (host glue, includes ATen/cuda) with g++ -fsyntax-only against the
#    headers of a CUDA build of torch (the CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h) and
#    the cuBLAS/cuSPARSE/cuSOLVER headers of the nvidia-* wheels.
# Headers are cached under $FUSEDRNN_HEADER_CACHE (default ~/.cache/fusedrnn-cuda-headers).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_HEADERS_VERSION=${TORCH_HEADERS_VERSION:-2.14.1}
CACHE=${FUSEDRNN_HEADER_CACHE:-$HOME/.cache/fusedrnn-cuda-headers}/torch-$TORCH_HEADERS_VERSION
PYTHON=${PYTHON:-python3}

command -v nvcc >/dev/null || { echo "cuda_compile_check: nvcc not found" >&2; exit 1; }
CUDA_INCLUDE=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 |
               sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)

if [ ! -f "$CACHE/.complete" ]; then
  echo "cuda_compile_check: fetching torch $TORCH_HEADERS_VERSION and nvidia-* headers"
  rm -rf "$CACHE" && mkdir -p "$CACHE/wheels"
  "$PYTHON" -m pip download -q --no-deps -d "$CACHE/wheels" "torch==$TORCH_HEADERS_VERSION" \
    nvidia-cublas nvidia-cusparse nvidia-cusolver
  "$PYTHON" - "$CACHE" <<'PY'
import glob, sys, zipfile
cache = sys.argv[1]
for wheel in glob.glob(f"{cache}/wheels/*.whl"):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(cache, [n for n in z.namelist() if "/include/" in n])
PY
  rm -rf "$CACHE/wheels"
  touch "$CACHE/.complete"
fi
NVIDIA_INCLUDES=$(for d in "$CACHE"/nvidia/*/include; do printf -- '-isystem %s ' "$d"; done)

# What torch.utils.cpp_extension passes to nvcc, plus ours from setup.py.
NVCC_FLAGS=(-O3 -std=c++20 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__
            -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
            -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings
            -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for cu in csrc/cuda/*.cu; do
  echo "+ nvcc (sm_80, sm_90) $cu"
  nvcc "${NVCC_FLAGS[@]}" -I csrc -c "$cu" -o "$out/$(basename "$cu").o"
done
for cpp in csrc/cuda/*.cpp; do
  echo "+ g++ -fsyntax-only $cpp (torch $TORCH_HEADERS_VERSION CUDA headers)"
  # shellcheck disable=SC2086
  g++ -std=c++20 -fsyntax-only -Wall -Wextra -Werror -I csrc -isystem "$CACHE/torch/include" \
    -isystem "$CACHE/torch/include/torch/csrc/api/include" -isystem "$CUDA_INCLUDE" \
    $NVIDIA_INCLUDES "$cpp"
done
echo "cuda_compile_check: all CUDA sources compile"
