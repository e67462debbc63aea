#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the CPU test suite.
#
#   tools/sanitize.sh                      # the engine tests (default)
#   tools/sanitize.sh tests/test_optim.py  # any pytest arguments instead
#
# Copies the working tree (tracked and untracked, not ignored files) to a scratch directory, builds the
# extension there CPU-only with -fsanitize=address,undefined (plus float-cast-overflow and
# float-divide-by-zero, which GCC's "undefined" leaves out) and -fno-sanitize-recover, so the normal build
# is never touched, then runs pytest there with the sanitizer runtimes preloaded into Python. Leak detection
# is off (CPython and torch keep allocations alive until exit). Exits non-zero on a test failure or on any
# sanitizer report. Environment: PYTHON (default: the venv's python), WF_SANITIZE_DIR (scratch directory,
# default a fresh mktemp -d, removed afterwards unless set), CXX (default g++).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-/work/main/.venv/bin/python}"
CXX="${CXX:-g++}"
if [[ -n "${WF_SANITIZE_DIR:-}" ]]; then
  work="$WF_SANITIZE_DIR"; mkdir -p "$work"
else
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi
if (($# == 0)); then
  set -- tests/test_engine.py tests/test_engine_fuzz.py tests/test_schedule_api.py tests/test_reference_suites.py \
         tests/test_schedules_native.py tests/test_from_torch.py
fi

echo "sanitize: copying the working tree to $work" >&2
(cd "$repo" && git ls-files -z --cached --others --exclude-standard) | (cd "$repo" && xargs -0 cp --parents -t "$work")

flags="-fsanitize=address,undefined,float-cast-overflow,float-divide-by-zero -fno-sanitize-recover=all"
flags+=" -fno-omit-frame-pointer -g"
echo "sanitize: building with $flags" >&2
(cd "$work" && CC="$CXX" CXX="$CXX" CFLAGS="$flags" LDFLAGS="$flags" WARMUP_FUSED_CPU_ONLY=1 \
   "$PYTHON" setup.py -q build_ext --inplace > build.log 2>&1) || { tail -40 "$work/build.log"; exit 1; }

log="$work/sanitize.log"
runtimes="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libubsan.so)"
echo "sanitize: running pytest $* (log: $log)" >&2
set +e
(cd "$work" && LD_PRELOAD="$runtimes" \
   ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86:strict_string_checks=1" \
   UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87" \
   "$PYTHON" -m pytest -q -p no:cacheprovider "$@" 2>&1) | tee "$log"
status=${PIPESTATUS[0]}
set -e
if grep -qE "ERROR: AddressSanitizer|runtime error:|UndefinedBehaviorSanitizer" "$log"; then
  echo "sanitize: sanitizer report(s) in $log" >&2
  exit 1
fi
if ((status != 0)); then
  echo "sanitize: pytest exited with $status" >&2
  exit "$status"
fi
echo "sanitize: clean (ASan + UBSan, $*)" >&2
