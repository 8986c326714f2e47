#!/usr/bin/env bash
# The GPU check in ONE device call: the first thing to run when a GPU is available.
#
#   bash bench/gpu_check.sh OUT_DIR [DEADLINE_SECONDS]      (DEADLINE default 480)
#
# On a machine with an NVIDIA GPU and a CUDA build of torch (the lent H200: python3 3.12, torch
# 2.11+cu130, 16 cores, nvcc 13.0, compute-sanitizer; no network), from the repository root:
#   build       the extension for the GPU present only (TORCH_CUDA_ARCH_LIST from the device,
#               e.g. 9.0), all cores, in place (no pip, no network)
#   smoke       one fused op on CUDA (the CUDA kernels are registered and run)
#   tests_cuda  tests/test_cuda.py and the cuda case of every shared test but the grid
#   memcheck    compute-sanitizer memcheck on bench/sanitizer_workload.py (every cell, fwd+bwd,
#               packed + padded, 4 dtypes), PYTORCH_NO_CUDA_MEMORY_CACHING=1
#   initcheck   compute-sanitizer initcheck on the same workload, likewise
#   verify      python -m fusedrnn verify --device cuda --quick
#   bench_*     python -m fusedrnn bench --grid quick --device cuda, float32 and bfloat16
#   persistent_memcheck, persistent_synccheck  the same workload on the persistent loops
#   persistent  the persistent loops (FUSEDRNN_CUDA_PERSISTENT=1): tests/test_cuda.py and the
#               equivalence grid's fp32 cuda cases up to 2 layers on them, then
#               bench/persistent_timing.py
#               (persistent vs per-step vs cuDNN, T=300, LSTM/GRU/RNN, B 1 and 16, H 32-256)
#   tune        python -m fusedrnn tune --grid quick (fp32): the dispatch's table measured
#   bench_tuned the quick grid again, the dispatch reading that table (which path each row ran)
#   tests_grid  the equivalence grid on CUDA, fp32, with the time that is left
# (The emulation tests are CPU-only and run in CI.)
# Every step runs even if an earlier one failed (except after a failed build), each under its
# own time cap and the overall DEADLINE, so the call ends inside the device's 10-minute command
# limit. Writes exactly three files into OUT_DIR (the device returns at most 8): summary.md,
# results.json (per step: status, seconds, log tail; environment) and logs.tar.gz (every log,
# the pytest junit XML, verify and bench JSON). Nothing is written elsewhere in the tree but the
# built extension (fusedrnn/_C*.so, build/).
#
# Budget, from measured build times (README "CUDA"): on the 2-core development machine the
# slowest source (csrc/autograd.cpp) compiles in ~45-65 s, csrc/cuda/recurrent_cuda.cpp in 16 s
# and csrc/cuda/step_kernels.cu for sm_90 alone in 7 s; with 16 cores and ninja every source
# compiles at once, so the build should take ~1-1.5 min. The default deadline, 480 s, leaves the
# device's 10-minute command limit a 2-minute margin (run it with timeout_s 600); the most
# informative steps come first, the long equivalence grid last (skipped when time runs out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR [DEADLINE_SECONDS]}
DEADLINE=${2:-480}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
STEPS="$LOGS/steps.tsv"
: > "$STEPS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The fused kernels everywhere (fusedrnn/dispatch.py would hand small-H calls to cuDNN): this
# check is of them.
export FUSEDRNN_CUDA_PATH=fused

# step NAME CAP COMMAND...: runs COMMAND with a time cap (never past the deadline); log in
# $LOGS/NAME.log; one line "NAME status seconds" in $STEPS.
step() {
  local name=$1 cap=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 10 ]; then
    printf '%s\tskipped-out-of-time\t0\n' "$name" >> "$STEPS"
    echo "== $name: skipped (deadline)"
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "== $name (cap ${cap}s): $*"
  local start=$SECONDS
  timeout --kill-after=5 "$cap" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$? status
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status="failed-rc$rc" ;; esac
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$STEPS"
  echo "   $status in $((SECONDS - start)) s"; tail -n 3 "$LOGS/$name.log"
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nvcc --version | tail -1
  compute-sanitizer --version | tail -1
  echo "ninja $(ninja --version)"; "$PY" -m pytest --version
  nproc
  git log -1 --format='commit %H %s' 2>/dev/null
} > "$LOGS/environment.txt" 2>&1
cat "$LOGS/environment.txt"

ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)
step build 240 env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" FORCE_CUDA=1 \
  "$PY" setup.py build_ext --inplace
if grep -q "^build	ok" "$STEPS"; then
  step smoke 60 "$PY" -c "
import torch, fusedrnn
x = torch.randn(3, 2, 4, device='cuda')
out = torch.ops.fusedrnn.time_loop_forward('rnn_tanh', x, torch.zeros(2, 4, device='cuda'), None, torch.randn(4, 4, device='cuda'), None, None, None, False, False)
torch.cuda.synchronize(); print('time_loop_forward on', out[0].device, 'h_n', out[1].cpu())"
  # CUDA-only tests (half types, autocast, lengths, no host sync) and every shared test's cuda
  # case but the equivalence grid (opcheck, gradcheck, compile, cells, ...).
  step tests_cuda 100 "$PY" -m pytest tests -q -rs -p no:cacheprovider -m "not emulation" \
    -k "cuda and not test_matches_torch_nn" --junitxml="$LOGS/tests-cuda.xml"
  # Both sanitizers without torch's caching allocator, so a reused block never hides a read of
  # memory nothing wrote (memcheck: out of bounds; initcheck: uninitialised reads).
  for tool in memcheck initcheck; do
    step "$tool" 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" \
      --error-exitcode 1 "$PY" bench/sanitizer_workload.py
  done
  step verify 60 "$PY" -m fusedrnn verify --device cuda --quick --json "$LOGS/verify.json"
  step bench_fp32 45 "$PY" -m fusedrnn bench --grid quick --device cuda --dtype float32 \
    --budget 0.5 --json "$LOGS/bench-fp32.json"
  step bench_bf16 45 "$PY" -m fusedrnn bench --grid quick --device cuda --dtype bfloat16 \
    --budget 0.5 --json "$LOGS/bench-bf16.json"
  # The persistent loops under memcheck and synccheck (out-of-bounds, barrier misuse).
  for tool in memcheck synccheck; do
    step "persistent_$tool" 60 env FUSEDRNN_CUDA_PERSISTENT=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" bench/sanitizer_workload.py
  done
  step persistent 90 bash -c "FUSEDRNN_CUDA_PERSISTENT=1 '$PY' -m pytest tests/test_cuda.py \
    tests/test_equivalence.py -q -rs -p no:cacheprovider -k 'cuda and not fp64 and not L3' && \
    '$PY' bench/persistent_timing.py --budget 0.2 --json '$LOGS/persistent.json'"
  # The dispatch's table measured (cuDNN vs per-step vs persistent), then the quick grid with
  # the dispatch reading it: which path each row ran.
  step tune 75 env FUSEDRNN_TUNE_CACHE="$LOGS/cuda_paths.json" "$PY" -m fusedrnn tune \
    --grid quick --dtype float32 --budget 0.2
  step bench_tuned 45 env FUSEDRNN_TUNE_CACHE="$LOGS/cuda_paths.json" FUSEDRNN_CUDA_PATH=auto \
    "$PY" -m fusedrnn bench --grid quick --device cuda --dtype float32 --budget 0.5 \
    --json "$LOGS/bench-tuned.json"
  # Last, with what time is left: the equivalence grid on CUDA in fp32 (720 configurations).
  step tests_grid 150 "$PY" -m pytest tests/test_equivalence.py -q -p no:cacheprovider \
    -k "cuda and fp32" --junitxml="$LOGS/tests-grid.xml"
fi

# Summary (Markdown), results (JSON) and the logs (tar) into OUT.
"$PY" - "$LOGS" "$OUT" <<'PY'
import collections, json, os, re, sys
logs, out = sys.argv[1], sys.argv[2]


def sanitizer_sites(name):
    """Where compute-sanitizer's reports point: function -> count (fusedrnn's or torch's/CUB's)."""
    path = os.path.join(logs, f"{name}.log")
    lines = open(path, errors="replace").read().splitlines() if os.path.exists(path) else []
    sites = collections.Counter()
    for i, line in enumerate(lines):
        if re.match(r"=+ (Invalid|Uninitialized|Out-of-range|Misaligned)", line):
            for nxt in lines[i + 1:i + 4]:
                m = re.match(r"=+\s+at (.+?)(\+0x[0-9a-f]+)?(\s+in\s.*)?$", nxt)
                if m:
                    sites[m.group(1)[:160]] += 1
                    break
    return dict(sites)


env = open(os.path.join(logs, "environment.txt")).read()
steps = []
for line in open(os.path.join(logs, "steps.tsv")):
    name, status, seconds = line.rstrip("\n").split("\t")
    path = os.path.join(logs, f"{name}.log")
    keep = 60 if name == "persistent" else 15  # (its timing table)
    tail = open(path, errors="replace").read().splitlines()[-keep:] if os.path.exists(path) else []
    steps.append({"step": name, "status": status, "seconds": int(seconds), "log_tail": tail})
ok = bool(steps) and all(s["status"] == "ok" for s in steps) and len(steps) == 14
sites = {tool: sanitizer_sites(tool)
         for tool in ("memcheck", "initcheck", "persistent_memcheck", "persistent_synccheck")}
json.dump({"environment": env, "steps": steps, "sanitizer_sites": sites, "all_ok": ok},
          open(os.path.join(out, "results.json"), "w"), indent=1)
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("# fusedrnn GPU check\n\n```\n" + env + "```\n\n| step | status | seconds |\n|---|---|---|\n")
    for s in steps:
        f.write(f"| {s['step']} | {s['status']} | {s['seconds']} |\n")
    f.write(f"\nall steps ok: {ok}\n")
    for tool, found in sites.items():
        if found:
            f.write(f"\n## {tool} reports by function\n\n")
            f.writelines(f"- {n} x {fn}\n" for fn, n in sorted(found.items(), key=lambda x: -x[1]))
    for s in steps:
        if s["status"] != "ok" or s["step"] in ("tests_cuda", "verify", "bench_fp32", "bench_bf16",
                                                "persistent", "tune", "bench_tuned", "tests_grid"):
            f.write(f"\n## {s['step']} ({s['status']}), last lines\n\n```\n" + "\n".join(s["log_tail"]) + "\n```\n")
PY
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
rm -rf "$LOGS"
cat "$OUT/summary.md"
"$PY" -c "import json,sys; sys.exit(0 if json.load(open('$OUT/results.json'))['all_ok'] else 1)"
