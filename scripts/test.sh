#!/usr/bin/env bash
# Full test run: deps, plain build + all tests, ASan/UBSan build + unit and
# integration tests, clang libFuzzer build + fuzz tests.  Run from anywhere;
# exits non-zero if any build or test failed.  Last line: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=${JOBS:-2}
START=$(date +%s)
PASSED=0
FAILED=0
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/dfly-test-logs.XXXXXX")
trap 'rm -rf "$LOGDIR"' EXIT

stamp() { echo "=== [$(( $(date +%s) - START ))s] $*"; }

# run_ctest BUILD_DIR NAME ARGS...: runs ctest, adds its counts to the totals.
run_ctest() {
    local dir=$1 name=$2
    shift 2
    local log="$LOGDIR/$name.log"
    stamp "ctest $name: $*"
    (cd "$dir" && ctest --output-on-failure --no-compress-output "$@") 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local line total failed
    line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n1)
    if [ -n "$line" ]; then
        failed=$(echo "$line" | sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/')
        total=$(echo "$line" | sed -E 's/.* failed out of ([0-9]+).*/\1/')
        PASSED=$((PASSED + total - failed))
        FAILED=$((FAILED + failed))
        if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
            echo "ctest $name exited $rc"; FAILED=$((FAILED + 1))
        fi
    elif grep -q 'No tests were found' "$log"; then
        echo "ctest $name: no tests"
        if [ "$rc" -ne 0 ]; then FAILED=$((FAILED + 1)); fi
    else
        echo "ctest $name: could not read its summary (exit $rc)"
        FAILED=$((FAILED + 1))
    fi
}

# build DIR NAME CMAKE_ARGS...: configure + build; counts a failure on error.
build() {
    local dir=$1 name=$2
    shift 2
    stamp "build $name in $dir"
    if cmake -S "$ROOT" -B "$dir" "$@" >"$LOGDIR/$name-configure.log" 2>&1 &&
       cmake --build "$dir" -j"$JOBS" >"$LOGDIR/$name-build.log" 2>&1; then
        return 0
    fi
    echo "BUILD FAILED: $name"
    tail -n 60 "$LOGDIR/$name-configure.log" "$LOGDIR/$name-build.log" 2>/dev/null
    FAILED=$((FAILED + 1))
    return 1
}

# Integration tests stop starting new cases past this point, so that even a
# run where every program hangs ends well inside CI's time.
export DF_DEADLINE=$((START + ${DF_TOTAL_MINUTES:-50} * 60))

stamp "install dependencies"
if ! bash scripts/install-deps.sh; then
    echo "dependency installation failed"
    echo "0 passed, 1 failed"
    exit 1
fi

# 1. plain build: everything (unit tests in parallel, integration serially:
#    some integration tests measure time).
if build build plain -DCMAKE_BUILD_TYPE=RelWithDebInfo; then
    run_ctest build plain-unit -j"$JOBS" -LE integration
    run_ctest build plain-integration -L integration
fi

# 2. ASan + UBSan build: unit and integration tests.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if build build-asan asan -DCMAKE_BUILD_TYPE=Debug -DDF_SANITIZE=ON; then
    run_ctest build-asan asan-unit -j"$JOBS" -L unit
    run_ctest build-asan asan-integration -L integration
fi

# 3. libFuzzer targets (clang), each runs briefly over its corpus.
if command -v clang >/dev/null 2>&1; then
    if CC=clang build build-fuzz fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDF_FUZZ=ON \
        -DCMAKE_C_COMPILER=clang; then
        run_ctest build-fuzz fuzz -j"$JOBS" -L fuzz
    fi
else
    echo "clang missing: cannot build fuzzers"; FAILED=$((FAILED + 1))
fi

stamp "done"
echo "${PASSED} passed, ${FAILED} failed"
[ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
