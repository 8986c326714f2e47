#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the CPU extension (into build/sanitize,
# apart from the normal build), then the CPU kernel, numerics and bad-input tests under it.
# Any report stops the run with a non-zero exit. Run from anywhere, in the project's venv:
#   bash .ci/sanitize_cpu.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=build/sanitize
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
mkdir -p "$OUT/pkg/fusedrnn"
echo "+ building the CPU extension with $SAN"
CFLAGS="$SAN" LDFLAGS="$SAN" "$PYTHON" setup.py -q build_ext --build-temp "$OUT/temp" \
  --build-lib "$OUT/pkg" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
cp fusedrnn/*.py "$OUT/pkg/fusedrnn/"
# The Python interpreter and torch are not instrumented: the sanitizer runtimes are preloaded,
# leak checking is off (CPython keeps objects alive until exit).
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH="$PWD/$OUT/pkg"
echo "+ pytest (ASan + UBSan) tests/test_cpu_kernels.py tests/test_numerics.py tests/test_bad_packed_input.py tests/test_bad_input_table.py"
ROOT=$PWD
cd tests  # not the repository root: there `import fusedrnn` would find the normal build
"$PYTHON" -c "import fusedrnn; assert fusedrnn.__file__.startswith('$ROOT/$OUT/'), fusedrnn.__file__"
"$PYTHON" -m pytest -q -p no:cacheprovider test_cpu_kernels.py test_numerics.py \
  test_bad_packed_input.py test_bad_input_table.py "$@"
