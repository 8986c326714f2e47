#!/usr/bin/env bash
# The whole GPU check in one call, on a machine with an NVIDIA GPU and a CUDA build of torch:
# build, the full test suite (CUDA tests included), compute-sanitizer memcheck + racecheck on a
# small fwd+bwd of every cell, verify on CUDA, the quick bench in fp32 and bf16, and the
# pytest-benchmark suite. Every step runs even if an earlier one fails; each one's log and exit
# status go to the results folder, with a summary.
#
#   bash bench/gpu_check.sh [RESULTS_DIR]     (default: $FUSEDRNN_RESULTS or bench/results/gpu-DATE)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${FUSEDRNN_RESULTS:-bench/results/gpu-$(date +%F)}}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

step() {  # step NAME COMMAND...: runs it, log in $OUT/NAME.log, status in summary.txt
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-22s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$OUT/summary.txt"
  tail -3 "$OUT/$name.log"
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nvcc --version | tail -1
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# --no-deps: GPU machines may have no package index; tqdm/matplotlib are optional at run time.
step build pip install --no-build-isolation --no-deps -e .
step cuda_registered python -c "import torch, fusedrnn; x = torch.randn(3, 2, 4, device='cuda'); print(torch.ops.fusedrnn.rnn_forward(x, torch.zeros(2, 4, device='cuda'), torch.randn(4, 4, device='cuda'), None, False, False, False)[1])"
step tests python -m pytest tests -q -rs --junitxml="$OUT/tests.xml"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 python bench/sanitizer_workload.py
step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 python bench/sanitizer_workload.py
step verify python -m fusedrnn verify --device cuda --json "$OUT/verify.json"
step bench_fp32 python -m fusedrnn bench --grid quick --device cuda --dtype float32 --json "$OUT/bench-fp32.json"
step bench_bf16 python -m fusedrnn bench --grid quick --device cuda --dtype bfloat16 --json "$OUT/bench-bf16.json"
step pytest_bench python -m pytest bench/ --benchmark-only -q --benchmark-json="$OUT/pytest-bench.json"
echo "results in $OUT"
cat "$OUT/summary.txt"
! grep -qv "rc=0 " "$OUT/summary.txt"
