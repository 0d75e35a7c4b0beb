#!/usr/bin/env bash
# run_unit.sh: runs the given unit-test binaries; "N passed, N failed" at the end.
set -u
pass=0
fail=0
for t in "$@"; do
	if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $t"; fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
