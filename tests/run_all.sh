#!/usr/bin/env bash
# run_all.sh: the whole test suite (what `make check` runs).
#
#   BINDIR=bin BUILD=build/release bash tests/run_all.sh
#
# Runs every unit-test binary ($BUILD/tests/unit/test_*), every integration
# script (tests/integration/test_*.sh, which find binaries in $BINDIR), and,
# unless SKIP_FUZZ=1, each fuzz target for FUZZ_SECONDS (default 15) seconds.
# Each test's output goes to $BUILD/test-logs/<name>.log; a failing test's
# log tail is printed. Ends with "N passed, N failed"; exit 1 on any failure.
set -u
BINDIR=${BINDIR:-bin}
BUILD=${BUILD:-build/release}
export BINDIR BUILD
logs=$BUILD/test-logs
mkdir -p "$logs/unit" "$logs/integration" "$logs/fuzz"
pass=0
fail=0
failed=()

run() {
	local name=$1
	shift
	local t0=$SECONDS
	if timeout "${TEST_TIMEOUT:-900}" "$@" >"$logs/$name.log" 2>&1; then
		pass=$((pass + 1))
		printf 'ok   %-40s %4ss  %s\n' "$name" $((SECONDS - t0)) "$(grep -E '[0-9]+ passed, [0-9]+ failed' "$logs/$name.log" | tail -n 1)"
	else
		fail=$((fail + 1))
		failed+=("$name")
		printf 'FAIL %-40s %4ss\n' "$name" $((SECONDS - t0))
		tail -n 30 "$logs/$name.log" | sed 's/^/     | /'
	fi
}

for t in "$BUILD"/tests/unit/test_*; do
	[ -x "$t" ] || continue
	run "unit/$(basename "$t")" "$t"
done
for s in tests/integration/test_*.sh; do
	[ -f "$s" ] || continue
	run "integration/$(basename "$s" .sh)" bash "$s"
done
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
	run "fuzz/short" env FUZZ_SECONDS="${FUZZ_SECONDS:-15}" make -s fuzz-short
fi
[ ${#failed[@]} -eq 0 ] || echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
