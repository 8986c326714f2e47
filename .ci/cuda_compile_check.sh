#!/usr/bin/env bash
# Compile-checks every CUDA source on a machine without a GPU (CI runs this on every change),
# against the oldest and the newest torch fusedrnn supports (TORCH_VERSIONS, default
# "2.11.0 2.14.1"; the GPU machine runs 2.11):
#  - each csrc/cuda/*.cu and csrc/emulation/*.cu with nvcc for sm_80 and sm_90 (they include no
#    torch headers, only CUDA's and ours), with the flags torch's extension build adds;
#  - each csrc/cuda/*.cpp (host glue, includes ATen/cuda) and every CPU source (csrc/*.cpp,
#    csrc/cpu/*.cpp) with g++ -fsyntax-only against the headers of a CUDA build of each torch
#    version (the CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h) and the cuBLAS/cuSPARSE/
#    cuSOLVER headers of the nvidia-* wheels.
# Headers are cached under $FUSEDRNN_HEADER_CACHE (default ~/.cache/fusedrnn-cuda-headers).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSIONS=${TORCH_VERSIONS:-"2.11.0 2.14.1"}
CACHE_ROOT=${FUSEDRNN_HEADER_CACHE:-$HOME/.cache/fusedrnn-cuda-headers}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}

command -v nvcc >/dev/null || { echo "cuda_compile_check: nvcc not found" >&2; exit 1; }
CUDA_INCLUDE=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 |
               sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)

# fetch_headers DIR PACKAGE...: the include/ trees of the packages' wheels, into DIR (cached).
fetch_headers() {
  local dir=$1; shift
  [ -f "$dir/.complete" ] && return
  echo "cuda_compile_check: fetching headers of $*"
  rm -rf "$dir" && mkdir -p "$dir/wheels"
  "$PYTHON" -m pip download -q --no-deps -d "$dir/wheels" "$@"
  "$PYTHON" - "$dir" <<'PY'
import glob, sys, zipfile
cache = sys.argv[1]
for wheel in glob.glob(f"{cache}/wheels/*.whl"):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(cache, [n for n in z.namelist() if "/include/" in n])
PY
  rm -rf "$dir/wheels"
  touch "$dir/.complete"
}

fetch_headers "$CACHE_ROOT/nvidia" nvidia-cublas nvidia-cusparse nvidia-cusolver
NVIDIA_INCLUDES=$(for d in "$CACHE_ROOT"/nvidia/nvidia/*/include; do printf -- '-isystem %s ' "$d"; done)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# What torch.utils.cpp_extension passes to nvcc, plus ours from setup.py.
NVCC_FLAGS=(-O3 -std=c++20 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__
            -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
            -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings
            -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
for cu in csrc/cuda/*.cu csrc/emulation/*.cu; do
  [ -e "$cu" ] || continue
  echo "+ nvcc (sm_80, sm_90) $cu"
  nvcc "${NVCC_FLAGS[@]}" -I csrc -c "$cu" -o "$out/$(basename "$cu").o"
done

PY_INCLUDE=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
for version in $TORCH_VERSIONS; do
  torch_dir="$CACHE_ROOT/torch-$version"
  fetch_headers "$torch_dir" "torch==$version"
  echo "+ g++ -fsyntax-only csrc/cuda/*.cpp csrc/*.cpp csrc/cpu/*.cpp (torch $version CUDA headers)"
  # shellcheck disable=SC2086
  printf '%s\n' csrc/cuda/*.cpp csrc/*.cpp csrc/cpu/*.cpp | xargs -P "$JOBS" -I{} \
    g++ -std=c++20 -fopenmp -fsyntax-only -Wall -Wextra -Werror -I csrc \
      -isystem "$torch_dir/torch/include" -isystem "$torch_dir/torch/include/torch/csrc/api/include" \
      -isystem "$CUDA_INCLUDE" $NVIDIA_INCLUDES -isystem "$PY_INCLUDE" {} ||
    { echo "cuda_compile_check: a source does not compile against torch $version" >&2; exit 1; }
done
echo "cuda_compile_check: all CUDA sources compile (nvcc sm_80/sm_90; host and CPU sources" \
     "against torch $TORCH_VERSIONS)"
